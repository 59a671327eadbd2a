"""``protocol: seed``'s threshold rule (the seed's ``torch.nanquantile``) beside ours.

The seed-style reference below is written from the methods' descriptions only: torch, plain
loops over samples, ``torch.nanquantile`` per concept, N chosen by ``cal`` F1, first best in
grid order. It shares no code with the library's calibration.
"""

import math
import warnings

import numpy as np
import pytest
import torch

from superactivators import SuperActivatorDetector
from superactivators.concepts.supervised import learn_global_concepts, learn_mean_concepts
from superactivators.evaluate.calibrate import (
    DEFAULT_GRID,
    TAIL_RULE,
    calibrate_tail,
    column_tail_thresholds,
    tail_rule_key,
    tail_thresholds,
)
from superactivators.evaluate.detect import run_detection
from superactivators.evaluate.estimator import store_activations
from superactivators.evaluate.quantiles import StreamingQuantiles
from superactivators.evaluate.scoring import score_globals, summarise
from superactivators.store.synth import SynthSpec, build_synthetic_store

F32_EPS = float(np.finfo(np.float32).eps)
LEVELS = [1 - n / 100 for n in DEFAULT_GRID]  # the seed's quantile levels, as Python floats


def _populations() -> list[np.ndarray]:
    """Random, heavily tied and boundary-sensitive (0.1 steps) float32 populations of many sizes."""
    rng = np.random.default_rng(0)
    out = []
    for n in (1, 2, 3, 4, 7, 11, 20, 21, 50, 100, 101, 999, 5000):
        out.append((rng.standard_normal(n) * 3).astype(np.float32))
        out.append(rng.integers(0, 4, n).astype(np.float32))
        out.append(rng.permutation(np.arange(n) * 0.1 + 0.3).astype(np.float32))
    return out


def test_worked_example_of_docs_protocol():
    pop = [np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32)]
    assert tail_thresholds(pop, [50])[0, 0] == 3.0  # ours: k = ceil(50 * 4 / 100) = 2, the 2nd largest
    assert tail_thresholds(pop, [50], rule="seed")[0, 0] == 2.5  # seed: rank 0.5 * 3 = 1.5 -> (2 + 3) / 2
    assert tail_thresholds(pop, [50], rule="ours")[0, 0] == 3.0
    with pytest.raises(ValueError, match="threshold rule must be one of"):
        tail_thresholds(pop, [50], rule="paper")


def test_seed_thresholds_equal_numpy_linear_quantile_at_every_grid_value():
    pops = _populations()
    thr = tail_thresholds(pops, DEFAULT_GRID, rule="seed")
    for c, p in enumerate(pops):
        want = np.quantile(p.astype(np.float64), LEVELS)  # linear interpolation, float64
        np.testing.assert_allclose(thr[c], want, rtol=0, atol=8 * F32_EPS * max(float(np.abs(p).max()), 1.0),
                                   err_msg=f"population #{c} (n={len(p)})")


def test_seed_thresholds_are_torch_nanquantile_bit_for_bit():
    pops = _populations()
    thr = tail_thresholds(pops, DEFAULT_GRID, rule="seed")
    for c, p in enumerate(pops):
        want = [torch.nanquantile(torch.from_numpy(p), q).item() for q in LEVELS]
        np.testing.assert_array_equal(thr[c], want, err_msg=f"population #{c} (n={len(p)})")
    # where it matters: n = 21, N = 70 sits on a whole rank (20 * 0.3 = 6); the seed's float32 rank is
    # exactly 6, so its threshold is the value x_(6) itself and 15 values reach it; the float64
    # level 0.30000000000000004 interpolates a hair above x_(6) and drops it
    p = (np.arange(21) * 0.1 + 0.3).astype(np.float32)
    t = tail_thresholds([p], [70], rule="seed")[0, 0]
    assert t == np.sort(p)[6] and (p >= t).sum() == 15
    assert (p >= np.quantile(p.astype(np.float64), 1 - 70 / 100)).sum() == 14


