"""Attribution maps on a tiny linear "ViT" against exact values, and the pipeline hook on a tiny BERT."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

pytest.importorskip("captum")

from superactivators.concepts.supervised import ConceptSet  # noqa: E402
from superactivators.localize.attribution import (  # noqa: E402
    ATTRIBUTIONS,
    AttributionOptions,
    ImageAdapter,
    _rise_masks,
    attribute,
    calibrate_maps,
    make_adapter,
    SubsetTruth,
)

D = 2  # hidden size
P = 4  # 2 x 2 patches of 2 x 2 pixels on a 3 x 4 x 4 image


class MixBlock(nn.Module):
    """h + the token mean: CLS at layer 1 sees every patch entering the block (Grad-CAM needs that)."""

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor]:
        return (h + h.mean(1, keepdim=True),)


class TinyLinearViT(nn.Module):
    """Layer 0: CLS = A . pixels, patch t = Pm . (its 12 pixels); layer 1 = MixBlock. Linear in pixels."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.A = nn.Parameter(torch.randn(48, D, generator=g))
        self.Pm = nn.Parameter(torch.randn(12, D, generator=g))
        self.layers = nn.ModuleList([MixBlock()])

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool = True):
        B = pixel_values.shape[0]
        cls = pixel_values.reshape(B, -1) @ self.A
        patches = pixel_values.reshape(B, 3, 2, 2, 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(B, P, 12) @ self.Pm
        h0 = torch.cat([cls[:, None], patches], 1)
        h1 = self.layers[0](h0)[0]
        return SimpleNamespace(hidden_states=(h0, h1))


@pytest.fixture()
def linear_setup():
    model = TinyLinearViT().eval()
    enc = SimpleNamespace(model=model, n_layers=1, global_token="cls", device=torch.device("cpu"), n_prefix=1,
                          patch_grid=[2, 2], patch_size=2, dtype=torch.float32, modality="image")
    w = np.array([[0.6, -0.8]], np.float32)  # unit vector: score = w . CLS_1
    cs = ConceptSet("linsep", ["c"], w, np.zeros(1, np.float32), "signed_distance", 1, np.zeros(D, np.float32), 1.0)
    adapter = make_adapter(enc, 1, cs)
    assert isinstance(adapter, ImageAdapter)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    # direct: the score is linear in the pixels, y = sum_i g_i x_i; its gradient g by autograd
    xg = x.clone().requires_grad_(True)
    adapter.forward(xg)[:, 0].sum().backward()
    g = xg.grad.detach()
    contrib = (g * x).sum(1).reshape(2, 2, 2, 2, 2).sum((2, 4)).reshape(2, P)  # per patch sum of g_i x_i
    return adapter, x, g, contrib, w, model


def test_integrated_gradients_and_occlusion_are_exact_on_a_linear_model(linear_setup) -> None:
    adapter, x, g, contrib, _, _ = linear_setup
    opts = AttributionOptions(ig_steps=8, batch_size=4)
    ig = attribute(adapter, "integrated_gradients", x, (), 0, opts)
    np.testing.assert_allclose(ig.detach().numpy(), contrib.numpy(), rtol=1e-4, atol=1e-5)
    occ = attribute(adapter, "occlusion", x, (), 0, opts)  # zeroing a patch removes its contribution
    np.testing.assert_allclose(occ.detach().numpy(), contrib.numpy(), rtol=1e-4, atol=1e-5)
    sal = attribute(adapter, "saliency", x, (), 0, opts)
    expect = g.abs().sum(1).reshape(2, 2, 2, 2, 2).sum((2, 4)).reshape(2, P)
    np.testing.assert_allclose(sal.detach().numpy(), expect.numpy(), rtol=1e-5)
    # completeness: the contributions add up to the score (the baseline scores 0)
    np.testing.assert_allclose(ig.sum(1).detach().numpy(), adapter.forward(x)[:, 0].detach().numpy(), rtol=1e-4)


def test_kernel_shap_recovers_the_linear_contributions(linear_setup) -> None:
    adapter, x, _, contrib, _, _ = linear_setup
    ks = attribute(adapter, "kernel_shap", x, (), 0, AttributionOptions(budget=200, batch_size=50))
    np.testing.assert_allclose(ks.detach().numpy(), contrib.numpy(), rtol=1e-3, atol=1e-3)
    lime = attribute(adapter, "lime", x, (), 0, AttributionOptions(budget=200, batch_size=50))
    assert lime.shape == (2, P) and torch.isfinite(lime).all()
    # LIME's lasso surrogate keeps the sign of the strongest contribution
    top = contrib.abs().argmax(1)
    assert (torch.sign(lime[torch.arange(2), top]) == torch.sign(contrib[torch.arange(2), top])).all()


def test_gradcam_on_token_grid_by_hand(linear_setup) -> None:
    adapter, x, _, _, w, model = linear_setup
    cam = attribute(adapter, "gradcam", x, (), 0, AttributionOptions())
    # dy/dA_t = w / (P + 1) for every patch token A_t entering the block: alpha = w / 5
    with torch.no_grad():
        A = model(x).hidden_states[0][:, 1:]  # [B, P, D]
    expect = torch.relu(A @ torch.from_numpy(w[0]) / (P + 1))
    np.testing.assert_allclose(cam.detach().numpy(), expect.numpy(), rtol=1e-5, atol=1e-6)
    assert adapter.grid is None  # the hook is removed afterwards
    assert torch.allclose(adapter.forward(x), adapter.forward(x))


def test_rise_against_a_direct_computation(linear_setup) -> None:
    adapter, x, _, contrib, _, _ = linear_setup
    opts = AttributionOptions(budget=40, batch_size=16, seed=5)
    r = attribute(adapter, "rise", x, (), 0, opts).detach().numpy()
    m = _rise_masks(40, 2, 2, np.random.default_rng(5))  # [n, P] in [0, 1]
    assert m.shape == (40, P) and (m >= 0).all() and (m <= 1).all() and m.std() > 0
    scores = m @ contrib.numpy().T  # linear: masked score = sum_t m_t contribution_t
    expect = (scores.T @ m) / m.sum(0)
    np.testing.assert_allclose(r, expect, rtol=1e-4, atol=1e-5)


def test_calibrate_maps_by_hand() -> None:
    # cal: one sample, maps [1, .8, .2], in-concept [T, T, F]; test: maps [.9, .5, .85], gt [T, F, F]
    cal_t = SubsetTruth([[np.array([1, 1, 0], bool)]], [[np.ones(3, bool)]])
    test_t = SubsetTruth([[np.array([1, 0, 0], bool)]], [[np.ones(3, bool)]])
    r = calibrate_maps([[np.array([1.0, 0.8, 0.2])]], cal_t, [[np.array([0.9, 0.5, 0.85])]], test_t, [50, 100],
                       "attr:x", ["c"])
    # N = 50: thr 0.9 -> {1.0}: F1 2/3; N = 100: thr 0.8 -> {1, .8}: F1 1
    assert r.n_pct[0] == 100 and r.threshold[0] == pytest.approx(0.8) and r.cal_f1[0] == pytest.approx(1.0)
    assert (r.test.tp[0], r.test.fp[0], r.test.fn[0]) == (1, 1, 0)


def test_unknown_method_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown attribution"):
        AttributionOptions(methods=["gradcam", "deeplift"])
    from superactivators.config import config_from_dict

    with pytest.raises(ValueError, match="localize.attributions"):
        config_from_dict({"localize": {"attributions": ["nope"]}})


def test_pipeline_attributions_on_text(small_emotions: Path, tiny_bert: Path, tmp_path: Path) -> None:
    from superactivators.config import config_from_dict
    from superactivators.localize.attribution import load_maps
    from superactivators.store.layout import StageFolder
    from superactivators.pipeline import run_pipeline

    cfg = config_from_dict({
        "name": "attr", "output_dir": str(tmp_path), "data": {"path": str(small_emotions)},
        "embed": {"model": str(tiny_bert), "layers": [1, 2], "batch_size": 32}, "concepts": {"types": ["linsep"]},
        "localize": {"attributions": list(ATTRIBUTIONS), "attribution_budget": 8, "attribution_samples": 3,
                     "ig_steps": 4, "batch_size": 4},
    })
    res = run_pipeline(cfg, progress=False)
    t = pd.read_csv(tmp_path / "attr" / "attribution_metrics.csv")
    assert {f"attr:{m}" for m in ATTRIBUTIONS} | {"superactivator", "twostage"} <= set(t["method"])
    assert len(set(t["layer"])) == 1  # one layer: the best SuperActivator cal localisation F1
    assert t[["precision", "recall", "f1", "iou"]].dropna().apply(lambda c: c.between(0, 1).all()).all()
    assert (t["seconds"].dropna() >= 0).all() and t["n_test_samples"].max() <= 3
    stage = next((tmp_path / "attr" / "stages").glob(f"L{int(t['layer'].iloc[0]):02d}_linsep_*"))
    maps = load_maps(StageFolder(stage).attribution_maps)
    store = res.store
    for (meth, c, i), m in maps["maps"].items():
        assert len(m) == store.lengths[maps["ids"][c][i]]  # one value per stored token
        if meth not in ("superactivator", "twostage"):
            assert np.nanmax(np.abs(m)) <= 1 + 1e-6  # normalised per sample
    again = run_pipeline(cfg, progress=False)  # cached: no model run, same table
    pd.testing.assert_frame_equal(again.attribution, res.attribution, check_dtype=False)

    from superactivators.report.html import build_report

    page = build_report(tmp_path / "attr", formats=("png",), n_examples=1, workers=1).read_text()
    assert "id='localization'" in page and "attr:integrated_gradients" in page and "twostage" in page
    assert page.count("<details") == len(maps["names"])  # one block of shaded-token maps per concept
    assert (tmp_path / "attr" / "report" / "figures" / "loc_bars_linsep.png").exists()


def test_pipeline_attributions_on_images_with_a_tiny_dinov2(tmp_path: Path) -> None:
    import warnings

    from transformers import Dinov2Config, Dinov2Model, ViTImageProcessorPil

    from superactivators.config import config_from_dict
    from superactivators.data.shapes import generate_shapes
    from superactivators.pipeline import run_pipeline

    generate_shapes(tmp_path / "shapes", n=40, seed=0, size=64)
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                             image_size=32, patch_size=8)).eval().save_pretrained(tmp_path / "dino")
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "dino")
    cfg = config_from_dict({
        "name": "img", "output_dir": str(tmp_path / "runs"), "score_device": "cpu",
        "data": {"path": str(tmp_path / "shapes"), "concepts": ["color::red", "shape::sphere"]},
        "embed": {"model": str(tmp_path / "dino"), "layers": [2], "batch_size": 16},
        "concepts": {"types": ["mean"]}, "detect": {"grid": [5, 10, 50]},
        "localize": {"attributions": list(ATTRIBUTIONS), "attribution_budget": 8, "attribution_samples": 2,
                     "ig_steps": 4, "batch_size": 4, "occlusion_window": 2},
    })
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = run_pipeline(cfg, progress=False)
    t = res.attribution
    assert {f"attr:{m}" for m in ATTRIBUTIONS} <= set(t["method"]) and set(t["layer"]) == {2}
    assert t[["f1", "iou"]].dropna().apply(lambda c: c.between(0, 1).all()).all()
    from superactivators.localize.attribution import load_maps
    from superactivators.store.layout import StageFolder

    maps = load_maps(StageFolder(next((tmp_path / "runs" / "img" / "stages").glob("L02_mean_*"))).attribution_maps)
    assert maps["maps"] and all(len(m) == 16 for m in maps["maps"].values())  # 4 x 4 patches

    from superactivators.report.html import build_report

    page = build_report(tmp_path / "runs" / "img", formats=("png",), n_examples=1, workers=1).read_text()
    assert "id='localization'" in page
    figs = tmp_path / "runs" / "img" / "report" / "figures"
    assert (figs / "loc_bars_mean.png").exists() and list(figs.glob("loc_maps_mean_*.png"))


