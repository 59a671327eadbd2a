"""SuperActivatorDetector: hand-computed thresholds, the pipeline's own numbers, clone, torch input."""

import pickle
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from superactivators import SuperActivatorDetector
from superactivators.concepts.supervised import ConceptSet
from superactivators.evaluate.methods import MACRO
from superactivators.evaluate.estimator import (as_numpy, sample_offsets, store_activations,
                                                token_labels_from_spans, tokens_from_padded)
from superactivators.evaluate.scoring import score_globals
from superactivators.store.runs import find_stages, find_store

# four calibration samples, one concept: tokens, sample of each token, in-concept tokens
ACTS = np.array([0.1, 0.9, 0.3, 0.4, 0.2, 0.8, 0.5, 0.1], dtype=np.float32)[:, None]
IDS = np.array([0, 0, 0, 1, 1, 2, 2, 3])
LABELS = np.array([1, 0, 1, 0])[:, None]
GT = np.array([0, 1, 1, 0, 0, 1, 0, 0], dtype=bool)[:, None]


def test_superactivator_thresholds_by_hand():
    det = SuperActivatorDetector(grid=[20, 60]).fit(ACTS, IDS, LABELS, GT)
    # in-concept population [0.3, 0.8, 0.9]: N=20 keeps ceil(0.6) = 1 -> 0.9; N=60 keeps ceil(1.8) = 2 -> 0.8
    np.testing.assert_allclose(det.threshold_grid_[0], [0.9, 0.8], rtol=1e-6)
    # max per sample [.9, .4, .8, .1]: tau .9 -> [1,0,0,0] F1 2/3; tau .8 -> [1,0,1,0] F1 1
    np.testing.assert_allclose(det.cal_f1_curve_[0], [2 / 3, 1.0])
    assert det.n_pct_[0] == 60 and det.thresholds_[0] == pytest.approx(0.8) and det.cal_f1_[0] == 1.0
    np.testing.assert_array_equal(det.predict(ACTS, IDS)[:, 0], [True, False, True, False])
    np.testing.assert_allclose(det.decision_function(ACTS, IDS)[:, 0], np.array([0.9, 0.4, 0.8, 0.1]) - 0.8, atol=1e-6)
    # SuperActivators: tokens reaching 0.8 are rows 1 (0.9) and 5 (0.8)
    np.testing.assert_array_equal(np.flatnonzero(det.predict_tokens(ACTS)[:, 0]), [1, 5])
    assert det.score(ACTS, IDS, LABELS) == 1.0
    # new samples: [0.85, 0.2] yes, [0.79] no (label 1: a false negative), [0.81] yes (label 0: false positive)
    new = np.array([0.85, 0.2, 0.79, 0.81], np.float32)[:, None]
    conf = det.confusion(new, [0, 0, 1, 2], [[1], [1], [0]])
    assert (conf.tp[0], conf.fn[0], conf.fp[0], conf.tn[0]) == (1, 1, 1, 0)
    assert det.score(new, [0, 0, 1, 2], [[1], [1], [0]]) == pytest.approx(0.5)


def test_baselines_by_hand():
    # mean per sample [1.3/3, .3, .65, .1]; positives' means [.4333, .65]: N=50 keeps ceil(1.0) = 1 -> .65
    det = SuperActivatorDetector(grid=[50], method="mean_token").fit(ACTS, IDS, LABELS)
    assert det.thresholds_[0] == pytest.approx(0.65, rel=1e-6)
    last = SuperActivatorDetector(grid=[50], method="last_token").fit(ACTS, IDS, LABELS)
    np.testing.assert_allclose(last.sample_scores(ACTS, IDS)[:, 0], [0.3, 0.2, 0.5, 0.1])
    assert last.thresholds_[0] == pytest.approx(0.5)  # the larger of positives' last tokens .3, .5
    free = SuperActivatorDetector(method="max_token@best_threshold").fit(ACTS, IDS, LABELS)
    assert free.thresholds_[0] == pytest.approx(0.8) and free.cal_f1_[0] == 1.0 and np.isnan(free.n_pct_[0])
    glob = SuperActivatorDetector(grid=[50], method="global").fit(np.array([[0.2], [0.9], [0.6], [0.1]]), None, LABELS)
    assert glob.thresholds_[0] == pytest.approx(0.6)  # positives' global scores .2, .6: the top 1
    rnd = SuperActivatorDetector(method="random_token", random_state=3).fit(ACTS, IDS, LABELS)
    s = rnd.sample_scores(ACTS, IDS)[:, 0]
    for i in range(4):  # each sample's score is one of its own tokens
        assert s[i] in ACTS[IDS == i, 0]
    np.testing.assert_array_equal(s, clone(rnd).fit(ACTS, IDS, LABELS).sample_scores(ACTS, IDS)[:, 0])


