"""The method records: one declaration per method, every list a filter over them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from superactivators.evaluate import methods as M

SRC = Path(__file__).resolve().parents[1] / "src" / "superactivators"


def test_lists_are_filters_over_the_records():
    assert M.METHODS == ("superactivator", "superactivator_sample", "global", "max_token", "mean_token",
                         "last_token", "rolling_max", "random_token")
    assert M.BASELINES == ("global", "max_token", "mean_token", "last_token", "rolling_max", "random_token")
    assert M.TAIL_METHODS == ("superactivator", "superactivator_sample")
    assert M.DECISION_METHODS == ("prompt_seed",)
    assert M.PROMPT_METHOD_OF == {"margin": "prompt", "seed": "prompt_seed"}
    assert set(M.ALL_METHODS) == {m.name for m in M.DETECTION}
    assert len(M.ALL_METHODS) == len(M.DETECTION), "a method declared twice"


def test_variant_names_round_trip():
    assert M.variant("max_token") == "max_token@best_threshold"
    assert M.split("max_token@best_threshold") == ("max_token", "best_threshold")
    assert M.split("superactivator") == ("superactivator", "")
    assert M.score_of("superactivator") == "max_token"
    assert M.score_of("superactivator_sample") == "max_token"
    assert M.score_of("mean_token@best_threshold") == "mean_token"
    assert M.score_of("someone_elses") == "someone_elses"
    assert M.label("max_token@best_threshold") == "max token @best thr."


@pytest.mark.parametrize("name,expected", [("superactivator", False), ("superactivator_sample", False),
                                           ("max_token", True), ("prompt", True), ("global@best_threshold", False)])
def test_is_baseline(name, expected):
    assert M.is_baseline(name) is expected


def test_free_references_and_token_thresholds():
    assert [m.name for m in M.DETECTION if m.free_reference] == [*M.BASELINES, "prompt"]
    assert {m.name for m in M.DETECTION if m.token_threshold} == {"superactivator", "superactivator_sample",
                                                                   "max_token"}


def test_order_puts_declared_methods_first_with_their_variants():
    got = M.order(["zzz", "max_token@best_threshold", "global", "superactivator", "max_token"])
    assert got == ["superactivator", "global", "max_token", "max_token@best_threshold", "zzz"]


def test_method_names_are_spelled_only_in_the_records():
    """A method's name string lives in evaluate/methods.py; everything else reads the records."""
    hits = []
    for p in SRC.rglob("*.py"):
        if p.name == "methods.py" and p.parent.name == "evaluate":
            continue
        for i, line in enumerate(p.read_text().splitlines(), 1):
            if re.search(r"""["']superactivator["']""", line) and "``" not in line:
                hits.append(f"{p.relative_to(SRC)}:{i}: {line.strip()}")
    assert not hits, "method names outside the records:\n" + "\n".join(hits)


def test_localisation_methods_have_console_names() -> None:
    from superactivators.evaluate.methods import short_label

    assert short_label("superactivator_joint") == "SA_joint" and short_label("f1:always_positive") == "f1:every_tok"
    assert short_label("topk") == "topk"  # short names stay as they are