def test_mean_token_target_is_the_mean_of_token_scores(linear_setup) -> None:
    adapter, x, _, _, w, model = linear_setup
    adapter.target = "mean_token"
    with torch.no_grad():
        h1 = model(x).hidden_states[1][:, 1:]  # patch tokens at layer 1
    np.testing.assert_allclose(adapter.forward(x)[:, 0].detach().numpy(), (h1 @ torch.from_numpy(w[0])).mean(1).numpy(),
                               rtol=1e-5)
    ig = attribute(adapter, "integrated_gradients", x, (), 0, AttributionOptions(ig_steps=4))
    np.testing.assert_allclose(ig.sum(1).detach().numpy(), adapter.forward(x)[:, 0].detach().numpy(), rtol=1e-4)
    with pytest.raises(ValueError, match="attribution target"):
        AttributionOptions(target="cls")


def test_captums_require_gradients_warning_is_silenced_where_raised(linear_setup) -> None:
    """captum warns "Input Tensor 0 did not already require gradients" for gradient methods on a
    plain input; attribute() keeps it from the user, and the warning filters are left as they were."""
    import warnings

    import captum.attr as ca

    adapter, x, _, _, _, _ = linear_setup
    with warnings.catch_warnings(record=True) as raw:  # the warning exists without the filter
        warnings.simplefilter("always")
        ca.Saliency(adapter.forward).attribute(x, target=0)
    assert any("did not already require gradients" in str(w.message) for w in raw)
    before = list(warnings.filters)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for method in ("saliency", "integrated_gradients"):
            attribute(adapter, method, x, (), 0, AttributionOptions(ig_steps=4, batch_size=4))
    assert not [w for w in seen if "require gradients" in str(w.message)]
    assert warnings.filters == before