def test_sample_labels_only_warns_and_uses_every_token_of_positives():
    with pytest.warns(UserWarning, match="weak regime"):
        det = SuperActivatorDetector(grid=[50]).fit(ACTS, IDS, LABELS)
    # population: all tokens of samples 0 and 2: [.1 .9 .3 .8 .5] -> median .5
    assert det.thresholds_[0] == pytest.approx(0.5)


def test_padding_tokens_never_count():
    valid = np.ones(len(ACTS), bool)
    valid[1] = False  # the 0.9 of sample 0 is padding
    det = SuperActivatorDetector(grid=[50]).fit(ACTS, IDS, LABELS, GT, valid=valid)
    assert det.thresholds_[0] == pytest.approx(0.8)  # population [.3, .8]: N=50 keeps the top 1
    np.testing.assert_allclose(det.sample_scores(ACTS, IDS, valid=valid)[:, 0], [0.3, 0.4, 0.8, 0.1])
    assert not det.predict_tokens(ACTS, valid=valid)[1, 0]


def test_offsets_ids_and_unsorted_ids_agree():
    ref = SuperActivatorDetector(grid=[20, 60]).fit(ACTS, IDS, LABELS, GT)
    offs = SuperActivatorDetector(grid=[20, 60]).fit(ACTS, [0, 3, 5, 7, 8], LABELS, GT)
    perm = np.random.default_rng(0).permutation(len(ACTS))
    shuf = SuperActivatorDetector(grid=[20, 60]).fit(ACTS[perm], IDS[perm], LABELS, GT[perm])
    for d in (offs, shuf):
        np.testing.assert_array_equal(d.threshold_grid_, ref.threshold_grid_)
        np.testing.assert_array_equal(d.predict(ACTS, IDS), ref.predict(ACTS, IDS))
    np.testing.assert_array_equal(shuf.predict(ACTS[perm], IDS[perm]), ref.predict(ACTS, IDS))
    np.testing.assert_array_equal(sample_offsets(IDS, 8)[0], [0, 3, 5, 7, 8])
    lists = SuperActivatorDetector(grid=[20, 60]).fit(ACTS.tolist(), IDS.tolist(), LABELS.tolist(), GT.tolist())
    np.testing.assert_array_equal(lists.threshold_grid_, ref.threshold_grid_)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="sample 1 has no tokens"):
        SuperActivatorDetector().fit(ACTS[:3], [0, 0, 2], [[1], [0], [1]], GT[:3])
    with pytest.raises(ValueError, match="4 entries: neither one per token"):
        SuperActivatorDetector().fit(ACTS, [0, 1, 2, 3], LABELS, GT)
    with pytest.raises(ValueError, match="2 concept columns"):
        SuperActivatorDetector().fit(ACTS, IDS, np.ones((4, 2)), GT)
    with pytest.raises(ValueError, match="token_labels have shape"):
        SuperActivatorDetector().fit(ACTS, IDS, LABELS, GT[:4])
    with pytest.raises(ValueError, match="unknown method"):
        SuperActivatorDetector(method="cls").fit(ACTS, IDS, LABELS, GT)
    with pytest.raises(ValueError, match="one activation row per sample"):
        SuperActivatorDetector(method="global").fit(ACTS, IDS, LABELS)
    with pytest.raises(ValueError, match="0/1"):
        SuperActivatorDetector().fit(ACTS, IDS, [[2], [0], [1], [0]], GT)
    with pytest.raises(NotFittedError):
        SuperActivatorDetector().predict(ACTS, IDS)
    det = SuperActivatorDetector(method="mean_token").fit(ACTS, IDS, LABELS)
    with pytest.raises(ValueError, match="token-level threshold"):
        det.predict_tokens(ACTS)


