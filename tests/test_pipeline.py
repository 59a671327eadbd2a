"""Tiny BERT-style and GPT-2-style models through the whole text pipeline."""

import numpy as np
import pandas as pd
import pytest

from superactivators.cli import main
from superactivators.config import config_from_dict, load_config
from superactivators.data.datasets import load_dataset
from superactivators.encoders.base import EmbedConfig
from superactivators.encoders.text import TextEncoder
from superactivators.evaluate.methods import MACRO, METHODS, TAIL_METHODS
from superactivators.pipeline import run_pipeline
from superactivators.store.embed import embed_dataset


def _cfg(tmp_path, data, model, **over):
    d = {
        "name": "t", "output_dir": str(tmp_path / "runs"), "score_device": "cpu",
        "data": {"path": str(data)},
        "embed": {"model": str(model), "layers": "all", "batch_size": 8, "max_length": 256, "shard_tokens": 2000},
        "concepts": {"types": ["mean", "linsep"], "linsep_max_tokens_per_class": 500},
        "detect": {"grid": [5, 10, 50, 90]},
    }
    d.update(over)
    return config_from_dict(d)


@pytest.mark.parametrize("model_fixture", ["tiny_bert", "tiny_gpt2"])
def test_whole_pipeline_tiny_models(tmp_path, small_emotions, model_fixture, request):
    model = request.getfixturevalue(model_fixture)
    res = run_pipeline(_cfg(tmp_path, small_emotions, model), progress=False)
    t = res.table
    n_layers = 2 if model_fixture == "tiny_bert" else 3
    assert sorted(t.layer.unique()) == list(range(1, n_layers + 1))
    assert set(t.concept_type) == {"mean", "linsep"}
    assert set(METHODS) <= set(t.method)
    assert {f"{m}@best_threshold" for m in METHODS if m not in TAIL_METHODS} <= set(t.method)
    macro = t[t.concept == MACRO]
    assert macro.f1.between(0, 1).all()
    csv = pd.read_csv(res.run_dir / "detection_metrics.csv")
    assert {"layer", "concept_type", "method", "concept", "precision", "recall", "f1"} <= set(csv.columns)
    assert (csv.concept == MACRO).sum() == len(macro)
    # the global token: CLS for BERT, mean of valid tokens for GPT-2
    assert res.store.info.model["global_token"] == ("cls" if model_fixture == "tiny_bert" else "mean")


def test_text_tokens_exclude_specials_and_map_spans(tmp_path, small_emotions, tiny_bert):
    ds = load_dataset(small_emotions)
    cfg = EmbedConfig(model=str(tiny_bert), layers=[1], batch_size=4, shard_tokens=500)
    enc = TextEncoder(cfg)
    store = embed_dataset(ds, cfg, tmp_path / "store", encoder=enc, progress=False)
    ids = enc.tokenizer(ds.text(0))["input_ids"]
    assert store.lengths[0] == len(ids) - 2  # [CLS] and [SEP] dropped
    # every in-concept token's character range lies inside (overlaps) an annotated span
    gt = np.concatenate([store.token_labels(s) for s in store.shards])
    for c, name in enumerate(store.concepts):
        rows = np.flatnonzero(gt[:, c])[:50]
        for r in rows:
            sid = store.sample_of_token[r]
            a, b = store.char_spans[r]
            assert any(a < e and b > s for s, e in ds.spans[sid][name])
    # each positive sample has in-concept tokens and negatives none
    for c in range(len(store.concepts)):
        per_sample = np.add.reduceat(gt[:, c].astype(int), store.offsets[:-1])
        np.testing.assert_array_equal(per_sample > 0, store.labels[:, c] > 0)


