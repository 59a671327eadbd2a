"""docs/activations.md: every recipe block runs, and the three ways to get hidden states agree."""

import re
from pathlib import Path

import numpy as np
import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "activations.md"


def recipe_blocks() -> list[str]:
    text = DOC.read_text()
    return re.findall(r"```python\n(.*?)```", text.split("## Recipes", 1)[1], flags=re.S)


def test_recipes_run_and_agree(capsys, tiny_bert):
    setup, hook, hidden, cache, fit = recipe_blocks()
    # the doc's MiniLM, 6 layers, becomes the 2-layer tiny BERT (same tokenizer): seconds, not minutes
    for old, new in (("model_path = get_model_path()", f"model_path = {str(tiny_bert)!r}"), ("LAYER = 4", "LAYER = 2")):
        assert old in setup
        setup = setup.replace(old, new)
    ns: dict = {}
    exec(compile(setup, "activations.md:setup", "exec"), ns)
    results = {}
    for name, block in (("hook", hook), ("output_hidden_states", hidden), ("cache", cache)):
        env = dict(ns)
        exec(compile(block, f"activations.md:{name}", "exec"), env)
        exec(compile(fit, f"activations.md:fit after {name}", "exec"), env)
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