def test_seed_rule_ignores_nan_like_nanquantile():
    rng = np.random.default_rng(1)
    p = rng.standard_normal(40).astype(np.float32)
    with_nan = np.concatenate([p[:10], [np.nan] * 7, p[10:]]).astype(np.float32)
    got = tail_thresholds([with_nan], DEFAULT_GRID, rule="seed")[0]
    np.testing.assert_array_equal(got, tail_thresholds([p], DEFAULT_GRID, rule="seed")[0])
    np.testing.assert_array_equal(got, [torch.nanquantile(torch.from_numpy(with_nan), q).item() for q in LEVELS])
    with pytest.warns(UserWarning, match="empty calibration population"):
        assert np.isnan(tail_thresholds([np.full(3, np.nan, np.float32)], [50], rule="seed")).all()
    with pytest.raises(FloatingPointError, match="non-finite"):  # ours still refuses NaN
        tail_thresholds([with_nan], [50])
    with pytest.raises(FloatingPointError, match="infinite"):
        tail_thresholds([np.array([1.0, np.inf], np.float32)], [50], rule="seed")
    # the column form (unit matching) agrees with the per-population one, NaN columns included
    rows = rng.standard_normal((30, 3)).astype(np.float32)
    rows[::4, 1] = np.nan
    rows[:, 2] = np.nan
    cols = column_tail_thresholds(rows, DEFAULT_GRID, rule="seed")
    np.testing.assert_array_equal(cols[:, :2].T, tail_thresholds([rows[:, 0], rows[:, 1]], DEFAULT_GRID, rule="seed"))
    assert np.isnan(cols[:, 2]).all()


def test_streamed_population_keeps_its_bound_under_the_seed_rule():
    rng = np.random.default_rng(2)
    p = np.concatenate([rng.standard_normal(30000), rng.exponential(5, 5000)]).astype(np.float32)
    h = StreamingQuantiles(1, bits=10)  # coarse: buckets 1/2 wide in relative terms
    h.add(p, np.zeros(len(p), np.int64))
    est = tail_thresholds([h.population(0)], DEFAULT_GRID, rule="seed")[0]
    exact = tail_thresholds([p], DEFAULT_GRID, rule="seed")[0]
    _, lo, hi = h.concept_bounds(0, np.float32(LEVELS).astype(np.float64))
    tol = 8 * F32_EPS * np.abs(p).max()  # the float32 rank of the seed vs the float64 rank of the bound
    assert np.all((lo - tol <= exact) & (exact <= hi + tol))
    assert np.all((lo <= est) & (est <= hi))
    assert np.any(est != exact)  # it is an estimate


def _hand_case():
    """Three cal samples, one concept. In-concept tokens [4, 3, 1] and [2]: population [1, 2, 3, 4].
    Sample maxima 4 (positive), 2.5 (positive, its max token 2.5 is out of concept), 2.2 (negative)."""
    acts = np.array([4.0, 3.0, 1.0, 2.0, 2.5, 2.2], dtype=np.float32)[:, None]
    ids = np.array([0, 0, 0, 1, 1, 2])
    gt = np.array([1, 1, 1, 1, 0, 0], dtype=bool)[:, None]
    labels = np.array([1, 1, 0])[:, None]
    return acts, ids, labels, gt


def test_the_two_rules_choose_different_n():
    acts, ids, labels, gt = _hand_case()
    grid = [50, 75]
    ours = SuperActivatorDetector(grid=grid).fit(acts, ids, labels, gt)
    seed = SuperActivatorDetector(grid=grid, protocol="seed").fit(acts, ids, labels, gt)
    # ours: k = 2 -> 3 (only the 4 fires: F1 2/3); k = 3 -> 2 (all three fire: F1 4/5) -> N = 75
    np.testing.assert_array_equal(ours.threshold_grid_[0], [3.0, 2.0])
    np.testing.assert_allclose(ours.cal_f1_curve_[0], [2 / 3, 4 / 5])
    assert ours.n_pct_[0] == 75 and ours.thresholds_[0] == 2.0
    # seed: rank 1.5 -> 2.5 (both positives: F1 1); rank 0.75 -> 1.75 (all three: F1 4/5) -> N = 50
    np.testing.assert_array_equal(seed.threshold_grid_[0], [2.5, 1.75])
    np.testing.assert_allclose(seed.cal_f1_curve_[0], [1.0, 4 / 5])
    assert seed.n_pct_[0] == 50 and seed.thresholds_[0] == 2.5
    np.testing.assert_array_equal(seed.predict(acts, ids)[:, 0], [True, True, False])
    np.testing.assert_array_equal(ours.predict(acts, ids)[:, 0], [True, True, True])
    # the same through the calibration function the pipeline calls
    cb = calibrate_tail(np.array([[4.0], [2.5], [2.2]]), [np.array([4.0, 3.0, 1.0, 2.0])], labels, grid, "seed")
    assert cb.n_pct[0] == 50 and cb.threshold[0] == 2.5
    with pytest.raises(ValueError, match="protocol must be one of"):
        SuperActivatorDetector(protocol="paper").fit(acts, ids, labels, gt)


