"""SuperActivatorDetector refuses malformed input at the edge, one line naming the argument (issue 23, item 6)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.exceptions import NotFittedError

from superactivators import SuperActivatorDetector

# four calibration samples, two concepts; concept 1 has no positive sample and no in-concept token
ACTS = np.array([[0.9, 0.3], [0.1, 0.2], [0.5, 0.7], [0.2, 0.1], [0.3, 0.6], [0.05, 0.4]], dtype=np.float32)
IDS = np.array([0, 0, 1, 1, 2, 3])
LABELS = np.array([[1, 0], [1, 0], [0, 0], [0, 0]])
GT = np.array([[1, 0], [1, 0], [1, 0], [1, 0], [0, 0], [0, 0]], dtype=bool)


def _fit(**kw) -> SuperActivatorDetector:
    with pytest.warns(UserWarning, match="empty calibration population"):
        return SuperActivatorDetector(grid=[25, 50, 100], **kw).fit(ACTS, IDS, LABELS, GT)


def test_threshold_is_the_kth_largest_not_a_linear_quantile_and_uncalibratable_is_nan():
    det = _fit()
    # concept 0: in-concept population [0.9, 0.1, 0.5, 0.2] (n = 4); N = 25, 50, 100 keep k = 1, 2, 4
    # -> 0.9, 0.5, 0.1 (a linear 50 % quantile would be 0.35). Sample maxima [0.9, 0.5, 0.3, 0.05],
    # labels [1, 1, 0, 0]: F1 2/3, 1, 0.8 -> N = 50, tau = 0.5
    np.testing.assert_allclose(det.threshold_grid_[0], [0.9, 0.5, 0.1], rtol=1e-6)
    assert det.n_pct_[0] == 50 and det.thresholds_[0] == pytest.approx(0.5)
    # concept 1 cannot be calibrated: NaN for N and tau, never detected, NaN decision
    assert np.isnan(det.n_pct_[1]) and np.isnan(det.thresholds_[1])
    assert not det.predict(ACTS, IDS)[:, 1].any() and not det.predict_tokens(ACTS)[:, 1].any()
    assert np.isnan(det.decision_function(ACTS, IDS)[:, 1]).all()
    grid_doc = SuperActivatorDetector.__doc__.split("method :")[0]
    # our rule is the k-th largest; "linear" appears only for the seed's rule (protocol='seed')
    assert "k``-th largest" in grid_doc and grid_doc.count("linear") == grid_doc.count("protocol='seed'") == 1
    free = SuperActivatorDetector(method="max_token@best_threshold").fit(ACTS, IDS, LABELS, GT)
    assert np.isnan(free.thresholds_[1]) and np.isnan(free.n_pct_[1])  # no positive sample: not +inf
    assert det.n_features_in_ == 2 and det.n_concepts_ == 2


def test_nan_on_a_valid_token_is_refused_and_on_padding_ignored():
    bad = ACTS.copy()
    bad[5, 0] = np.nan  # sample 3's only token: its max would be NaN, never detected
    with pytest.raises(ValueError, match=r"non-finite value\(s\) on valid tokens \(first at row 5, column 0\)"):
        SuperActivatorDetector(grid=[50]).fit(bad, IDS, LABELS, GT)
    det = _fit()
    with pytest.raises(ValueError, match="row 5"):
        det.predict(bad, IDS)
    with pytest.raises(ValueError, match="row 5"):
        det.predict_tokens(bad)
    # a padding token (valid False) may hold NaN or -inf: the answer equals the one without it
    pad = np.vstack([ACTS, [[np.nan, -np.inf]]]).astype(np.float32)
    ids = np.append(IDS, 3)
    valid = np.append(np.ones(len(IDS), bool), False)
    with pytest.warns(UserWarning):
        padded = SuperActivatorDetector(grid=[25, 50, 100]).fit(pad, ids, LABELS, np.vstack([GT, [[1, 1]]]), valid)
    np.testing.assert_array_equal(padded.thresholds_, det.thresholds_)
    np.testing.assert_array_equal(padded.predict(pad, ids, valid), det.predict(ACTS, IDS))
    assert not padded.predict_tokens(pad, valid)[-1].any()


def test_shapes_are_checked_against_each_other():
    det = _fit()
    with pytest.raises(ValueError, match="X has 1 features .* fitted with 2 features"):
        det.predict_tokens(ACTS[:, :1])
    with pytest.raises(ValueError, match="X has 1 features"):
        det.predict(ACTS[:, :1], IDS)
    short = LABELS[:3]
    for call in (det.score, det.evaluate, det.confusion):
        with pytest.raises(ValueError, match=r"sample id 3 but only 3 samples \(rows of sample_labels\)"):
            call(ACTS, IDS, short)
        with pytest.raises(ValueError, match="sample 4 has no tokens"):  # 5 label rows, tokens of 4 samples
            call(ACTS, IDS, np.zeros((5, 2)))
        with pytest.raises(ValueError, match="one token per sample.* 4 token rows and 3 samples"):
            call(ACTS[:4], None, short)
    with pytest.raises(ValueError, match="sample_labels have 1 concept columns"):
        det.score(ACTS, IDS, LABELS[:, :1])
    with pytest.raises(ValueError, match="valid has 5 entries but there are 6 token rows"):
        det.predict(ACTS, IDS, valid=np.ones(5, bool))
    with pytest.raises(ValueError, match="valid has 5 entries"):
        det.predict_tokens(ACTS, valid=np.ones(5, bool))
    with pytest.raises(ValueError, match=r"token_labels have shape \(6, 1\), activations \(6, 2\)"):
        SuperActivatorDetector().fit(ACTS, IDS, LABELS, GT[:, :1])
    with pytest.raises(ValueError, match="no token rows"):
        SuperActivatorDetector().fit(np.empty((0, 2)), None, np.empty((0, 2)))


@pytest.mark.parametrize("call", ["predict", "predict_tokens", "decision_function", "sample_scores", "score",
                                  "evaluate", "confusion"])
def test_unfitted_detector_raises_not_fitted(call):
    det = SuperActivatorDetector()
    args = {"predict_tokens": (ACTS,), "score": (ACTS, IDS, LABELS), "evaluate": (ACTS, IDS, LABELS),
            "confusion": (ACTS, IDS, LABELS)}.get(call, (ACTS, IDS))
    with pytest.raises(NotFittedError):
        getattr(det, call)(*args)


@pytest.mark.parametrize("bad", [[[0, 2]] * 6, [[0, np.nan]] * 6, [[0, -1]] * 6])
def test_token_labels_must_be_zero_one(bad):
    with pytest.raises(ValueError, match="token_labels must be 0/1"):
        SuperActivatorDetector().fit(ACTS, IDS, LABELS, np.array(bad, dtype=float))


def test_valid_and_sample_labels_must_be_zero_one():
    with pytest.raises(ValueError, match="valid must be 0/1"):
        SuperActivatorDetector().fit(ACTS, IDS, LABELS, GT, valid=np.full(6, 2))
    with pytest.raises(ValueError, match="sample_labels must be 0/1"):
        SuperActivatorDetector().fit(ACTS, IDS, np.where(LABELS == 1, 2, 0), GT)
    with pytest.raises(ValueError, match="sample_labels must be 0/1"):
        SuperActivatorDetector().fit(ACTS, IDS, np.full((4, 2), np.nan), GT)


def test_complex_non_numeric_and_sparse_input_are_refused():
    with pytest.raises(TypeError, match="token_activations: complex dtype"):
        SuperActivatorDetector().fit(ACTS + 1j, IDS, LABELS, GT)
    with pytest.raises(TypeError, match="token_activations: complex dtype"):
        SuperActivatorDetector().fit(torch.from_numpy(ACTS).to(torch.complex64), IDS, LABELS, GT)
    with pytest.raises(TypeError, match="sample_labels: complex dtype"):
        SuperActivatorDetector().fit(ACTS, IDS, LABELS + 0j, GT)
    with pytest.raises(TypeError, match="token_activations: dtype <U3 is not numeric"):
        SuperActivatorDetector().fit(ACTS.astype(str).astype("<U3"), IDS, LABELS, GT)
    with pytest.raises(TypeError, match="token_activations: sparse input"):
        SuperActivatorDetector().fit(sp.csr_matrix(ACTS), IDS, LABELS, GT)
    with pytest.raises(TypeError, match="token_activations: sparse input"):
        SuperActivatorDetector().fit(torch.from_numpy(ACTS).to_sparse(), IDS, LABELS, GT)
    with pytest.raises(TypeError, match="concept_vectors: complex dtype"):
        SuperActivatorDetector(concept_vectors=np.ones((2, 3)) * 1j).fit(np.ones((6, 3)), IDS, LABELS, GT)
    with pytest.raises(TypeError, match="sample_labels: sparse input"):
        SuperActivatorDetector().fit(ACTS, IDS, sp.csr_matrix(LABELS), GT)
    det = _fit()
    with pytest.raises(TypeError, match="sparse input"):
        det.predict(sp.csr_matrix(ACTS), IDS)
    with pytest.raises(TypeError, match="complex dtype"):
        det.predict_tokens(ACTS + 0j)


@pytest.mark.parametrize("grid", [(), [], (float("nan"),), (0,), (101,), (-5, 10), (10, float("inf")), (True,),
                                  "10", None, ("10",)])
def test_grid_must_be_a_non_empty_finite_sequence_within_0_100(grid):
    with pytest.raises(ValueError, match="grid"):
        SuperActivatorDetector(grid=grid).fit(ACTS, IDS, LABELS, GT)


def test_sklearn_parameter_checks_that_apply():
    """``check_estimator`` as a whole assumes fit(X, y); these of its checks do not and pass."""
    from sklearn.utils.estimator_checks import (
        check_get_params_invariance,
        check_no_attributes_set_in_init,
        check_parameters_default_constructible,
        check_set_params,
    )

    name = "SuperActivatorDetector"
    for check in (check_no_attributes_set_in_init, check_get_params_invariance, check_set_params,
                  check_parameters_default_constructible):
        check(name, SuperActivatorDetector())