def test_clone_round_trip_and_params():
    det = SuperActivatorDetector(grid=(5, 50), method="last_token", concept_names=["c"], random_state=7)
    params = det.get_params()
    assert params == {"grid": (5, 50), "method": "last_token", "concept_vectors": None, "scoring": "cosine",
                      "bias": None, "center": None, "scale": 1.0, "concept_names": ["c"], "random_state": 7,
                      "protocol": "ours", "calibration": "tail", "fpr_target": 0.01}
    det.fit(ACTS, IDS, LABELS)
    twin = clone(det)
    assert twin.get_params() == params and not hasattr(twin, "thresholds_")
    np.testing.assert_array_equal(twin.fit(ACTS, IDS, LABELS).thresholds_, det.thresholds_)
    assert twin.set_params(method="superactivator", grid=[20, 60]) is twin
    assert twin.fit(ACTS, IDS, LABELS, GT).thresholds_[0] == pytest.approx(0.8)
    back = pickle.loads(pickle.dumps(det))
    np.testing.assert_array_equal(back.predict(ACTS, IDS), det.predict(ACTS, IDS))
    assert det.concept_names_ == ["c"] and "last_token" in repr(det)
    # a ConceptSet parameter clones too (deep copy), and so does a tensor
    V = torch.randn(2, 4)
    c2 = clone(SuperActivatorDetector(concept_vectors=V))
    assert torch.equal(c2.concept_vectors, V) and c2.concept_vectors is not V


def _random_problem(seed=0, n=40, C=3, d=16):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 9, n)
    ids = np.repeat(np.arange(n), lengths)
    X = rng.normal(size=(len(ids), d)).astype(np.float32)
    V = rng.normal(size=(C, d)).astype(np.float32)
    y = rng.integers(0, 2, (n, C))
    gt = (y[ids] == 1) & (rng.random((len(ids), C)) < 0.4)
    return X, V, ids, y, gt


@pytest.mark.parametrize("method", ["superactivator", "mean_token", "random_token", "max_token@best_threshold"])
def test_torch_input_equals_numpy(method):
    X, V, ids, y, gt = _random_problem()
    A = X @ V.T
    ref = SuperActivatorDetector(grid=[5, 20, 50], method=method).fit(A, ids, y, gt)
    tA, tids, ty, tgt = torch.from_numpy(A), torch.from_numpy(ids), torch.from_numpy(y), torch.from_numpy(gt)
    got = SuperActivatorDetector(grid=[5, 20, 50], method=method).fit(tA, tids, ty, tgt)
    np.testing.assert_array_equal(got.thresholds_, ref.thresholds_)
    np.testing.assert_array_equal(got.predict(tA, tids), ref.predict(A, ids))
    np.testing.assert_array_equal(got.decision_function(tA, tids), ref.decision_function(A, ids))
    assert got.score(tA, tids, ty) == ref.score(A, ids, y)


def test_no_copies_for_cpu_tensors_and_arrays():
    A = np.random.default_rng(0).normal(size=(10, 2)).astype(np.float32)
    t = torch.from_numpy(A)
    assert np.shares_memory(as_numpy(t, "x", float_out=True), A)
    assert np.shares_memory(as_numpy(A, "x", float_out=True), A)
    assert as_numpy(t.half(), "x", float_out=True).dtype == np.float32  # widened for the quantiles


def test_embeddings_with_concept_vectors_equal_activations():
    X, V, ids, y, gt = _random_problem(1)
    cos = (X @ V.T) / (np.linalg.norm(X, axis=1, keepdims=True) * np.linalg.norm(V, axis=1))
    ref = SuperActivatorDetector(grid=[5, 20, 50]).fit(cos, ids, y, gt)
    emb = SuperActivatorDetector(grid=[5, 20, 50], concept_vectors=V).fit(X, ids, y, gt)
    np.testing.assert_allclose(emb.thresholds_, ref.thresholds_, rtol=1e-5)
    np.testing.assert_array_equal(emb.predict(torch.from_numpy(X), ids), ref.predict(cos, ids))
    np.testing.assert_array_equal(emb.predict_tokens(X), ref.predict_tokens(cos))
    b = np.array([0.5, -1.0, 0.0], np.float32)
    sd = SuperActivatorDetector(grid=[5, 20, 50], concept_vectors=torch.from_numpy(V), bias=b,
                                scoring="signed_distance").fit(torch.from_numpy(X), ids, y, gt)
    want = SuperActivatorDetector(grid=[5, 20, 50]).fit((X @ V.T + b) / np.linalg.norm(V, axis=1), ids, y, gt)
    np.testing.assert_allclose(sd.thresholds_, want.thresholds_, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"token embeddings must be \[T, 16\]"):
        emb.predict(X[:, :8], ids)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_tensors_equal_numpy():
    X, V, ids, y, gt = _random_problem(2)
    A = X @ V.T
    ref = SuperActivatorDetector(grid=[5, 20, 50]).fit(A, ids, y, gt)
    dev = torch.device("cuda")
    got = SuperActivatorDetector(grid=[5, 20, 50]).fit(torch.from_numpy(A).to(dev), torch.from_numpy(ids).to(dev),
                                                       torch.from_numpy(y).to(dev), torch.from_numpy(gt).to(dev))
    np.testing.assert_array_equal(got.thresholds_, ref.thresholds_)
    emb = SuperActivatorDetector(grid=[5, 20, 50], concept_vectors=torch.from_numpy(V).to(dev))
    emb.fit(torch.from_numpy(X).to(dev), ids, y, gt)
    cos = SuperActivatorDetector(grid=[5, 20, 50], concept_vectors=V).fit(X, ids, y, gt)
    np.testing.assert_allclose(emb.thresholds_, cos.thresholds_, rtol=1e-4, atol=1e-6)