def test_estimator_baseline_under_seed_rule():
    acts, ids, labels, _ = _hand_case()
    det = SuperActivatorDetector(grid=DEFAULT_GRID, method="mean_token", protocol="seed").fit(acts, ids, labels)
    means = np.array([(4 + 3 + 1) / 3, (2 + 2.5) / 2, 2.2], dtype=np.float32)
    pos = torch.from_numpy(means[:2])
    np.testing.assert_array_equal(det.threshold_grid_[0], [torch.nanquantile(pos, q).item() for q in LEVELS])


def test_rule_names_in_cache_keys():
    assert tail_rule_key("ours") == TAIL_RULE == "kth-largest-ceil"  # ours keeps the key it always had
    assert tail_rule_key("seed") != TAIL_RULE


# --- a synthetic store against a seed-style implementation --------------------------------------

SPEC = SynthSpec(n_tokens=8000, dim=16, n_concepts=5, min_len=10, max_len=50, label_rate=(0.2, 0.4),
                 signal=1.5, shard_tokens=1500, layer=1, seed=3)
SEED_METHODS = ("superactivator", "superactivator_sample", "global", "max_token", "mean_token", "last_token")


def _f1(pred: torch.Tensor, truth: torch.Tensor) -> float:
    tp = int((pred & truth).sum())
    fp = int((pred & ~truth).sum())
    fn = int((~pred & truth).sum())
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def _seed_style(sample_scores, populations, labels, splits, grid):
    """Per concept: thresholds by torch.nanquantile over the population (NaN where not in it), N by
    cal F1 (first best in grid order), test F1 at that threshold. Returns (chosen N, test F1, thr)."""
    cal = torch.from_numpy(splits == "cal")
    test = torch.from_numpy(splits == "test")
    y = torch.from_numpy(labels.astype(bool))
    C = y.shape[1]
    n_best, f1_test, thr_best = [], [], []
    for c in range(C):
        best_f1, best_n, best_t = -1.0, None, None
        for n_pct in grid:
            t = torch.nanquantile(populations[:, c], 1 - n_pct / 100)
            f1 = _f1(sample_scores[cal, c] >= t, y[cal, c])
            if f1 > best_f1:
                best_f1, best_n, best_t = f1, n_pct, t
        n_best.append(best_n)
        thr_best.append(float(best_t))
        f1_test.append(_f1(sample_scores[test, c] >= best_t, y[test, c]))
    return np.array(n_best, float), np.array(f1_test), np.array(thr_best)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return build_synthetic_store(tmp_path_factory.mktemp("seedrule") / "s", SPEC, batch_samples=16)


