"""One stage protocol for every concept type: the same artefacts, the report, the detector, cache keys, early checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from superactivators.concepts.types import concept_type, load_concepts
from superactivators.config import config_from_dict
from superactivators.data.datasets import load_dataset
from superactivators.detector import ConceptDetector
from superactivators.encoders.text import TextEncoder
from superactivators.evaluate.methods import MACRO
from superactivators.evaluate.scoring import ScoreSummary, make_scorer
from superactivators.pipeline import run_pipeline
from superactivators.store.runs import find_stages

from .report_run import CONCEPTS, concept_subset_copy
from .test_sae import write_sae

KM = {"kmeans_k_tokens": 12, "kmeans_k_global": 4, "linsep_max_tokens_per_class": 200}


def _cfg(out, data, model, types, **detect):
    return config_from_dict({
        "name": "km", "output_dir": str(out), "score_device": "cpu", "data": {"path": str(data)},
        "embed": {"model": str(model), "layers": [2], "batch_size": 16, "max_length": 128, "store_dtype": "float32"},
        "concepts": {"types": types, **KM},
        "detect": {"grid": [5, 10, 50, 90], **detect},
    })


@pytest.fixture(scope="module")
def runs(tmp_path_factory, small_emotions, tiny_bert, tiny_lm):
    """``mean`` alone, then ``mean`` + ``kmeans`` (+ prompting) in the same run folder."""
    out = tmp_path_factory.mktemp("types")
    data = concept_subset_copy(small_emotions, out / "data")
    first = run_pipeline(_cfg(out, data, tiny_bert, ["mean"]), progress=False)
    mean_stage = next(s.path for s in find_stages(first.run_dir) if s.concept_type == "mean")
    stamp = (mean_stage / "summary.npz").stat().st_mtime_ns
    second = run_pipeline(_cfg(out, data, tiny_bert, ["mean", "kmeans"], prompt_model=str(tiny_lm),
                               methods=["superactivator", "global", "max_token", "mean_token", "prompt"]),
                          progress=False, force=True)  # a changed config under the same name: replace the results
    return first, second, mean_stage, stamp


def test_every_type_leaves_the_same_stage_artefacts(runs):
    _, run, _, _ = runs
    stages = {s.concept_type: s.path for s in find_stages(run.run_dir)}
    assert set(stages) == {"mean", "kmeans"}
    for ct, path in stages.items():
        for f in ("summary.npz", "hist.npz", "curves.npz", "concepts/cfg.json", "global_concepts/cfg.json"):
            assert (path / f).exists(), (ct, f)
        assert ScoreSummary.load(path / "summary.npz").names == CONCEPTS
        assert load_concepts(path / "concepts").names == CONCEPTS
    t = run.table
    km, mean = t[t.concept_type == "kmeans"], t[t.concept_type == "mean"]
    # every method, prompting included, for every type, in the same row layout
    assert set(km.method) == set(mean.method) and {"prompt", "prompt@best_threshold"} <= set(km.method)
    assert len(km) == len(mean)
    # the prompting baseline does not depend on the concept type
    cols = ["concept", "threshold", "f1"]
    pd.testing.assert_frame_equal(km[km.method == "prompt"][cols].reset_index(drop=True),
                                  mean[mean.method == "prompt"][cols].reset_index(drop=True))
    assert set(run.localization.concept_type) == {"mean", "kmeans"}


def test_matched_concepts_are_their_units(runs):
    _, run, _, _ = runs
    stage = next(s.path for s in find_stages(run.run_dir) if s.concept_type == "kmeans")
    matched = load_concepts(stage / "concepts")
    units = load_concepts(next((run.run_dir / "stages" / "units").glob("L02_kmeans_*")) / "concepts")
    m = pd.read_csv(stage / "matches.csv")
    sa = m[m.method == "superactivator"].set_index("concept")
    assert matched.units == [sa.loc[c, "unit_name"] for c in CONCEPTS]
    for j, c in enumerate(CONCEPTS):
        np.testing.assert_array_equal(matched.vectors[j], units.vectors[units.names.index(matched.units[j])])
    # each baseline keeps the unit matched on its own criterion (method_scores)
    summ = ScoreSummary.load(stage / "summary.npz")
    us = np.load(next((run.run_dir / "stages" / "units").glob("L02_kmeans_*")) / "unit_summary.npz")
    mt = m[m.method == "mean_token"].set_index("concept")
    for j, c in enumerate(CONCEPTS):
        np.testing.assert_array_equal(summ.method_scores["mean_token"][:, j],
                                      us["score__mean_token"][:, mt.loc[c, "unit"]])
        # the matched set is scored again on the labelled path: the same unit's activations
        np.testing.assert_allclose(summ.sample_scores["max_token"][:, j],
                                   us["score__max_token"][:, sa.loc[c, "unit"]], rtol=1e-5, atol=1e-6)


def test_mean_stage_reused_when_only_kmeans_options_change(runs):
    first, second, mean_stage, stamp = runs
    again = next(s.path for s in find_stages(second.run_dir) if s.concept_type == "mean")
    assert again == mean_stage and (mean_stage / "summary.npz").stat().st_mtime_ns == stamp
    sa = ["superactivator", "global", "max_token", "mean_token"]
    a = first.table[first.table.method.isin(sa)].reset_index(drop=True)
    b = second.table[(second.table.concept_type == "mean") & second.table.method.isin(sa)].reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)


def test_cache_keys_hold_only_what_changes_the_fit():
    base = {"linsep_max_tokens_per_class": 100, "linsep_c": 1.0, "kmeans_k_tokens": 10, "kmeans_k_global": 4}
    other = {**base, "kmeans_k_tokens": 99, "sae_path": "x"}
    assert concept_type("mean", base).cache_key() == concept_type("mean", other).cache_key() == {}
    assert concept_type("linsep", base).cache_key() == concept_type("linsep", other).cache_key()
    assert concept_type("kmeans", base).cache_key() != concept_type("kmeans", other).cache_key()
    lin = {**base, "linsep_c": 0.5}
    assert concept_type("kmeans", base).cache_key() == concept_type("kmeans", lin).cache_key()
    assert concept_type("kmeans-linsep", base).cache_key() != concept_type("kmeans-linsep", lin).cache_key()
    with pytest.raises(ValueError, match="unknown concept type"):
        concept_type("nope", base)


def test_report_lists_kmeans_concepts(runs, tmp_path):
    from superactivators.report.html import build_report

    _, run, _, _ = runs
    page = build_report(run.run_dir, tmp_path / "report", formats=("png",), n_examples=1)
    html = page.read_text()
    d = json.loads(html.split('<script id="report-data" type="application/json">')[1].split("</script>")[0])
    figs = d["figs"]
    assert {f"kmeans|2|{c}" for c in CONCEPTS} <= set(figs["concept"])
    assert "kmeans|2" in figs["methods_layer"] and "kmeans" in figs["methods_best"] and "kmeans" in figs["f1n_all"]
    assert all((page.parent / figs["concept"][f"kmeans|2|{c}"]).stat().st_size > 5000 for c in CONCEPTS)
    assert {f"kmeans|2|{c}" for c in CONCEPTS} <= set(d["frag"]["examples"])
    assert html.count("<td>kmeans</td>") >= len(CONCEPTS)


def test_detector_from_a_kmeans_stage_detects(runs):
    _, run, _, _ = runs
    det = ConceptDetector.from_run(run.run_dir, "kmeans", layer=2)
    stage = next(s.path for s in find_stages(run.run_dir) if s.concept_type == "kmeans")
    sa = pd.read_csv(stage / "matches.csv").query("method == 'superactivator'").set_index("concept")
    assert det.units == {c: sa.loc[c, "unit_name"] for c in CONCEPTS}
    t = run.table
    rows = t[(t.concept_type == "kmeans") & (t.method == "superactivator") & (t.concept != MACRO)]
    ds = load_dataset(run.store.info.dataset["source"])
    ids = ds.split_indices("test")[:8]
    found = det.detect(ds.texts(ids))
    store, cs = run.store, det.concept_sets[2]
    acts = make_scorer(cs)(np.concatenate([store.tokens(2, s) for s in store.shards]))
    for j, sid in enumerate(ids):
        seg = acts[store.offsets[sid]:store.offsets[sid + 1]]
        for c, name in enumerate(cs.names):
            thr = float(rows[rows.concept == name].threshold.iloc[0])
            assert found[j].max_activation[name] == pytest.approx(float(seg[:, c].max()), abs=1e-4)
            assert found[j].present[name] == (seg[:, c].max() >= thr)
    assert any(any(d.present.values()) for d in found)  # it does detect something


@pytest.mark.parametrize("hook,d_in,match", [("blocks.5.hook_resid_pre", 32, "store layer 5"),
                                             ("blocks.0.hook_resid_post", 16, "d_in=16")])
def test_sae_checks_run_before_any_forward(tmp_path, small_emotions, tiny_bert, monkeypatch, hook, d_in, match):
    write_sae(tmp_path / "sae", d_in=d_in, d_sae=8, hook_name=hook)

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before the concept checks")

    monkeypatch.setattr(TextEncoder, "__init__", no_model)
    cfg = config_from_dict({
        "name": "s", "output_dir": str(tmp_path / "runs"), "data": {"path": str(small_emotions)},
        "embed": {"model": str(tiny_bert), "layers": [1, 2]},
        "concepts": {"types": ["mean", "sae"], "sae_path": str(tmp_path / "sae")},
    })
    with pytest.raises(ValueError, match=match):
        run_pipeline(cfg, progress=False)
    assert not (tmp_path / "runs" / "s" / "stores").exists()


def test_sae_problems_listed_with_the_other_problems(tmp_path, small_emotions, tiny_bert, monkeypatch):
    from superactivators.preflight import check_run
    from superactivators.util.errors import ValidationError

    write_sae(tmp_path / "sae", d_in=16, d_sae=8, hook_name="blocks.0.hook_resid_post")
    monkeypatch.setattr(TextEncoder, "__init__", lambda *a, **k: pytest.fail("model loaded"))

    def problems(embed: dict, sae: Path, detect: dict) -> list[str]:
        cfg = config_from_dict({
            "name": "s", "output_dir": str(tmp_path / "runs"), "data": {"path": str(small_emotions)},
            "embed": {"model": str(tiny_bert), **embed}, "detect": detect,
            "concepts": {"types": ["mean", "sae"], "sae_path": str(sae)},
        })
        with pytest.raises(ValidationError) as err:
            check_run(cfg)
        return err.value.problems

    found = problems({"layers": [1, 2]}, tmp_path / "sae",
                     {"methods": ["superactivator", "prompt"], "prompt_model": str(tmp_path / "no_lm")})
    assert any(p.startswith("detect.prompt_model") for p in found), found  # another problem ...
    assert any(p.startswith("concepts.types sae:") and "d_in=16" in p for p in found), found  # ... and the SAE's
    found = problems({"layers": [1, 7]}, tmp_path / "no_sae", {})
    assert any("layer 7 out of range" in p for p in found), found
    assert any(p.startswith("concepts.types sae:") and "no_sae" in p for p in found), found
