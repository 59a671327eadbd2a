"""Hidden states shared between runs (superactivators.store.cache): reused with no model run,
results byte-identical to a self-contained store, per-run truth kept apart, locking, cache ls / rm."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from filelock import FileLock

from superactivators.cli import main
from superactivators.config import config_from_dict
from superactivators.data.datasets import load_dataset, withhold_token_truth
from superactivators.encoders.base import EmbedConfig
from superactivators.encoders.text import TextEncoder
from superactivators.pipeline import run_pipeline
from superactivators.store.cache import cached_store, list_entries, states_root
from superactivators.store.embed import embed_dataset
from superactivators.store.tokens import StoreError, TokenStore

RESULT_FILES = ("detection_metrics.csv", "detection_macro_f1.csv", "localization_metrics.csv", "best_layers.csv")


def _cfg(out: Path, data: Path, model: Path, name: str = "t", **embed) -> object:
    return config_from_dict({
        "name": name, "output_dir": str(out), "score_device": "cpu", "data": {"path": str(data)},
        "embed": {"model": str(model), "layers": "all", "batch_size": 8, "max_length": 128, "shard_tokens": 1500,
                  **embed},
        "concepts": {"types": ["mean"]}, "detect": {"grid": [10, 50, 90]},
    })


def _no_model(monkeypatch) -> None:
    """Any attempt to build the text encoder (load the model) fails the test."""
    def refuse(self, *a, **k):
        raise AssertionError("the model was loaded: the cached states were not reused")
    monkeypatch.setattr(TextEncoder, "__init__", refuse)


def test_second_run_in_another_folder_reuses_the_states(tmp_path, small_emotions, tiny_bert, states_cache,
                                                        monkeypatch, capsys) -> None:
    first = run_pipeline(_cfg(tmp_path / "a", small_emotions, tiny_bert), progress=False)
    assert "hidden states cached in" in capsys.readouterr().out
    entries = list_entries(states_cache)
    assert len(entries) == 1 and entries[0].complete and entries[0].runs == 1
    view = json.loads((first.stage_dirs["store"] / "manifest.json").read_text())
    assert Path(view["states"]["path"]) == entries[0].path
    assert not list(first.stage_dirs["store"].glob("layer_*/0*.npy"))  # no hidden states in the run folder

    with monkeypatch.context() as m:
        _no_model(m)
        second = run_pipeline(_cfg(tmp_path / "b", small_emotions, tiny_bert, name="other"), progress=False)
    out = capsys.readouterr().out
    assert out.count("reusing cached hidden states") == 1 and "no embedding" in out
    for f in RESULT_FILES:
        assert (second.run_dir / f).read_bytes() == (first.run_dir / f).read_bytes(), f
    assert list_entries(states_cache)[0].runs == 2

    # the same run with the states inside its own store (as before the cache): the same bytes
    own = run_pipeline(_cfg(tmp_path / "c", small_emotions, tiny_bert, store_cache="off"), progress=False)
    assert list(own.stage_dirs["store"].glob("layer_*/0*.npy")) and len(list_entries(states_cache)) == 1
    for f in RESULT_FILES:
        assert (own.run_dir / f).read_bytes() == (first.run_dir / f).read_bytes(), f
    a, b = first.store, own.store
    for layer in a.layers:
        assert (a.path / f"layer_{layer:02d}" / "mean.npy").read_bytes() == \
            (b.path / f"layer_{layer:02d}" / "mean.npy").read_bytes()
    for sa, sb in zip(a.shards, b.shards):
        np.testing.assert_array_equal(a.token_labels(sa), b.token_labels(sb))  # span truth, per run


def test_truth_mode_and_settings_share_states_but_not_truth(tmp_path, small_emotions, tiny_bert, states_cache,
                                                            monkeypatch, capsys) -> None:
    ds = load_dataset(small_emotions)
    cfg = EmbedConfig(model=str(tiny_bert), layers=[1, 2], batch_size=8, shard_tokens=1500)
    spans = cached_store(ds, cfg, tmp_path / "r1" / "store", progress=False)
    _no_model(monkeypatch)
    # sample labels only, and another batch size / shard size: the same states, the run's own truth
    cfg2 = dataclasses.replace(cfg, batch_size=3, shard_tokens=999)
    plain = cached_store(withhold_token_truth(ds), cfg2, tmp_path / "r2" / "store", progress=False)
    assert capsys.readouterr().out.count("reusing cached hidden states") == 1
    assert spans.info.token_ground_truth == "spans" and plain.info.token_ground_truth == "sample"
    s = spans.shards[0]
    gt_spans, gt_plain = spans.token_labels(s), plain.token_labels(s)
    np.testing.assert_array_equal(gt_plain, ds.labels[spans.sample_of_token[s.token_start:s.token_stop]]
                                  .astype(bool) & spans.valid[s.token_start:s.token_stop, None])
    assert gt_spans.sum() < gt_plain.sum()  # spans pick some tokens of the positives, sample labels all
    np.testing.assert_array_equal(spans.tokens(1, s), plain.tokens(1, s))
    # another max length changes the states: a new entry (the model would be needed)
    with pytest.raises(AssertionError, match="model was loaded"):
        cached_store(ds, dataclasses.replace(cfg, max_length=16), tmp_path / "r3" / "store", progress=False)


def test_views_check_their_states_and_rebuild_when_removed(tmp_path, small_emotions, tiny_bert, states_cache,
                                                           capsys, monkeypatch) -> None:
    ds = load_dataset(small_emotions)
    cfg = EmbedConfig(model=str(tiny_bert), layers=[2], batch_size=8, shard_tokens=1500)
    sdir = tmp_path / "run" / "store"
    store = cached_store(ds, cfg, sdir, progress=False)
    entry = Path(store.info.states["path"])
    man = json.loads((sdir / "manifest.json").read_text())
    (sdir / "manifest.json").write_text(json.dumps({**man, "complete": False}))  # a view left unfinished
    with monkeypatch.context() as m:
        _no_model(m)
        assert cached_store(ds, cfg, sdir, progress=False).info.complete  # rebuilt from the cached states
    x0 = np.array(store.tokens(2, store.shards[0]))
    shard = entry / "layer_02" / f"{store.shards[0].name}.npy"
    raw = bytearray(shard.read_bytes())
    raw[200] ^= 0xFF
    shard.write_bytes(bytes(raw))
    with pytest.raises(StoreError, match="layer_02"):
        TokenStore(sdir, verify="full")
    assert main(["verify", str(sdir)]) == 1

    assert main(["cache", "ls"]) == 0
    ls = capsys.readouterr().out
    assert entry.name in ls and "runs 1" in ls and str(states_cache) in ls
    assert main(["cache", "rm", entry.name]) == 0
    assert not entry.exists() and "removed 1 entry" in capsys.readouterr().out
    assert main(["cache", "rm", "nothing-here"]) == 2
    with pytest.raises(StoreError, match="cache rm"):
        TokenStore(sdir)
    again = cached_store(ds, cfg, sdir, progress=False)  # embedded anew, the view rebuilt
    np.testing.assert_array_equal(np.array(again.tokens(2, again.shards[0])), x0)


def test_a_second_run_waits_for_the_first_and_reuses_its_states(tmp_path, small_emotions, tiny_bert,
                                                                states_cache) -> None:
    ds = load_dataset(small_emotions)
    cfg = EmbedConfig(model=str(tiny_bert), layers=[1], batch_size=8, shard_tokens=1500)
    first = cached_store(ds, cfg, tmp_path / "one" / "store", progress=False)
    entry = Path(first.info.states["path"])
    got: dict = {}
    held = FileLock(str(states_root(cfg) / f".{entry.name}.lock"))
    held.acquire()  # another run is writing this entry
    t = threading.Thread(target=lambda: got.update(store=cached_store(ds, cfg, tmp_path / "two" / "store",
                                                                      progress=False)))
    t.start()
    time.sleep(1.0)
    assert t.is_alive() and not (tmp_path / "two" / "store").exists()  # waiting on the lock
    held.release()
    t.join(60)
    assert got["store"].info.states["path"] == str(entry) and got["store"].info.complete


def test_interrupted_states_resume(tmp_path, small_emotions, tiny_bert, monkeypatch) -> None:
    from superactivators.store import tokens

    ds = load_dataset(small_emotions)
    cfg = EmbedConfig(model=str(tiny_bert), layers=[1], batch_size=8, shard_tokens=600)
    real, calls = tokens.StoreWriter.flush, []

    def flush_twice(self):
        if len(calls) == 2 and self._buffered_samples:
            raise KeyboardInterrupt
        calls.append(1)
        real(self)

    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(tokens.StoreWriter, "flush", flush_twice)
        cached_store(ds, cfg, tmp_path / "run" / "store", progress=False)
    entry = next(p for p in states_root(cfg).iterdir() if p.is_dir())
    assert len(json.loads((entry / "manifest.json").read_text())["shards"]) == 2
    resumed = cached_store(ds, cfg, tmp_path / "run" / "store", progress=False)
    whole = embed_dataset(ds, dataclasses.replace(cfg, store_cache="off"), tmp_path / "whole", progress=False)
    assert resumed.info.shards == whole.info.shards
    for s in whole.shards:  # resumed at a shard, not a bucketing window: other batches, fp16 rounding apart
        np.testing.assert_allclose(resumed.tokens(1, s), whole.tokens(1, s), rtol=0, atol=2e-3)
        np.testing.assert_array_equal(resumed.token_labels(s), whole.token_labels(s))


def test_image_states_shared_with_their_patch_truth(tmp_path, monkeypatch, capsys) -> None:
    import torch
    from transformers import ViTConfig, ViTImageProcessorPil, ViTModel

    from superactivators.data.masks import MaskOptions
    from superactivators.data.shapes import generate_shapes
    from superactivators.encoders.factory import make_encoder
    from superactivators.encoders.vision import ImageEncoder

    generate_shapes(tmp_path / "shapes", n=24, seed=0, size=64)
    torch.manual_seed(0)
    ViTModel(ViTConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                       image_size=32, patch_size=8), add_pooling_layer=False).eval().save_pretrained(tmp_path / "vit")
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "vit")
    ds = load_dataset(tmp_path / "shapes", concepts=["color::red", "shape::sphere"])
    cfg = EmbedConfig(model=str(tmp_path / "vit"), layers=[2], batch_size=8)
    opts = MaskOptions()
    first = cached_store(ds, cfg, tmp_path / "a", lambda: make_encoder(cfg, "image", opts), opts, progress=False)
    own = embed_dataset(ds, cfg, tmp_path / "own", encoder=make_encoder(cfg, "image", opts), progress=False)
    with monkeypatch.context() as m:
        m.setattr(ImageEncoder, "__init__", lambda *a, **k: (_ for _ in ()).throw(AssertionError("model loaded")))
        second = cached_store(ds, cfg, tmp_path / "b", lambda: make_encoder(cfg, "image", opts), opts, progress=False)
        with pytest.raises(AssertionError, match="model loaded"):  # other mask options: other patch truth
            cached_store(ds, cfg, tmp_path / "c", lambda: make_encoder(cfg, "image", MaskOptions(coverage=0.2)),
                         MaskOptions(coverage=0.2), progress=False)
    assert "reusing cached hidden states" in capsys.readouterr().out
    assert second.info.token_ground_truth == own.info.token_ground_truth == "masks"
    for st in (first, second):
        np.testing.assert_array_equal(st.valid, own.valid)
        for s in own.shards:
            np.testing.assert_array_equal(st.token_labels(s), own.token_labels(s))
            np.testing.assert_array_equal(st.tokens(2, s), own.tokens(2, s))
        assert (st.path / "layer_02" / "mean.npy").read_bytes() == (own.path / "layer_02" / "mean.npy").read_bytes()