def test_tokens_from_padded_and_spans():
    h = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2)
    m = torch.tensor([[1, 1, 0], [1, 0, 0]])
    toks, sid = tokens_from_padded(h, m)
    assert toks.tolist() == [[0, 1], [2, 3], [6, 7]] and sid.tolist() == [0, 0, 1]
    tn, sn = tokens_from_padded(h.numpy(), m.numpy())
    np.testing.assert_array_equal(tn, toks.numpy())
    np.testing.assert_array_equal(sn, sid.numpy())
    # tokens "I am" | "so glad": spans of concept "joy" over "glad" (chars 3..7)
    spans = np.array([[0, 1], [2, 4], [0, 2], [3, 7]])
    gt = token_labels_from_spans(spans, [0, 0, 1, 1], [{}, {"joy": [(3, 7)]}], ["joy", "fear"])
    np.testing.assert_array_equal(gt, [[0, 0], [0, 0], [0, 0], [1, 0]])


# --- the pipeline's own numbers -------------------------------------------------------------

@pytest.mark.parametrize("ctype", ["mean", "linsep"])
def test_estimator_reproduces_the_run(tiny_report_run, ctype):
    run_dir = tiny_report_run.run_dir
    table = pd.read_csv(run_dir / "detection_metrics.csv")
    store = find_store(run_dir)
    layer = 1
    stage = next(s.path for s in find_stages(run_dir) if s.layer == layer and s.concept_type == ctype)
    cs = ConceptSet.load(stage / "concepts")
    grid = [2, 5, 10, 20, 50, 90]  # the run's detect.grid
    cal, test = store_activations(store, cs, "cal"), store_activations(store, cs, "test")
    rows = table[(table.layer == layer) & (table.concept_type == ctype)]

    def check(det, method, test_acts, test_index):
        got = det.evaluate(test_acts, test_index, test.labels)
        want = rows[rows.method == method].set_index("concept").loc[[*cs.names, MACRO]]
        got = got.set_index("concept").loc[[*cs.names, MACRO]]
        np.testing.assert_allclose(got.threshold[:-1], want.threshold[:-1], rtol=1e-9)
        np.testing.assert_array_equal(got.n_pct[:-1], want.n_pct[:-1])
        np.testing.assert_allclose(got.cal_f1, want.cal_f1, rtol=1e-9)
        for col in ("tp", "fp", "fn", "tn"):
            np.testing.assert_array_equal(got[col][:-1].astype(int), want[col][:-1].astype(int))
        np.testing.assert_allclose(got.f1, want.f1, rtol=1e-9)
        assert det.score(test_acts, test_index, test.labels) == pytest.approx(want.f1[MACRO], rel=1e-12)

    for method in ("superactivator", "max_token", "mean_token", "last_token", "mean_token@best_threshold"):
        det = SuperActivatorDetector(grid=grid, method=method, concept_names=cs.names)
        det.fit(cal.activations, cal.sample_index, cal.labels, cal.token_labels, valid=cal.valid)
        check(det, method, test.activations, test.sample_index)
    # raw hidden states + the run's ConceptSet: the estimator scores them itself, same numbers
    X = np.concatenate([store.tokens(layer, s) for s in store.shards])
    tok_cal = np.isin(store.sample_of_token, cal.samples)
    tok_test = np.isin(store.sample_of_token, test.samples)
    det = SuperActivatorDetector(grid=grid, concept_vectors=cs)
    det.fit(torch.from_numpy(np.ascontiguousarray(X[tok_cal])), cal.sample_index, cal.labels, cal.token_labels)
    check(det, "superactivator", X[tok_test], test.sample_index)
    # the global baseline on the run's global concepts: one row per sample
    gcs = ConceptSet.load(stage / "global_concepts")
    g = score_globals(store, gcs)
    det = SuperActivatorDetector(grid=grid, method="global", concept_names=cs.names)
    det.fit(g[cal.samples], None, cal.labels)
    check(det, "global", g[test.samples], None)


def test_estimator_exported_lazily():
    import superactivators

    assert "SuperActivatorDetector" in dir(superactivators)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert superactivators.SuperActivatorDetector is SuperActivatorDetector