def test_text_occlusion_ablates_each_real_token_once(tiny_bert: Path) -> None:
    """Occlusion of a padded batch: one ablation per valid token of each sample (no padding or
    special positions), each value the drop in score when that token alone becomes the pad
    embedding, checked against the sample run alone, unpadded."""
    from superactivators.encoders.base import EmbedConfig
    from superactivators.encoders.factory import make_encoder

    enc = make_encoder(EmbedConfig(model=str(tiny_bert), layers=[2], device="cpu", dtype="float32"), "text")
    rng = np.random.default_rng(0)
    w = rng.normal(size=(1, 32)).astype(np.float32)
    cs = ConceptSet("linsep", ["c"], w, np.zeros(1, np.float32), "signed_distance", 2, np.zeros(32, np.float32), 1.0)
    adapter = make_adapter(enc, 2, cs)
    texts = ["I am so grateful for this", "thanks"]
    x, extra = adapter.inputs(texts)
    n_valid = [int(v.sum()) for v in extra[1]]
    assert n_valid[0] > n_valid[1] >= 1 and x.shape[1] > n_valid[1] + 2  # the short one is padded
    seen: list[tuple[int, int]] = []  # (examples, sequence length) of every forward
    fwd = adapter.forward

    def counting(embeds, *args):
        seen.append((embeds.shape[0], embeds.shape[1]))
        return fwd(embeds, *args)

    adapter.forward = counting
    occ = attribute(adapter, "occlusion", x, extra, 0, AttributionOptions(methods=["occlusion"], batch_size=64))
    adapter.forward = fwd
    # per sample: the unablated input once, then one example per valid token, at its own length
    assert sorted(seen) == sorted([(1, n_valid[0] + 2), (n_valid[0], n_valid[0] + 2),
                                   (1, n_valid[1] + 2), (n_valid[1], n_valid[1] + 2)])
    for i, text in enumerate(texts):
        xi, ei = adapter.inputs([text])  # alone: no padding
        vi = ei[1][0]
        with torch.no_grad():
            full = float(adapter.forward(xi, *ei[:2])[0, 0])
            for j in np.flatnonzero(vi.cpu().numpy()):
                xo = xi.clone()
                xo[0, j] = ei[2][0, j]  # the pad token's embedding
                want = full - float(adapter.forward(xo, *ei[:2])[0, 0])
                assert abs(float(occ[i, j]) - want) < 1e-4
        assert torch.all(occ[i, ~extra[1][i]] == 0)  # special and padding positions: no value


