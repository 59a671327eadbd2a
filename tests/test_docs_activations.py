"""docs/activations.md: every recipe block runs, and the three ways to get hidden states agree."""

import re
from pathlib import Path

import numpy as np
import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "activations.md"


def recipe_blocks() -> list[str]:
    text = DOC.read_text()
    return re.findall(r"```python\n(.*?)```", text.split("## Recipes", 1)[1], flags=re.S)


def run_block(src: str, name: str, env: dict) -> None:
    """Execute a doc block under a file name whose source is readable (nnsight reads its trace's body)."""
    import linecache

    fname = f"<activations.md:{name}>"
    linecache.cache[fname] = (len(src), None, src.splitlines(True), fname)
    exec(compile(src, fname, "exec"), env)


def test_recipes_run_and_agree(capsys, tiny_bert):
    setup, hook, hidden, cache, nnsight, fit = recipe_blocks()
    # the doc's MiniLM, 6 layers, becomes the 2-layer tiny BERT (same tokenizer): seconds, not minutes
    for old, new in (("model_path = get_model_path()", f"model_path = {str(tiny_bert)!r}"), ("LAYER = 4", "LAYER = 2")):
        assert old in setup
        setup = setup.replace(old, new)
    ns: dict = {}
    run_block(setup, "setup", ns)
    results = {}
    for name, block in (("hook", hook), ("output_hidden_states", hidden), ("cache", cache), ("nnsight", nnsight)):
        env = dict(ns)
        run_block(block, name, env)
        run_block(fit, f"fit-after-{name}", env)
        det, X = env["det"], env["X"]
        assert env["found"].shape == (120, len(env["ds"].concepts))
        assert env["super_tokens"].shape == (X.shape[0], len(env["ds"].concepts))
        assert set(det.n_pct_) <= {2, 5, 10, 20, 50, 90}
        results[name] = (det.thresholds_, det.score(X, env["sample_index"], env["labels"]))
    ref, f1 = results["output_hidden_states"]
    for name, (thr, score) in results.items():
        np.testing.assert_allclose(thr, ref, rtol=1e-5, err_msg=name)
        assert score == pytest.approx(f1, abs=1e-9)
    assert 0.0 <= f1 <= 1.0
    assert "emotion::gratitude" in capsys.readouterr().out


def test_transformer_lens_cache_feeds_the_estimator():
    """A real TransformerLens ``run_with_cache`` cache, read as the cache recipe reads it, equals the
    residual stream captured by a hook on the same model, and gives the same fit."""
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from superactivators import SuperActivatorDetector, tokens_from_padded

    model = HookedTransformer(HookedTransformerConfig(n_layers=2, d_model=32, n_ctx=32, d_head=8, n_heads=4,
                                                      d_vocab=64, act_fn="relu", seed=0))
    ids = torch.randint(0, 64, (6, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(6, 12)
    mask[3:, 9:] = 0  # padded tails
    _, cache = model.run_with_cache(ids)
    captured = {}
    model.run_with_hooks(ids, fwd_hooks=[("blocks.1.hook_resid_post", lambda t, hook: captured.setdefault("h", t))])
    torch.testing.assert_close(cache["blocks.1.hook_resid_post"], captured["h"])
    X, sid = tokens_from_padded(cache["blocks.1.hook_resid_post"], mask)
    assert X.shape == (6 * 12 - 3 * 3, 32) and sid.tolist() == sorted(sid.tolist())
    labels = np.array([[1, 0], [0, 1], [1, 1], [0, 0], [1, 0], [0, 1]])
    gt = torch.from_numpy(labels[sid.numpy()].astype(bool))
    V = torch.randn(2, 32, generator=torch.Generator().manual_seed(1))
    a = SuperActivatorDetector(grid=[10, 50], concept_vectors=V).fit(X, sid, labels, gt)
    Xh, sh = tokens_from_padded(captured["h"], mask)
    b = SuperActivatorDetector(grid=[10, 50], concept_vectors=V).fit(Xh.detach().numpy(), sh.numpy(), labels, gt.numpy())
    np.testing.assert_array_equal(a.thresholds_, b.thresholds_)
