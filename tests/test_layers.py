"""Percent-through-model: the seed's rule, checked against the seed's own tables."""

import json
from pathlib import Path

import pytest

from superactivators.encoders.layers import percent_to_layer, resolve_layers, seed_block
from superactivators.encoders.registry import REFERENCE_MODELS, get_family

from .conftest import REFERENCE_DATA

TABLES = REFERENCE_DATA / "Model_Layer_Mappings"
VENDORED = Path(__file__).parent / "data" / "seed_layer_tables.json"
# seed table -> (our family, depth of the real checkpoint); the seed's text code reads the
# "Gemma-2" entry for gemma-2 checkpoints, so "Gemma-Text" (28 blocks) is a Gemma-1 depth
SEED_TABLE_MODEL = {
    "CLIP": "clip-vision", "Llama-Vision": "mllama-vision", "Llama-Text": "mllama-text",
    "Gemma-2": "gemma2", "Gemma-Text": "gemma2", "Qwen-Text": "qwen3",
}


def seed_tables() -> dict[str, dict]:
    """``{name: {"total_layers": n, "lookup": {percent: block}}}`` from the seed's JSON files.

    The originals in ``shared/reference-data`` are used when present (and must equal the
    compact copy in ``tests/data``); elsewhere the copy stands in for them.
    """
    vendored = json.loads(VENDORED.read_text())["tables"]
    if not TABLES.exists():
        return vendored
    lookup = json.loads((TABLES / "percent_to_layer_lookup.json").read_text())
    ranges = json.loads((TABLES / "percentthrumodel_to_layer_mappings.json").read_text())
    tables = {k: {"total_layers": ranges[k]["total_layers"], "lookup": lookup[k]} for k in lookup}
    for k, t in tables.items():  # the ranges file says the same as the lookup
        for block, r in t_ranges(ranges[k]).items():
            assert all(t["lookup"][str(p)] == block for p in r), (k, block)
    assert tables == vendored
    return tables


def t_ranges(entry: dict) -> dict[int, range]:
    return {int(b): range(r["min_percent"], r["max_percent"] + 1) for b, r in entry["layer_mappings"].items()}


def real_depth(family: str) -> int:
    ref = next(r for r in REFERENCE_MODELS if r.family == family)
    return get_family(family).n_layers(ref.build_config())


def test_rule_by_hand_and_clamp():
    # p % of n blocks -> 0-based block floor(p n / 100) - 1 clamped at 0 -> our layer = block + 1
    assert seed_block(75, 42) == 30 and percent_to_layer(75, 42) == 31  # 31.5 -> 31 (floor, not half up)
    assert percent_to_layer(4, 42) == 1  # 1.68 -> 1
    assert percent_to_layer(4, 24) == 1  # 0.96 -> block -1 -> clamped to block 0 = layer 1
    assert percent_to_layer(0, 24) == 1 and percent_to_layer(100, 24) == 24
    assert percent_to_layer(25, 24) == 6  # exactly 6.0: no float floor to 5
    assert percent_to_layer(29, 100) == 29  # 0.29 * 100 is 28.999... in binary floats; exact here
    assert percent_to_layer("12.5", 8) == 1 and percent_to_layer(12.5, 16) == 2
    assert [percent_to_layer(p, 24) for p in (4, 25, 46, 67, 88, 100)] == [1, 6, 11, 16, 21, 24]
    with pytest.raises(ValueError):
        percent_to_layer(120, 6)
    with pytest.raises(ValueError, match="bad layer percentage"):
        percent_to_layer("half", 6)


def test_rule_reproduces_every_seed_table_at_its_own_depth():
    tables = seed_tables()
    assert set(tables) == set(SEED_TABLE_MODEL)
    for name, t in tables.items():
        n = t["total_layers"]
        got = {str(p): seed_block(p, n) for p in range(1, 101)}
        assert got == {str(k): v for k, v in t["lookup"].items()}, name


def test_seed_tables_agree_with_real_checkpoints_where_the_depth_agrees():
    """Same depth: identical blocks. Different depth (Qwen3 36 vs 32, Gemma-2 42 vs 28): recorded."""
    differs = {}
    for name, t in seed_tables().items():
        fam = SEED_TABLE_MODEL[name]
        n_real = real_depth(fam)
        ours = {p: percent_to_layer(p, n_real) for p in get_family(fam).sweep}
        table = {p: t["lookup"][str(int(p))] + 1 for p in get_family(fam).sweep}
        if t["total_layers"] == n_real:
            assert ours == table, name
        else:
            differs[name] = (t["total_layers"], n_real, [p for p in ours if ours[p] != table[p]])
    # the known differences (docs/models.md): at the family sweeps, which percentages land elsewhere
    assert differs == {
        "Gemma-Text": (28, 42, [21, 39, 57, 75, 93, 100]),
        "Qwen-Text": (32, 36, [34, 50, 66, 81, 97, 100]),
    }


def test_sweeps_on_the_real_checkpoints():
    got = {f: tuple(percent_to_layer(p, real_depth(f)) for p in get_family(f).sweep)
           for f in ("clip-vision", "mllama-vision", "mllama-text", "gemma2", "qwen3")}
    assert got == {
        "clip-vision": (1, 6, 11, 16, 21, 24),
        "mllama-vision": (1, 6, 11, 16, 20, 26, 31, 36, 40),  # 52 % of 40 = 20.8 -> 20
        "mllama-text": (1, 6, 10, 16, 21, 25, 31, 32),  # 34 % -> 10.88, 81 % -> 25.92
        "gemma2": (1, 8, 16, 23, 31, 39, 42),  # 4/21/57/75 % -> 1.68, 8.82, 23.94, 31.5
        "qwen3": (1, 6, 12, 18, 23, 29, 34, 36),  # 19/66/97 % -> 6.84, 23.76, 34.92
    }


def test_resolve_layers_forms():
    assert resolve_layers("all", 3) == [1, 2, 3]
    assert resolve_layers([0, -1, "50%"], 6) == [0, 3, 6]
    assert resolve_layers("2", 4) == [2]
    assert resolve_layers(["12.5%", "0%", "100%"], 8) == [1, 8]
    with pytest.raises(ValueError, match="out of range"):
        resolve_layers(7, 6)
    with pytest.raises(ValueError, match="bad layer spec"):
        resolve_layers("middle", 6)
