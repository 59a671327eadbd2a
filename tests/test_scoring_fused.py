"""The fused scoring pass (blocks of whole samples, concept-major) against the unfused one.

Tolerance: none. Every accumulator fed block by block must give the same bits as scoring the
whole shard with ``Scorer.__call__`` and reducing afterwards, and as direct per-sample loops
written here independently.
"""

import numpy as np
import pytest

from superactivators.concepts.supervised import ConceptSet
from superactivators.evaluate.scoring import (
    InConceptCollector,
    RandomTokenDraw,
    SampleReducer,
    Scorer,
    TopTokenCollector,
    sample_blocks,
    score_store,
    summarise,
)
from superactivators.store.synth import SynthSpec, build_synthetic_store
from superactivators.store.tokens import StoreInfo, StoreWriter


def test_sample_blocks_by_hand():
    # samples of 3, 4, 2, 9, 1 rows (bounds 0 3 7 9 18 19), GEMM blocks of 5 rows end at 5, 10, 15, 19:
    # the last sample boundary within each is 3, 9, 9 (the 9-row sample spans 10-15), 19
    cuts, sc = sample_blocks(np.array([0, 3, 7, 9, 18]), 19, 5)
    assert cuts.tolist() == [0, 3, 9, 19]
    assert sc.tolist() == [0, 1, 3, 5]
    cuts, sc = sample_blocks(np.array([0, 3, 7, 9, 18]), 19, 6)  # ends 6, 12, 18, 19
    assert cuts.tolist() == [0, 3, 9, 18, 19] and sc.tolist() == [0, 1, 3, 4, 5]
    cuts, sc = sample_blocks(np.array([0]), 5, 100)
    assert cuts.tolist() == [0, 5] and sc.tolist() == [0, 1]
    with pytest.raises(ValueError, match="row 0"):
        sample_blocks(np.array([2, 4]), 6, 3)


def _cs(scoring: str, d: int, c: int, seed: int) -> ConceptSet:
    rng = np.random.default_rng(seed)
    return ConceptSet("x", [f"c{i}" for i in range(c)], rng.normal(size=(c, d)).astype(np.float32),
                      rng.normal(size=c).astype(np.float32), scoring, 1, rng.normal(size=d).astype(np.float32), 2.5)


@pytest.fixture(scope="module")
def padded_store(tmp_path_factory):
    """Ragged samples (1-40 tokens) with padding-like invalid tokens, three shards."""
    rng = np.random.default_rng(7)
    lengths = rng.integers(1, 41, size=60)
    t = int(lengths.sum())
    x = rng.normal(size=(t, 8)).astype(np.float32) + 2.0
    valid = rng.random(t) > 0.2
    off = np.concatenate([[0], np.cumsum(lengths)])
    valid[off[:-1]] = True  # every sample keeps a valid token
    labels = (rng.random((60, 4)) < 0.4).astype(np.uint8)
    splits = rng.choice(np.array(["train", "cal", "test"]), size=60)
    info = StoreInfo(n_samples=60, dim=8, layers=[1], concepts=[f"c{i}" for i in range(4)], modality="image",
                     dtype="float32", model={"id": "x"})
    w = StoreWriter(tmp_path_factory.mktemp("padded"), info, labels, splits, shard_tokens=400)
    for i in range(60):
        sl = slice(off[i], off[i + 1])
        w.add({1: x[sl]}, {1: x[sl].mean(0, keepdims=True)}, lengths[i:i + 1], valid[sl])
    return w.close(), x, valid, off


class _Rows:
    """An accumulator without ``add_block``: it sees each shard's [t, C] activations (copied)."""

    def __init__(self):
        self.parts = []

    def add(self, shard, acts, ctx):
        self.parts.append(np.array(acts))


class _Blocks:
    """Records each block's extent and checks it against the store."""

    def __init__(self):
        self.blocks = []

    def add_block(self, blk, ctx):
        offs = ctx.store.offsets
        assert offs[blk.samples.start] == blk.tokens.start and offs[blk.samples.stop] == blk.tokens.stop
        assert blk.acts_t.flags.c_contiguous and blk.acts_t.shape[1] == blk.b - blk.a
        assert blk.starts[0] == 0 and len(blk.starts) == blk.i1 - blk.i0
        self.blocks.append((blk.tokens.start, blk.tokens.stop))


def _reference(store, cs, seed):
    """The unfused pass: whole-shard activations from Scorer.__call__, then the [t, C] paths."""
    red = SampleReducer(store.n_samples, len(cs.names), seed=seed)
    cal = store.splits == "cal"
    inc = InConceptCollector(cal, len(cs.names))
    draw = RandomTokenDraw(store.n_samples, len(cs.names), seed)
    from superactivators.evaluate.scoring import PassContext

    ctx = PassContext(store, np.arange(len(cs.names)))
    scorer = Scorer(cs)
    acts = []
    for shard in store.shards:
        a = scorer(store.tokens(cs.layer, shard))
        acts.append(a)
        for acc in (red, inc, draw):
            acc.add(shard, a, ctx)
    return red, inc, draw, np.concatenate(acts)