def test_embedding_identical_across_batch_sizes(tmp_path, small_emotions, tiny_gpt2):
    ds = load_dataset(small_emotions)
    stores = []
    for bs in (1, 5):
        cfg = EmbedConfig(model=str(tiny_gpt2), layers=[2], batch_size=bs, store_dtype="float32")
        stores.append(embed_dataset(ds, cfg, tmp_path / f"s{bs}", progress=False))
    a, b = stores
    np.testing.assert_array_equal(a.offsets, b.offsets)
    xa = np.concatenate([a.tokens(2, s) for s in a.shards])
    xb = np.concatenate([b.tokens(2, s) for s in b.shards])
    np.testing.assert_allclose(xa, xb, atol=2e-5)


def test_rerun_uses_cache_and_resumes_after_interruption(tmp_path, small_emotions, tiny_bert, monkeypatch):
    cfg = _cfg(tmp_path, small_emotions, tiny_bert)
    import superactivators.encoders.text as embed_mod

    calls = {"n": 0}
    orig = embed_mod.TextEncoder._layer_states  # the forward pass, whichever way a batch was tokenised

    def flaky(self, batch):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return orig(self, batch)

    monkeypatch.setattr(embed_mod.TextEncoder, "_layer_states", flaky)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg, progress=False)
    assert calls["n"] == 4
    assert not (cfg.run_dir / "detection_metrics.csv").exists()
    res = run_pipeline(cfg, progress=False)  # resumes: the first shard is not re-embedded
    first = res.table
    monkeypatch.setattr(embed_mod.TextEncoder, "_layer_states", lambda *a, **k: pytest.fail("re-embedded"))
    res2 = run_pipeline(cfg, progress=False)
    pd.testing.assert_frame_equal(first, res2.table)


def test_cli_run_and_dataset_info(tmp_path, small_emotions, tiny_bert, capsys):
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(
        f"name: cli\noutput_dir: {tmp_path / 'runs'}\ndata:\n  path: {small_emotions}\n"
        f"embed:\n  model: {tiny_bert}\n  layers: [2]\nconcepts:\n  types: [mean]\n"
    )
    assert main(["run", str(cfg_file), "--quiet", "--set", "embed.batch_size=16"]) == 0
    out = capsys.readouterr().out
    assert "Macro F1" in out and " SA " in out and "SA_margin" in out  # method names shortened for the console
    long = [line for line in out.splitlines() if len(line) > 100 and str(tmp_path.parent) not in line]
    assert not long, long  # lines naming a temporary path (the run's, the states cache's) aside
    assert load_config(cfg_file, ["embed.batch_size=16"]).embed.batch_size == 16
    assert main(["dataset-info", str(small_emotions)]) == 0
    out = capsys.readouterr().out
    assert "modality: text" in out and "emotion::joy" in out


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown config key"):
        config_from_dict({"embed": {"modle": "x"}})
    with pytest.raises(ValueError, match="unknown concept type"):
        config_from_dict({"concepts": {"types": ["means"]}})
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed")
    assert main(["run", str(bad)]) == 2


def test_console_macro_table_shows_calibrated_methods_and_the_margin() -> None:
    """The console's macro table: calibrated methods, SA_margin = SA - best calibrated baseline; variants on request."""
    import pandas as pd

    from superactivators.pipeline import format_macro

    idx = pd.MultiIndex.from_tuples([(1, "mean"), (2, "mean")], names=["layer", "concept_type"])
    macro = pd.DataFrame({"superactivator": [0.50, 0.70], "max_token": [0.60, 0.65], "global": [0.40, 0.30],
                          "max_token@best_threshold": [0.9, 0.9], "global@fpr=1%": [0.1, 0.1]}, index=idx)
    text = format_macro(macro)
    assert "@" not in text and "max_tok" in text and "SA_margin" in text
    margin = [float(ln.split()[-3]) for ln in text.splitlines()[2:]]
    assert margin == pytest.approx([-0.10, 0.05])  # 0.50 - 0.60 and 0.70 - 0.65 (hand-computed)
    full = format_macro(macro, variants=True)
    assert "max_tok@best" in full and "global@fpr=1%" in full