def test_seed_protocol_on_a_synthetic_store_equals_a_seed_style_implementation(synth):
    store = synth
    C = len(store.concepts)
    cs = learn_mean_concepts(store, SPEC.layer, list(range(C)))
    gcs = learn_global_concepts(store, SPEC.layer, list(range(C)), "mean")
    summary = summarise(store, cs, gcs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        got = {r.method: r for r in run_detection(summary, store.labels, store.splits, SEED_METHODS, DEFAULT_GRID,
                                                  best_threshold=False, rule="seed")}
        ours = {r.method: r for r in run_detection(summary, store.labels, store.splits, SEED_METHODS, DEFAULT_GRID,
                                                   best_threshold=False)}

    # the seed-style side: token activations of every sample, then plain loops
    sa = store_activations(store, cs)
    A = torch.from_numpy(sa.activations)  # [T, C] float32
    gt = torch.from_numpy(sa.token_labels)
    sid = sa.sample_index
    n = store.n_samples
    starts = np.searchsorted(sid, np.arange(n + 1))
    is_cal = store.splits == "cal"
    labels = store.labels.astype(bool)
    mx, mean, last = torch.empty(n, C), torch.empty(n, C), torch.empty(n, C)
    top_pop = [[] for _ in range(C)]
    for i in range(n):
        a = A[starts[i]:starts[i + 1]]
        mx[i] = a.max(dim=0).values
        mean[i] = a.mean(dim=0)
        last[i] = a[-1]
        if is_cal[i]:
            k = max(1, math.ceil(0.1 * len(a)))  # the sample-label variant: top 10 % tokens of a positive sample
            for c in range(C):
                if labels[i, c]:
                    top_pop[c].append(torch.topk(a[:, c], k).values)
    glob = torch.from_numpy(score_globals(store, gcs))
    nan = torch.tensor(float("nan"))
    cal_tok = torch.from_numpy(is_cal[sid])[:, None]
    in_concept = torch.where(cal_tok & gt, A, nan)  # [T, C]: NaN outside the population
    longest = max(sum(len(v) for v in vs) for vs in top_pop)
    sample_pop = torch.full((longest, C), float("nan"))
    for c in range(C):
        v = torch.cat(top_pop[c])
        sample_pop[:len(v), c] = v
    positive = torch.from_numpy(is_cal[:, None] & labels)
    reference = {
        "superactivator": (mx, in_concept),
        "superactivator_sample": (mx, sample_pop),
        "max_token": (mx, torch.where(positive, mx, nan)),
        "mean_token": (mean, torch.where(positive, mean, nan)),
        "last_token": (last, torch.where(positive, last, nan)),
        "global": (glob, torch.where(positive, glob, nan)),
    }
    differs = 0
    for m, (scores, pops) in reference.items():
        n_ref, f1_ref, thr_ref = _seed_style(scores, pops, store.labels, store.splits, DEFAULT_GRID)
        r = got[m]
        np.testing.assert_array_equal(r.n_pct, n_ref, err_msg=m)
        np.testing.assert_allclose(r.test.f1(), f1_ref, rtol=0, atol=1e-12, err_msg=m)
        if m == "mean_token":  # torch sums in another order: the means agree to float32 precision
            np.testing.assert_allclose(r.threshold, thr_ref, rtol=0, atol=8 * F32_EPS * float(scores.abs().max()))
        else:  # the same float32 values: the same thresholds, bit for bit
            np.testing.assert_array_equal(r.threshold, thr_ref, err_msg=m)
        differs += int(np.sum(ours[m].cal_f1_curve != r.cal_f1_curve) + np.sum(ours[m].threshold != r.threshold))
    assert differs > 0  # the two rules are not the same on this store


def test_pipeline_under_protocol_seed_thresholds_by_the_seed_rule(tmp_path, small_emotions, tiny_bert):
    """`protocol: seed` reaches calibration: every tail method's chosen threshold is the seed rule's."""
    from superactivators.config import config_from_dict
    from superactivators.evaluate.methods import MACRO, WEIGHTED
    from superactivators.evaluate.scoring import ScoreSummary
    from superactivators.pipeline import run_pipeline
    from superactivators.store.runs import find_stages

    grid = [10, 30, 50, 70, 90]
    cfg = config_from_dict({"name": "seedrule", "output_dir": str(tmp_path), "score_device": "cpu", "protocol": "seed",
                            "data": {"path": str(small_emotions)},
                            "embed": {"model": str(tiny_bert), "layers": [2], "batch_size": 32},
                            "concepts": {"types": ["mean"]},
                            "detect": {"grid": grid, "localize": False, "best_threshold": False,
                                       "methods": ["superactivator", "max_token", "mean_token", "last_token"]}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = run_pipeline(cfg, progress=False)
    (stage,) = find_stages(res.run_dir)
    summary = ScoreSummary.load(stage.path / "summary.npz")
    t = res.table[~res.table["concept"].isin([MACRO, WEIGHTED])]
    labels, cal = res.store.labels.astype(bool), res.store.splits == "cal"
    rows = {"superactivator": summary.cal_in_concept}
    for m in ("max_token", "mean_token", "last_token"):
        s = summary.sample_scores[m]
        rows[m] = [s[cal & labels[:, c], c] for c in range(labels.shape[1])]
    differs = 0
    for m, pops in rows.items():
        seed = tail_thresholds(pops, grid, rule="seed")  # [C, G]
        got = t[t["method"] == m].set_index("concept").loc[summary.names]
        j = [grid.index(n) for n in got["n_pct"]]
        np.testing.assert_array_equal(got["threshold"].to_numpy(), seed[np.arange(len(j)), j], err_msg=m)
        differs += int(np.sum(tail_thresholds(pops, grid)[np.arange(len(j)), j] != got["threshold"].to_numpy()))
    assert differs > 0  # ours would have given other thresholds
