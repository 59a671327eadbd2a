"""Streaming quantiles: order-preserving keys, the one-pass error bound, the exact two-pass method."""

from __future__ import annotations

import numpy as np
import pytest

from superactivators.evaluate.calibrate import DEFAULT_GRID, tail_counts, tail_thresholds
from superactivators.evaluate.quantiles import StreamingQuantiles, float_keys, keys_to_floats

Q = 1.0 - np.asarray(DEFAULT_GRID) / 100.0


def test_float_keys_sort_like_floats_and_invert():
    x = np.array([-np.inf, -3.5, -1e-30, -0.0, 0.0, 1e-45, 2.0, 2.0000002, np.inf], dtype=np.float32)
    k = float_keys(x)
    assert np.all(np.diff(k.astype(np.int64)) >= 0) and k[3] < k[4]  # -0.0 sorts just below +0.0
    np.testing.assert_array_equal(keys_to_floats(k).view(np.uint32), x.view(np.uint32))
    # hand value: +1.0 is 0x3F800000, its key sets the top bit
    assert float_keys(np.float32([1.0]))[0] == 0xBF800000


def _populations(rng):
    return [
        rng.normal(0.1, 0.05, 200_000).astype(np.float32),  # cosine-like, both signs
        rng.standard_t(3, 50_000).astype(np.float32) * 4,  # heavy tails
        np.round(rng.normal(size=30_000), 2).astype(np.float32),  # many exact ties
        np.array([0.25], np.float32),  # one value
        np.empty(0, np.float32),  # empty concept
    ]


def _stream(hist_or_coll, pops, rng, chunk=7_777):
    """Feed concept-tagged values in shuffled chunks, as shards would."""
    vals = np.concatenate(pops)
    cols = np.concatenate([np.full(len(p), c) for c, p in enumerate(pops)])
    order = rng.permutation(len(vals))
    for i in range(0, len(vals), chunk):
        sl = order[i:i + chunk]
        hist_or_coll.add(vals[sl], cols[sl])


@pytest.mark.parametrize("bits", [16, 12])
def test_one_pass_estimate_within_proven_bound(bits):
    rng = np.random.default_rng(0)
    pops = _populations(rng)
    h = StreamingQuantiles(len(pops), bits=bits)
    _stream(h, pops, rng)
    est, lo, hi = h.bounds(Q)
    assert h.memory_bytes == len(pops) * (1 << bits) * 8  # fixed, whatever the population
    rel = 2.0 ** -(bits - 9)
    for c, p in enumerate(pops[:-1]):
        exact = np.quantile(p.astype(np.float64), Q)
        tol = 1e-12 * np.abs(exact)  # lerp rounding
        assert np.all((lo[c] - tol <= exact) & (exact <= hi[c] + tol)), c  # the interval holds the truth
        assert np.all(np.abs(est[c] - exact) <= hi[c] - lo[c] + tol)
        # ... and the interval is as narrow as the docstring says: a relative width <= 2^-(bits-9)
        mag = np.maximum(np.abs(lo[c]), np.abs(hi[c]))
        assert np.all(hi[c] - lo[c] <= rel * mag + 1e-38), c
    np.testing.assert_array_equal(est[3], np.full(len(Q), 0.25))  # one value: exact
    assert np.isnan(est[4]).all()


def test_two_pass_refinement_equals_numpy_exactly():
    rng = np.random.default_rng(1)
    pops = _populations(rng)
    h = StreamingQuantiles(len(pops))
    _stream(h, pops, rng)
    coll = h.refinement(Q)
    assert 0 < coll.n_expected() < 0.2 * sum(map(len, pops))  # the second pass keeps a small part
    _stream(coll, pops, rng)
    got = coll.quantiles()
    for c, p in enumerate(pops[:-1]):
        np.testing.assert_array_equal(got[c], np.quantile(p.astype(np.float64), Q))
    assert np.isnan(got[4]).all()


def test_refinement_detects_a_different_second_pass():
    rng = np.random.default_rng(2)
    pops = _populations(rng)[:1]
    h = StreamingQuantiles(1)
    _stream(h, pops, rng)
    coll = h.refinement(Q)
    coll.add(pops[0][:1000], np.zeros(1000, int))
    with pytest.raises(RuntimeError, match="same population"):
        coll.quantiles()