def _top_tokens_by_loops(acts, store, valid, delta, c):
    """Per positive cal sample, in sample order, its top ceil(delta% of valid) activations, high to low."""
    out = []
    for i in range(store.n_samples):
        if store.splits[i] != "cal" or not store.labels[i, c]:
            continue
        a, b = store.offsets[i], store.offsets[i + 1]
        v = acts[a:b, c][valid[a:b]]
        k = max(1, int(np.ceil(delta / 100 * len(v) - 1e-9)))
        out.append(np.sort(v)[::-1][:k])
    return np.concatenate(out) if out else np.empty(0, np.float32)


@pytest.mark.parametrize("scoring", ["cosine", "signed_distance"])
@pytest.mark.parametrize("block_rows", [16, 64, 8192])
def test_fused_pass_is_bit_identical_to_whole_shard_pass(padded_store, scoring, block_rows, monkeypatch):
    store, x, valid, off = padded_store
    monkeypatch.setattr(Scorer, "block_rows", block_rows)  # 16: most samples span a block of their own
    cs = _cs(scoring, 8, 4, seed=3)
    ref_red, ref_inc, ref_draw, acts = _reference(store, cs, seed=4)

    red = SampleReducer(store.n_samples, 4, seed=4)
    inc = InConceptCollector(store.splits == "cal", 4)
    draw = RandomTokenDraw(store.n_samples, 4, 4)
    top = TopTokenCollector(store.splits == "cal", store.labels, 25.0)
    rows, blocks = _Rows(), _Blocks()
    score_store(store, cs, [red, inc, draw, top, rows, blocks])

    np.testing.assert_array_equal(np.concatenate(rows.parts), acts)
    for k, v in red.scores().items():
        np.testing.assert_array_equal(v, ref_red.scores()[k], err_msg=k)
    for got, want in zip(inc.per_concept(), ref_inc.per_concept()):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(draw.random, ref_draw.random)
    for c, got in enumerate(top.per_concept()):
        np.testing.assert_array_equal(got, _top_tokens_by_loops(acts, store, valid, 25.0, c))
    # blocks tile the store in order, hold whole samples, and never exceed block_rows unless one sample does
    spans = np.array(blocks.blocks)
    assert spans[0, 0] == 0 and spans[-1, 1] == store.n_tokens and (spans[1:, 0] == spans[:-1, 1]).all()
    lengths = np.diff(off)
    for a, b in spans:  # at most one GEMM block plus the sample that straddles its start
        first = np.searchsorted(off, a)
        assert b - a <= block_rows + lengths[first]
    assert len(spans) >= len(store.shards)

    # and against direct per-sample loops, written here
    u = np.random.default_rng(4).random(store.n_samples)
    for i in range(store.n_samples):
        a = acts[off[i]:off[i + 1]][valid[off[i]:off[i + 1]]]
        assert (red.max[i] == a.max(0)).all()
        assert (red.last[i] == a[-1]).all()
        assert (red.random[i] == a[min(int(u[i] * len(a)), len(a) - 1)]).all()
        np.testing.assert_allclose(red.mean[i], a.mean(0), rtol=1e-5, atol=1e-6)
    assert lengths.max() > 16  # the fixture really has samples longer than the smallest block


def test_summarise_on_synthetic_store_equals_reference(tmp_path, monkeypatch):
    """The whole summary (every method's scores and populations) on a synthetic fp16 store."""
    spec = SynthSpec(n_tokens=6000, dim=32, n_concepts=6, min_len=20, max_len=90, shard_tokens=1500)
    store = build_synthetic_store(tmp_path / "s", spec, batch_samples=8)
    cs = _cs("cosine", 32, 6, seed=1)
    cs = ConceptSet(cs.kind, store.concepts, cs.vectors, cs.bias, "cosine", spec.layer, cs.center, cs.scale)
    monkeypatch.setattr(Scorer, "block_rows", 256)
    s = summarise(store, cs, None, seed=2, independent_random=True)
    ref_red, ref_inc, ref_draw, acts = _reference(store, cs, seed=2)
    for k in ("max_token", "mean_token", "last_token", "random_token", "rolling_max"):
        np.testing.assert_array_equal(s.sample_scores[k], ref_red.scores()[k], err_msg=k)
    for got, want in zip(s.cal_in_concept, ref_inc.per_concept()):
        np.testing.assert_array_equal(got, want)
    valid = np.ones(store.n_tokens, bool)
    for c in range(6):
        np.testing.assert_array_equal(s.populations["superactivator_sample"][c],
                                      _top_tokens_by_loops(acts, store, valid, 10.0, c))
        pos = store.labels[:, c].astype(bool) & (store.splits == "cal")
        np.testing.assert_array_equal(s.populations["random_token"][c], ref_draw.random[pos, c])
