import pytest

from superactivators.encoders.layers import percent_to_layer, resolve_layers


def test_percent_mapping_round_half_up_and_clamp():
    assert percent_to_layer(50, 6) == 3
    assert percent_to_layer(25, 6) == 2  # 1.5 -> 2 (half up, not banker's rounding)
    assert percent_to_layer(4, 24) == 1  # 0.96 -> 1
    assert percent_to_layer(1, 24) == 1  # 0.24 -> clamped to the first block
    assert percent_to_layer(100, 24) == 24
    assert [percent_to_layer(p, 24) for p in (4, 25, 46, 67, 88, 100)] == [1, 6, 11, 16, 21, 24]


def test_resolve_layers_forms():
    assert resolve_layers("all", 3) == [1, 2, 3]
    assert resolve_layers([0, -1, "50%"], 6) == [0, 3, 6]
    assert resolve_layers("2", 4) == [2]
    with pytest.raises(ValueError, match="out of range"):
        resolve_layers(7, 6)
    with pytest.raises(ValueError, match="bad layer spec"):
        resolve_layers("middle", 6)
    with pytest.raises(ValueError):
        percent_to_layer(120, 6)