def test_tail_thresholds_accept_histogram_populations():
    rng = np.random.default_rng(3)
    p = rng.normal(size=100_000).astype(np.float32)
    h = StreamingQuantiles(2)
    h.add(p, np.zeros(len(p), int))
    exact = tail_thresholds([p], DEFAULT_GRID)[0]
    streamed = tail_thresholds([h.population(0)], DEFAULT_GRID)[0]
    ranks = len(p) - tail_counts(len(p), DEFAULT_GRID)
    _, lo, hi = h.population(0).order_stat_bounds(ranks)
    assert np.all((lo <= exact) & (exact <= hi)) and np.all((lo <= streamed) & (streamed <= hi))
    np.testing.assert_array_equal(exact, np.sort(p.astype(np.float64))[ranks])
    np.testing.assert_allclose(streamed, exact, atol=2 ** -7 * np.abs(exact).max())
    assert len(h.population(0)) == 100_000 and len(h.population(1)) == 0
    with pytest.warns(UserWarning, match="empty"):
        assert np.isnan(tail_thresholds([h.population(1)], DEFAULT_GRID)).all()


def test_bad_input_is_named():
    h = StreamingQuantiles(2)
    with pytest.raises(ValueError, match="out of range"):
        h.add(np.ones(2, np.float32), np.array([0, 2]))
    with pytest.raises(FloatingPointError, match="non-finite"):
        h.add(np.array([np.nan], np.float32), np.array([0]))
    with pytest.raises(ValueError, match="bits"):
        StreamingQuantiles(1, bits=30)
    with pytest.raises(ValueError, match="quantile levels"):
        h.bounds([1.5])


@pytest.mark.filterwarnings("ignore:concept #")
def test_summary_streams_large_cal_populations_and_caches_them(tmp_path):
    from superactivators.concepts.supervised import learn_mean_concepts
    from superactivators.evaluate.detect import run_detection
    from superactivators.evaluate.scoring import ScoreSummary, summarise
    from superactivators.store.synth import SynthSpec, build_synthetic_store

    spec = SynthSpec(n_tokens=4000, dim=16, n_concepts=4, min_len=20, max_len=60, shard_tokens=600, layer=1)
    store = build_synthetic_store(tmp_path / "s", spec, batch_samples=8)
    cs = learn_mean_concepts(store, 1, list(range(4)))
    exact = summarise(store, cs, None)
    streamed = summarise(store, cs, None, max_cal_values=50)  # outgrown after the first cal shard
    assert isinstance(exact.cal_in_concept[0], np.ndarray)
    assert [len(p) for p in streamed.cal_in_concept] == [len(p) for p in exact.cal_in_concept]
    t_exact = tail_thresholds(exact.cal_in_concept, DEFAULT_GRID)
    t_stream = tail_thresholds(streamed.cal_in_concept, DEFAULT_GRID)
    has = np.array([len(p) > 0 for p in exact.cal_in_concept])
    assert has.sum() >= 2 and np.isnan(t_stream[~has]).all()  # a concept without cal tokens: no threshold
    bounds = [streamed.cal_in_concept[c].order_stat_bounds(len(p) - tail_counts(len(p), DEFAULT_GRID))
              for c, p in enumerate(exact.cal_in_concept) if len(p)]
    lo, hi = np.stack([b[1] for b in bounds]), np.stack([b[2] for b in bounds])
    t_exact, t_stream = t_exact[has], t_stream[has]
    tol = 1e-12 * np.abs(t_exact)
    assert np.all((lo - tol <= t_exact) & (t_exact <= hi + tol))
    assert np.all(np.abs(t_stream - t_exact) <= hi - lo + tol)
    # the cache file keeps the histogram: identical thresholds after a round trip
    streamed.save(tmp_path / "summary.npz")
    back = ScoreSummary.load(tmp_path / "summary.npz")
    np.testing.assert_array_equal(tail_thresholds(back.cal_in_concept, DEFAULT_GRID)[has], t_stream)
    exact.save(tmp_path / "exact.npz")
    np.testing.assert_array_equal(tail_thresholds(ScoreSummary.load(tmp_path / "exact.npz").cal_in_concept,
                                                  DEFAULT_GRID)[has], t_exact)
    res = {r.method: r for r in run_detection(back, store.labels, store.splits, methods=["superactivator"])}
    assert np.isfinite(res["superactivator"].threshold[has]).all()