def test_demos_run_the_gradient_attributions_unless_asked_for_all(tmp_path: Path) -> None:
    """The first command stays quick: perturbation attributions only with --attributions."""
    from superactivators.demo import image_demo_config, text_demo_config

    fast = {"integrated_gradients", "saliency", "gradcam"}
    assert set(text_demo_config(tmp_path).localize.attributions) == fast
    assert text_demo_config(tmp_path, perturbation=True).localize.attributions == list(ATTRIBUTIONS)
    data = str(tmp_path / "shapes")  # an existing dataset path: nothing is generated
    assert set(image_demo_config(tmp_path, [f"data.path={data}"]).localize.attributions) == fast
    assert image_demo_config(tmp_path, [f"data.path={data}"], perturbation=True).localize.attributions == \
        list(ATTRIBUTIONS)


def test_global_target_is_the_stored_global_for_a_mean_pooled_text_model(tiny_bert: Path) -> None:
    """The score an attribution explains is the score of the global embedding the store holds: with
    the mean rule, the mean over the stored tokens (special tokens such as [CLS] / [SEP] left out)."""
    from superactivators.encoders.base import EmbedConfig
    from superactivators.encoders.factory import make_encoder

    enc = make_encoder(EmbedConfig(model=str(tiny_bert), layers=[2], device="cpu", dtype="float32",
                                   global_token="mean"), "text")
    w = np.random.default_rng(1).normal(size=(1, 32)).astype(np.float32)
    cs = ConceptSet("linsep", ["c"], w, np.zeros(1, np.float32), "signed_distance", 2, np.zeros(32, np.float32), 1.0)
    adapter = make_adapter(enc, 2, cs)
    texts = ["I am so grateful for this", "thanks"]
    x, extra = adapter.inputs(texts)
    with torch.no_grad():
        explained = adapter.forward(x, *extra[:2])[:, 0].numpy()
        stored = adapter.score(torch.from_numpy(enc.encode_inputs(texts).globals[2]))[:, 0].numpy()
    np.testing.assert_allclose(explained, stored, rtol=1e-4, atol=1e-5)
