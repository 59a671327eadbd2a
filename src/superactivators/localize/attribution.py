"""Attribution baselines for localisation: which patches / tokens explain the concept's score.

Every method explains the same scalar per (sample, concept): the concept's own score of the
sample's **global embedding** at the stage's layer (the CLS / pooled / mean token, scored by
the concept's vector exactly as its tokens are: cosine for mean / k-means concepts, signed
distance for separators). Methods (captum, except RISE):

- ``integrated_gradients``: :class:`captum.attr.IntegratedGradients` from a baseline input
  (black = normalised zero for images, the pad token's embedding for text), ``ig_steps`` steps;
- ``saliency``: :class:`captum.attr.Saliency` (absolute input gradient);
- ``gradcam``: :class:`captum.attr.LayerGradCam` on the tokens entering block ``L`` (the output
  of block ``L - 1``), viewed as a ``[d, rows, cols]`` feature map (text: ``[d, T, 1]``), so
  channel weights are token-averaged gradients, as Grad-CAM averages over space;
- ``occlusion``: :class:`captum.attr.Occlusion`, one window per patch (``occlusion_window``
  patches square) or per token, replaced by the baseline;
- ``lime`` / ``kernel_shap``: :class:`captum.attr.Lime` / :class:`captum.attr.KernelShap` with
  one interpretable feature per patch / token, ``budget`` perturbed samples each;
- ``rise``: RISE (Petsiuk et al. 2018), own code: ``budget`` random low-resolution binary masks
  (keep probability 0.5, bilinearly upsampled with a random shift, seeded), saliency = the
  mask-weighted mean of the masked inputs' scores.

Pixel attributions are summed over channels and the pixels of each patch; embedding
attributions over the hidden dimension. Each map is divided by its largest absolute value over
the sample's valid tokens, then thresholded like the activation methods: candidates are the
``(1 - N/100)`` quantiles of the in-concept ``cal`` tokens' map values, N chosen by ``cal``
token F1. Maps are computed for the samples the SuperActivator detector flags (up to
``max_samples`` per concept and split, seeded), and every method is scored on exactly those
test samples (:func:`attribution_stage`).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..concepts.supervised import ConceptSet
from ..encoders.capture import LayerTap
from ..encoders.pooling import pool_global
from ..evaluate.calibrate import tail_thresholds
from ..evaluate.methods import LOC_SUPERACTIVATOR, LOC_TWOSTAGE, MACRO, SA, short_label
from ..evaluate.metrics import Confusion
from ..evaluate.scoring import make_scorer
from ..store.layout import StageFolder
from ..store.tokens import TokenStore
from ..util.io import atomic_save_npz, atomic_write_bytes, stable_hash
from ..util.tables import read_table
from .options import ATTRIBUTIONS, TARGETS, LocalizeConfig
from .tokens import LocMethodResult, _f1, localization_grid, localization_table, twostage_scores
from ..util.console import frame_text



@dataclass
class AttributionOptions:
    """Which attribution methods, and their budgets."""

    methods: list[str] = field(default_factory=lambda: list(ATTRIBUTIONS))
    # defaults: the run config's (LocalizeConfig), the one place they are written
    budget: int = LocalizeConfig.attribution_budget  # perturbed samples per (sample, concept): lime / kernel_shap / rise
    ig_steps: int = LocalizeConfig.ig_steps
    max_samples: int = LocalizeConfig.attribution_samples  # detected samples per concept and split (cal, test)
    batch_size: int = LocalizeConfig.batch_size
    occlusion_window: int = LocalizeConfig.occlusion_window  # patches per side of an image occlusion window
    seed: int = 0
    target: str = LocalizeConfig.attribution_target  # or "mean_token" (see make_adapter)

    @classmethod
    def from_config(cls, lc: LocalizeConfig, seed: int) -> "AttributionOptions":
        """The options of a run's ``localize`` section."""
        return cls(methods=list(lc.attributions), budget=lc.attribution_budget, ig_steps=lc.ig_steps,
                   max_samples=lc.attribution_samples, batch_size=lc.batch_size,
                   occlusion_window=lc.occlusion_window, seed=seed, target=lc.attribution_target)

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"attribution target must be one of {list(TARGETS)}, got {self.target!r}")
        bad = [m for m in self.methods if m not in ATTRIBUTIONS]
        if bad:
            raise ValueError(f"unknown attribution method(s) {bad}; choose from {list(ATTRIBUTIONS)}")
        for k in ("budget", "ig_steps", "max_samples", "batch_size", "occlusion_window"):
            if int(getattr(self, k)) < 1:
                raise ValueError(f"localize attribution option {k} must be >= 1, got {getattr(self, k)}")


# ------------------------------------------------------------------------------ concept score
class ConceptScore(nn.Module):
    """Differentiable concept scores ``[B, C]`` of raw hidden states ``[B, d]`` (a ConceptSet's rule)."""

    def __init__(self, cs: ConceptSet):
        super().__init__()
        if cs.scoring not in ("cosine", "signed_distance"):
            raise ValueError(f"attributions need cosine or signed-distance concepts, not {cs.scoring!r}")
        V = torch.from_numpy(np.asarray(cs.vectors, dtype=np.float32))
        self.register_buffer("center", torch.from_numpy(np.asarray(cs.center, dtype=np.float32)))
        self.register_buffer("W", V / V.norm(dim=1, keepdim=True).clamp_min(1e-12))
        self.register_buffer("b", torch.from_numpy(np.asarray(cs.bias, dtype=np.float32)) / V.norm(dim=1).clamp_min(1e-12))
        self.cosine = cs.scoring == "cosine"
        self.scale = float(cs.scale)

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        x = g.float() - self.center
        if self.cosine:
            return (x @ self.W.T) / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return (x / self.scale) @ self.W.T + self.b


class _GridView(nn.Module):
    """Identity on values: tokens ``[B, P, d]`` as a feature map ``[B, d, rows, cols]`` (Grad-CAM's layer)."""

    def __init__(self, rows: int, cols: int):
        super().__init__()
        self.rows, self.cols = rows, cols

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        B, P, d = tokens.shape
        return tokens.transpose(1, 2).reshape(B, d, self.rows, self.cols)


def _find_blocks(model: nn.Module, n_layers: int) -> nn.ModuleList:
    """The transformer's block list: the first ModuleList of ``n_layers`` modules."""
    for _, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) == n_layers:
            return m
    raise LookupError(f"no list of {n_layers} blocks in {type(model).__name__}")


# ------------------------------------------------------------------------------ model adapters
class _Adapter:
    """A model cut at one layer: inputs -> concept scores, plus what each method needs."""

    modality: str
    n_prefix: int = 0

    def __init__(self, model: nn.Module, blocks: Sequence[nn.Module], layer: int, score: ConceptScore,
                 global_token: str, device: torch.device):
        self.model, self.layer, self.score, self.global_token = model, layer, score.to(device), global_token
        self.device = device
        self.blocks = blocks
        self.grid: _GridView | None = None
        self._tap = None
        self.target = "global"  # or "mean_token": the mean of the concept's token scores (the seed's target)

    def forward_args(self, extra: tuple) -> tuple:
        """The extra forward arguments among ``inputs()``'s extras (text: attention and valid masks)."""
        return ()

    def _target(self, h: torch.Tensor, mask: torch.Tensor | None, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Concept scores ``[B, C]`` of layer states ``h``: of the global embedding, or the token mean."""
        if self.target == "global":
            return self.score(self._global(h, mask, valid))
        body = h[:, self.n_prefix:]
        B, T, d = body.shape
        sc = self.score(body.reshape(B * T, d)).reshape(B, T, -1)
        m = torch.ones((B, T), device=h.device) if valid is None else valid[:, self.n_prefix:].to(sc.dtype)
        return (sc * m.unsqueeze(-1)).sum(1) / m.sum(1, keepdim=True).clamp_min(1)

    def _global(self, h: torch.Tensor, mask: torch.Tensor | None, valid: torch.Tensor | None = None) -> torch.Tensor:
        """The global embedding as the encoder stores it: the last attended token, or the mean of the
        stored (valid) tokens; without masks, the mean of every token after the prefix."""
        rule = self.global_token
        last = None if mask is None else mask.long().sum(1) - 1
        if rule == "last" and last is None:
            rule = "mean"
        keep = valid if valid is not None else mask
        return pool_global(rule, h, None if keep is None else keep[:, self.n_prefix:].bool(),
                           n_prefix=self.n_prefix, last=last)

    def gradcam_layer(self, rows: int, cols: int) -> nn.Module:
        """Install the Grad-CAM view on the tokens entering block ``layer`` (idempotent)."""
        if self.grid is not None:
            return self.grid
        self.grid = _GridView(rows, cols)
        prefix = self.n_prefix

        def pre(module: nn.Module, args: tuple, kwargs: dict):
            h = args[0] if args else next(v for k, v in kwargs.items() if k.startswith("hidden_state"))
            body = self.grid(h[:, prefix:])
            B, d = body.shape[:2]
            h2 = torch.cat([h[:, :prefix], body.reshape(B, d, -1).transpose(1, 2)], dim=1)
            if args:
                return (h2, *args[1:]), kwargs
            key = next(k for k in kwargs if k.startswith("hidden_state"))
            return args, {**kwargs, key: h2}

        self._tap = self.blocks[self.layer - 1].register_forward_pre_hook(pre, with_kwargs=True)
        return self.grid

    def states(self, call: Callable[[], Any]) -> torch.Tensor:
        """Hidden states at ``layer`` of one forward call, stopped after that block (gradients flow)."""
        return LayerTap(self.blocks, [self.layer], stop_early=True).run(call).states[self.layer]

    def close(self) -> None:
        if self._tap is not None:
            self._tap.remove()
            self._tap, self.grid = None, None


class ImageAdapter(_Adapter):
    """Vision transformer: ``pixel_values [B, 3, H, W]`` -> scores; patches row-major."""

    modality = "image"

    def __init__(self, encoder: Any, layer: int, score: ConceptScore):
        blocks = _find_blocks(encoder.model, encoder.n_layers)
        super().__init__(encoder.model, blocks, layer, score, encoder.global_token, encoder.device)
        self.encoder = encoder
        self.n_prefix = encoder.n_prefix
        self.rows, self.cols = encoder.patch_grid
        self.ps = encoder.patch_size

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        h = self.states(lambda: self.model(pixel_values=pixel_values.to(self.encoder.dtype)))
        return self._target(h, None)

    def inputs(self, images: list) -> tuple[torch.Tensor, tuple]:
        return self.encoder.pixel_values(images).to(self.device), ()

    def baseline(self, x: torch.Tensor, extra: tuple) -> torch.Tensor:
        return torch.zeros_like(x)

    def feature_mask(self, x: torch.Tensor, extra: tuple) -> torch.Tensor:
        ids = torch.arange(self.rows * self.cols, device=x.device).reshape(self.rows, self.cols)
        m = ids.repeat_interleave(self.ps, 0).repeat_interleave(self.ps, 1)
        return m[None, None].expand(x.shape[0], x.shape[1], -1, -1).contiguous()

    def to_tokens(self, attr: torch.Tensor) -> torch.Tensor:
        """Pixel attributions ``[B, 3, H, W]`` -> per patch ``[B, P]`` (sum over channels and pixels)."""
        a = attr.sum(1)
        B = a.shape[0]
        return a.reshape(B, self.rows, self.ps, self.cols, self.ps).sum((2, 4)).reshape(B, -1)

    def occlusion_args(self, x: torch.Tensor, window: int) -> dict:
        w = self.ps * window
        return {"sliding_window_shapes": (x.shape[1], w, w), "strides": (x.shape[1], w, w)}

    def apply_token_mask(self, x: torch.Tensor, base: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """Inputs with per-patch weights ``m [B, P]`` (1 keep, 0 baseline)."""
        pix = m.reshape(-1, 1, self.rows, self.cols).repeat_interleave(self.ps, 2).repeat_interleave(self.ps, 3)
        return x * pix + base * (1 - pix)

    def token_grid(self, n_tokens: int) -> tuple[int, int]:
        return self.rows, self.cols

    def stored(self, maps: torch.Tensor, extra: tuple) -> list[np.ndarray]:
        return [m.detach().cpu().numpy() for m in maps]


class TextAdapter(_Adapter):
    """Text model: ``inputs_embeds [B, T, d]`` (+ attention mask) -> scores; stored tokens selected."""

    modality = "text"

    def __init__(self, encoder: Any, layer: int, score: ConceptScore):
        blocks = encoder.blocks if encoder.blocks is not None else _find_blocks(encoder.model, encoder.n_layers)
        super().__init__(encoder.model, blocks, layer, score, encoder.global_token, encoder.device)
        self.encoder = encoder
        self.emb = encoder.model.get_input_embeddings()

    def forward_args(self, extra: tuple) -> tuple:
        return extra[:2]

    def forward(self, embeds: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        def call() -> Any:
            return self.model(inputs_embeds=embeds, attention_mask=mask, **self.encoder._forward_kwargs)

        fam = getattr(self.encoder, "family", None)
        if self.layer == self.encoder.n_layers and getattr(fam, "last_layer", None) == "model_output":
            h = call().last_hidden_state  # the store's last layer is the output after the final norm
        else:
            h = self.states(call)
        return self._target(h, mask, valid)

    def inputs(self, texts: list[str]) -> tuple[torch.Tensor, tuple]:
        tok = self.encoder.tokenizer
        seed = getattr(self.encoder.cfg, "protocol", "ours") == "seed"  # tokenised as the store was
        enc = tok(list(texts), padding=True, truncation=not seed, max_length=None if seed else self.encoder.cfg.max_length,
                  add_special_tokens=not seed, return_special_tokens_mask=True, return_tensors="pt")
        special = enc.pop("special_tokens_mask").bool()
        mask = enc["attention_mask"].to(self.device)
        ids = enc["input_ids"].to(self.device)
        with torch.no_grad():
            embeds = self.emb(ids).detach()
            pad = self.emb(torch.full_like(ids, tok.pad_token_id)).detach()
        valid = mask.bool().cpu() & ~special
        return embeds, (mask, valid.to(self.device), pad)

    def baseline(self, x: torch.Tensor, extra: tuple) -> torch.Tensor:
        """The pad embedding at content tokens; special and padding positions stay as they are."""
        mask, valid, pad = extra
        return torch.where(valid.unsqueeze(-1), pad, x)

    def feature_mask(self, x: torch.Tensor, extra: tuple) -> torch.Tensor:
        T = x.shape[1]
        return torch.arange(T, device=x.device)[None, :, None].expand(x.shape[0], T, x.shape[2]).contiguous()

    def to_tokens(self, attr: torch.Tensor) -> torch.Tensor:
        return attr.sum(-1)

    def occlusion_args(self, x: torch.Tensor, window: int) -> dict:
        return {"sliding_window_shapes": (1, x.shape[2]), "strides": (1, x.shape[2])}

    def apply_token_mask(self, x: torch.Tensor, base: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return x * m.unsqueeze(-1) + base * (1 - m.unsqueeze(-1))

    def token_grid(self, n_tokens: int) -> tuple[int, int]:
        return n_tokens, 1

    def stored(self, maps: torch.Tensor, extra: tuple) -> list[np.ndarray]:
        valid = extra[1]
        return [m[v].detach().cpu().numpy() for m, v in zip(maps, valid)]


# ------------------------------------------------------------------------------ methods
def _rise_masks(n: int, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` RISE masks ``[n, rows * cols]``: a coarse Bernoulli(0.5) grid, upsampled with a random shift."""
    g_r, g_c = max(2, math.ceil(rows / 4)), max(1, math.ceil(cols / 4)) if cols > 1 else 1
    cell_r, cell_c = math.ceil(rows / g_r), math.ceil(cols / g_c)
    grid = (rng.random((n, 1, g_r + 1, g_c + 1)) < 0.5).astype(np.float32)
    up = torch.nn.functional.interpolate(torch.from_numpy(grid), size=((g_r + 1) * cell_r, (g_c + 1) * cell_c),
                                         mode="bilinear", align_corners=False).numpy()[:, 0]
    dr, dc = rng.integers(0, cell_r, n), rng.integers(0, cell_c, n)
    r_idx = dr[:, None] + np.arange(rows)[None, :]
    c_idx = dc[:, None] + np.arange(cols)[None, :]
    out = up[np.arange(n)[:, None, None], r_idx[:, :, None], c_idx[:, None, :]]
    return out.reshape(n, rows * cols)


def attribute(adapter: _Adapter, method: str, x: torch.Tensor, extra: tuple, target: int,
              opts: AttributionOptions) -> torch.Tensor:
    """Per-token attribution maps ``[B, T]`` (T = patches, or every token position for text).

    captum's "Input Tensor 0 did not already require gradients" (it switches them on itself, as
    it must for the maps) tells the user nothing: silenced here, where it is raised."""
    import warnings  # noqa: PLC0415

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Input Tensor \d+ did not already require gradients")
        return _attribute(adapter, method, x, extra, target, opts)


def _attribute(adapter: _Adapter, method: str, x: torch.Tensor, extra: tuple, target: int,
               opts: AttributionOptions) -> torch.Tensor:
    import captum.attr as ca

    fwd = adapter.forward
    base = adapter.baseline(x, extra)
    args = adapter.forward_args(extra)  # text: the attention and valid masks; images: nothing
    fa = args if args else None
    if method == "integrated_gradients":
        a = ca.IntegratedGradients(fwd).attribute(x, baselines=base, target=target, additional_forward_args=fa,
                                                  n_steps=opts.ig_steps, internal_batch_size=opts.batch_size)
        return adapter.to_tokens(a)
    if method == "saliency":
        return adapter.to_tokens(ca.Saliency(fwd).attribute(x, target=target, abs=True, additional_forward_args=fa))
    if method == "gradcam":
        rows, cols = adapter.token_grid(x.shape[1] - adapter.n_prefix if adapter.modality == "image" else x.shape[1])
        layer = adapter.gradcam_layer(rows, cols)
        try:
            a = ca.LayerGradCam(fwd, layer).attribute(x, target=target, additional_forward_args=fa,
                                                      relu_attributions=True)
        finally:
            adapter.close()
        return a.reshape(a.shape[0], -1)
    if method == "occlusion" and adapter.modality == "text":  # one real token at a time: feature ablation
        return text_occlusion(fwd, x, base, extra, target, opts)
    if method == "occlusion":
        a = ca.Occlusion(fwd).attribute(x, baselines=base, target=target, additional_forward_args=fa,
                                        perturbations_per_eval=opts.batch_size,
                                        **adapter.occlusion_args(x, opts.occlusion_window))
        return adapter.to_tokens(a) / (3 * adapter.ps * adapter.ps)  # each pixel carries its window's value
    if method in ("lime", "kernel_shap"):
        cls = ca.Lime if method == "lime" else ca.KernelShap
        explainer = cls(fwd)
        fm = adapter.feature_mask(x, extra)
        outs = []
        for i in range(x.shape[0]):  # captum's surrogate models explain one example at a time
            torch.manual_seed(opts.seed + i)
            fa_i = tuple(t[i:i + 1] for t in args) if args else None
            a = explainer.attribute(x[i:i + 1], baselines=base[i:i + 1], target=target, additional_forward_args=fa_i,
                                    feature_mask=fm[i:i + 1], n_samples=opts.budget,
                                    perturbations_per_eval=opts.batch_size)
            outs.append(_feature_values(a, fm[i:i + 1]))
        return torch.cat(outs)
    if method == "rise":
        return rise(adapter, x, extra, target, opts)
    raise ValueError(f"unknown attribution method {method!r}")


def text_occlusion(fwd: Callable, x: torch.Tensor, base: torch.Tensor, extra: tuple, target: int,
                   opts: AttributionOptions) -> torch.Tensor:
    """Occlusion ``[B, T]`` of each sample's real (valid) tokens, one sample at a time.

    Why per sample: captum ablates feature ``k`` in every example of a batch at once, so a
    batch padded to its longest text paid a forward for each padding and special position of
    the shorter ones. Each sample is cut to its attended length (right padding) and only its
    valid tokens are features; a special token shares its neighbour's feature id, a no-op since
    the baseline leaves special positions unchanged. Positions that are not valid get 0.
    """
    import captum.attr as ca

    mask, valid = extra[0], extra[1]
    out = torch.zeros(x.shape[:2], dtype=x.dtype, device=x.device)
    for i in range(x.shape[0]):
        n_att = int(mask[i].sum())
        v = valid[i, :n_att].bool()
        if not v.any():
            continue
        fm = (torch.cumsum(v.long(), 0) - 1).clamp_min(0)  # valid tokens 0..n-1; specials join a neighbour
        fm = fm[None, :, None].expand(1, n_att, x.shape[2]).contiguous()
        a = ca.FeatureAblation(fwd).attribute(
            x[i:i + 1, :n_att], baselines=base[i:i + 1, :n_att], target=target,
            additional_forward_args=(mask[i:i + 1, :n_att], valid[i:i + 1, :n_att]),
            feature_mask=fm, perturbations_per_eval=opts.batch_size)
        out[i, :n_att] = torch.where(v, a[0, :, 0], torch.zeros((), dtype=a.dtype, device=a.device))
    return out


def _feature_values(attr: torch.Tensor, fm: torch.Tensor) -> torch.Tensor:
    """One value per feature id (captum repeats a feature's coefficient over its elements)."""
    n = int(fm.max()) + 1
    flat_a, flat_m = attr.reshape(-1), fm.reshape(-1)
    first = torch.full((n,), flat_a.numel(), dtype=torch.long)
    first = first.scatter_reduce(0, flat_m.cpu(), torch.arange(flat_m.numel()), reduce="amin")
    return flat_a[first.to(flat_a.device)][None]


@torch.no_grad()
def rise(adapter: _Adapter, x: torch.Tensor, extra: tuple, target: int, opts: AttributionOptions) -> torch.Tensor:
    """RISE saliency ``[B, T]``: mask-weighted mean score over ``opts.budget`` seeded random masks."""
    T = adapter.rows * adapter.cols if adapter.modality == "image" else x.shape[1]
    rows, cols = adapter.token_grid(T)
    masks = torch.from_numpy(_rise_masks(opts.budget, rows, cols, np.random.default_rng(opts.seed))).to(x.device)
    base = adapter.baseline(x, extra)
    out = torch.zeros((x.shape[0], T), device=x.device)
    for i in range(x.shape[0]):
        acc = torch.zeros(T, device=x.device)
        for j in range(0, opts.budget, opts.batch_size):
            m = masks[j:j + opts.batch_size]
            xi = adapter.apply_token_mask(x[i:i + 1].expand(len(m), *x.shape[1:]), base[i:i + 1], m)
            fa = tuple(t[i:i + 1].expand(len(m), *t.shape[1:]) for t in adapter.forward_args(extra))
            s = adapter.forward(xi, *fa)[:, target]
            acc += (s[:, None] * m).sum(0)
        out[i] = acc / masks.sum(0).clamp_min(1e-6)
    return out


# ------------------------------------------------------------------------------ evaluation
@dataclass
class AttributionMaps:
    """Normalised per-token maps of one method: ``maps[c][i]`` for sample ``ids[c][i]``."""

    method: str
    ids: list[np.ndarray]  # per concept: sample indices
    maps: list[list[np.ndarray]]
    seconds: float


def select_samples(detected: np.ndarray, splits: np.ndarray, split: str, k: int, seed: int) -> list[np.ndarray]:
    """Per concept, up to ``k`` detected samples of ``split`` (seeded choice, sorted)."""
    rng = np.random.default_rng(seed)
    out = []
    for c in range(detected.shape[1]):
        ids = np.flatnonzero(detected[:, c] & (splits == split))
        if len(ids) > k:
            ids = np.sort(rng.choice(ids, k, replace=False))
        out.append(ids)
    return out


def _normalise(m: np.ndarray) -> np.ndarray:
    top = float(np.max(np.abs(m))) if m.size else 0.0
    return (m / top).astype(np.float32) if top > 0 else m.astype(np.float32)


def compute_maps(adapter: _Adapter, load: Callable[[np.ndarray], list], ids: list[np.ndarray], method: str,
                 opts: AttributionOptions, lengths: np.ndarray, progress: bool = True) -> AttributionMaps:
    """Maps of ``method`` for each concept's samples, batched, with a progress bar."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    maps: list[list[np.ndarray]] = []
    total = sum(len(i) for i in ids)
    bar = tqdm(total=total, desc=f"attribution {method}", disable=not progress)
    for c, cid in enumerate(ids):
        cm: list[np.ndarray] = []
        for j in range(0, len(cid), opts.batch_size):
            b = cid[j:j + opts.batch_size]
            x, extra = adapter.inputs(load(b))
            with torch.enable_grad():
                a = attribute(adapter, method, x, extra, c, opts)
            got = adapter.stored(a, extra)
            for s, m in zip(b, got):
                if len(m) != lengths[s]:
                    raise RuntimeError(f"sample {s}: {len(m)} attributed tokens, the store has {lengths[s]}")
                cm.append(_normalise(np.nan_to_num(m)))
            bar.update(len(b))
        maps.append(cm)
    bar.close()
    return AttributionMaps(method, ids, maps, time.perf_counter() - t0)


@dataclass
class SubsetTruth:
    """Ground truth and validity of the selected samples' tokens, per concept and sample."""

    gt: list[list[np.ndarray]]
    valid: list[list[np.ndarray]]


def subset_truth(store: TokenStore, concepts: np.ndarray, ids: list[np.ndarray]) -> SubsetTruth:
    gt_all = np.concatenate([store.token_labels(s, concepts) for s in store.shards])
    gt, valid = [], []
    for c, cid in enumerate(ids):
        gt.append([gt_all[store.offsets[i]:store.offsets[i + 1], c] for i in cid])
        valid.append([store.valid[store.offsets[i]:store.offsets[i + 1]] for i in cid])
    return SubsetTruth(gt, valid)


def calibrate_maps(cal_maps: list[list[np.ndarray]], cal_truth: SubsetTruth, test_maps: list[list[np.ndarray]],
                   test_truth: SubsetTruth, grid: Sequence[float], method: str, names: list[str],
                   fixed_thr: np.ndarray | None = None) -> LocMethodResult:
    """Threshold maps on ``cal`` (quantiles of in-concept values, N by F1) and count on ``test``.

    ``fixed_thr [C]``: use these thresholds instead (methods already calibrated on the whole
    ``cal`` split, e.g. ``superactivator``); ``-inf`` keeps every valid token.
    """
    C = len(names)
    G = len(grid)
    tp, fp, fn, tn = (np.zeros(C, np.int64) for _ in range(4))
    cal_f1, n_pct, thr_out = np.full(C, np.nan), np.full(C, np.nan), np.full(C, np.nan)

    def flat(maps, truth, c):
        if not maps[c]:
            return np.empty(0), np.empty(0, bool)
        v = np.concatenate([np.where(vv, m, np.nan) for m, vv in zip(maps[c], truth.valid[c])])
        g = np.concatenate(truth.gt[c])
        keep = ~np.isnan(v)
        return v[keep], g[keep]

    for c in range(C):
        tv, tg = flat(test_maps, test_truth, c)
        if fixed_thr is not None:
            thr = fixed_thr[c]
            f1c = np.nan
        else:
            cv, cg = flat(cal_maps, cal_truth, c)
            if not cg.any():
                fn[c], tn[c], cal_f1[c] = int(tg.sum()), int((~tg).sum()), 0.0
                continue
            cands = tail_thresholds([cv[cg]], grid)[0]
            pred = cv[None, :] >= cands[:, None]  # [G, n]
            f1s = _f1((pred & cg).sum(1), (pred & ~cg).sum(1), np.full(G, cg.sum()))
            b = int(np.argmax(f1s))
            thr, f1c, n_pct[c] = cands[b], f1s[b], float(grid[b])
        p = tv >= thr if np.isfinite(thr) or thr < 0 else np.zeros(len(tv), bool)
        tp[c], fp[c] = int((p & tg).sum()), int((p & ~tg).sum())
        fn[c], tn[c] = int((~p & tg).sum()), int((~p & ~tg).sum())
        cal_f1[c], thr_out[c] = f1c, thr  # NaN cal F1: thresholds calibrated elsewhere (the whole cal split)
    return LocMethodResult(method, names, Confusion(tp, fp, fn, tn), cal_f1=cal_f1, n_pct=n_pct,
                           threshold=thr_out, k=np.full(C, -1))


def activation_maps(store: TokenStore, cs: ConceptSet, ids: list[np.ndarray], det_thr: np.ndarray,
                    twostage: bool = False) -> list[list[np.ndarray]]:
    """Activation (or two-stage score) maps of the selected samples, read from the store."""
    scorer = make_scorer(cs)
    mean, scale = store.norm(cs.layer)
    shard_of = np.searchsorted([s.stop for s in store.shards], np.arange(store.n_samples), side="right")
    out: list[list[np.ndarray]] = []
    for c, cid in enumerate(ids):
        cm = []
        for i in cid:
            sh = store.shards[shard_of[i]]
            raw = store.tokens(cs.layer, sh)[store.offsets[i] - sh.token_start:store.offsets[i + 1] - sh.token_start]
            acts = scorer(raw)
            if twostage:
                x = (np.asarray(raw, np.float32) - mean) / scale
                v = store.valid[store.offsets[i]:store.offsets[i + 1]]
                cm.append(twostage_scores(x, acts[:, c:c + 1], np.array([0]), det_thr[c:c + 1], v)[:, 0])
            else:
                cm.append(acts[:, c])
        out.append(cm)
    return out


def make_adapter(encoder: Any, layer: int, cs: ConceptSet, target: str = "global") -> _Adapter:
    """The adapter for an encoder from :func:`superactivators.encoders.factory.make_encoder`.

    ``target``: ``global`` (the concept's score of the global embedding) or ``mean_token`` (the
    mean of its token scores, the seed's attribution target)."""
    if target not in TARGETS:
        raise ValueError(f"attribution target must be one of {list(TARGETS)}, got {target!r}")
    score = ConceptScore(cs)
    ad = ImageAdapter(encoder, layer, score) if encoder.modality == "image" else TextAdapter(encoder, layer, score)
    ad.target = target
    return ad


@dataclass
class AttributionResult:
    """The attributed subset's table (every method on the same test samples) and the maps."""

    table: pd.DataFrame
    maps: dict[str, AttributionMaps]
    test_ids: list[np.ndarray]


def attribution_stage(store: TokenStore, cs: ConceptSet, adapter: _Adapter, load: Callable[[np.ndarray], list],
                      detected: np.ndarray, det_thr: np.ndarray, loc_table: pd.DataFrame, grid: Sequence[float],
                      opts: AttributionOptions, progress: bool = True, **keys: object) -> AttributionResult:
    """Attribution maps on the detector's samples, calibrated on ``cal``, scored on ``test``.

    ``detected [N, C]``: the SuperActivator detector's samples; ``det_thr [C]`` its thresholds
    (for the two-stage maps); ``loc_table``: the stage's localisation table, whose
    ``superactivator`` and ``twostage`` thresholds are reused so those rows are the same
    calibrated methods, restricted to the attributed test samples.
    """
    names = list(cs.names)
    concepts = np.array([store.concepts.index(n) for n in names])
    cal_ids = select_samples(detected, store.splits, "cal", opts.max_samples, opts.seed)
    test_ids = select_samples(detected, store.splits, "test", opts.max_samples, opts.seed + 1)
    cal_t, test_t = subset_truth(store, concepts, cal_ids), subset_truth(store, concepts, test_ids)
    both = [np.concatenate([a, b]) for a, b in zip(cal_ids, test_ids)]
    results: list[LocMethodResult] = []
    seconds: dict[str, float] = {}
    maps: dict[str, AttributionMaps] = {}
    for name, ts in ((LOC_SUPERACTIVATOR.name, False), (LOC_TWOSTAGE.name, True)):
        row = loc_table[(loc_table["method"] == name) & loc_table["concept"].isin(names)].set_index("concept")
        if row.empty:
            continue
        thr = row.reindex(names)["threshold"].to_numpy(dtype=float)
        t0 = time.perf_counter()
        tm = activation_maps(store, cs, test_ids, det_thr, twostage=ts)
        results.append(calibrate_maps([], cal_t, tm, test_t, grid, name, names,
                                      fixed_thr=np.where(np.isnan(thr), np.inf, thr)))
        seconds[name] = time.perf_counter() - t0
        maps[name] = AttributionMaps(name, test_ids, tm, seconds[name])
    results.append(calibrate_maps([], cal_t, [[np.zeros(len(g)) for g in gc] for gc in test_t.gt], test_t, grid,
                                  "detected_all_tokens", names, fixed_thr=np.full(len(names), -np.inf)))
    for method in opts.methods:
        am = compute_maps(adapter, load, both, method, opts, store.lengths, progress)
        cm = [m[:len(a)] for m, a in zip(am.maps, cal_ids)]
        tm = [m[len(a):] for m, a in zip(am.maps, cal_ids)]
        results.append(calibrate_maps(cm, cal_t, tm, test_t, grid, f"attr:{method}", names))
        seconds[f"attr:{method}"] = am.seconds
        maps[method] = AttributionMaps(method, test_ids, tm, am.seconds)
    table = localization_table(results, **keys)
    table["seconds"] = table["method"].map(seconds)
    table["n_test_samples"] = table["concept"].map({n: len(t) for n, t in zip(names, test_ids)})
    return AttributionResult(table, maps, test_ids)


MAPS_KEPT = 4  # test samples per concept whose maps are saved for the report


def choose_attribution_jobs(jobs: Sequence[dict], layer: str | int, types: Sequence[str] | None) -> list[dict]:
    """One job per concept type: the requested layer, or the one with the best SuperActivator
    macro localisation F1 on ``cal`` (``best``)."""
    out = []
    for ctype in dict.fromkeys(j["ctype"] for j in jobs):
        if types is not None and ctype not in types:
            continue
        cand = [j for j in jobs if j["ctype"] == ctype]
        if layer == "best":
            def cal_f1(j: dict) -> float:
                t = j["loc"]
                m = t[(t["method"] == LOC_SUPERACTIVATOR.name) & (t["concept"] == MACRO)]["cal_f1"]
                return float(m.iloc[0]) if len(m) and np.isfinite(m.iloc[0]) else -1.0
            out.append(max(cand, key=cal_f1))
        else:
            hit = [j for j in cand if j["layer"] == int(layer)]
            if not hit:
                raise ValueError(f"localize.attribution_layer {layer} is not among the run's layers "
                                 f"{sorted({j['layer'] for j in cand})}")
            out.append(hit[0])
    return out


def save_maps(path: Any, res: AttributionResult, names: list[str]) -> None:
    """The first :data:`MAPS_KEPT` test samples' maps per concept and method (for the report)."""

    arrays: dict[str, np.ndarray] = {"names": np.array(names), "methods": np.array(list(res.maps))}
    for c, ids in enumerate(res.test_ids):
        arrays[f"ids__{c}"] = ids[:MAPS_KEPT]
        for meth, am in res.maps.items():
            for i in range(min(MAPS_KEPT, len(ids))):
                arrays[f"map__{meth}__{c}__{i}"] = np.asarray(am.maps[c][i], np.float32)
    atomic_save_npz(path, **arrays)


def load_maps(path: Any) -> dict:
    """``{"names", "methods", "ids": [C arrays], "maps": {(method, c, i): map}}`` from :func:`save_maps`."""
    z = np.load(path)
    names = [str(n) for n in z["names"]]
    maps = {}
    for k in z.files:
        if k.startswith("map__"):
            _, meth, c, i = k.split("__")
            maps[(meth, int(c), int(i))] = z[k]
    return {"names": names, "methods": [str(m) for m in z["methods"]],
            "ids": [z[f"ids__{c}"] for c in range(len(names))], "maps": maps}


def run_attributions(make_encoder: Callable[[], Any], ds: Any, store: TokenStore, jobs: Sequence[dict],
                     load_concepts: Callable[[dict], ConceptSet], opts: AttributionOptions, grid: Sequence[float],
                     layer: str | int = "best", types: Sequence[str] | None = None,
                     progress: bool = True) -> pd.DataFrame | None:
    """Attribution localisation for the chosen stage of each concept type, cached per stage.

    ``jobs``: per (layer, concept type) stage ``{"layer", "ctype", "stage", "summary", "results",
    "loc"}``; the model (``make_encoder()``) is loaded only when some stage is not cached.
    """
    from dataclasses import asdict
    from pathlib import Path

    loc_grid = localization_grid(grid)
    key = stable_hash([asdict(opts), loc_grid, ATTRIBUTIONS, "text occlusion: valid tokens"], 8)
    encoder = None
    tables = []
    for job in choose_attribution_jobs(jobs, layer, types):
        stage = Path(job["stage"])
        path = stage / f"attribution_{key}.csv"
        if path.exists() and StageFolder(stage).attribution_maps.exists():
            tables.append(read_table(path))
            continue
        cs = load_concepts(job)
        if cs.scoring not in ("cosine", "signed_distance"):
            warnings.warn(f"attributions skip {job['ctype']} concepts: no differentiable score for scoring "
                          f"{cs.scoring!r}", stacklevel=2)
            continue
        if encoder is None:
            encoder = make_encoder()
        sa = next(r for r in job["results"] if r.method == SA)
        detected = job["summary"].sample_scores["max_token"] >= sa.threshold[None, :]
        if ds.modality == "image":
            def load(ids: np.ndarray) -> list:
                return [ds.load_image(int(i)) for i in ids]
        else:
            def load(ids: np.ndarray) -> list:
                return [ds.text(int(i)) for i in ids]
        adapter = make_adapter(encoder, job["layer"], cs, opts.target)
        res = attribution_stage(store, cs, adapter, load, detected, sa.threshold, job["loc"], loc_grid, opts,
                                progress, layer=job["layer"], concept_type=job["ctype"])
        save_maps(StageFolder(stage).attribution_maps, res, list(cs.names))
        atomic_write_bytes(path, res.table.to_csv(index=False).encode())
        tables.append(res.table)
    return pd.concat(tables, ignore_index=True) if tables else None


def format_attribution(table: pd.DataFrame) -> str:
    """Macro F1 / IoU and seconds per method on the attributed test samples, per (layer, type)."""
    m = table[table["concept"] == "__macro__"]
    order = list(dict.fromkeys(m["method"]))
    pv = m.pivot_table(index=["layer", "concept_type", "method"], values=["precision", "recall", "f1", "iou",
                                                                          "seconds"], sort=False)
    pv = pv.reindex(columns=[c for c in ("precision", "recall", "f1", "iou", "seconds") if c in pv.columns])
    pv = pv.reset_index()
    pv["method"] = pd.Categorical(pv["method"], order, ordered=True)

    with pd.option_context("display.max_rows", 200):
        return frame_text(pv.sort_values(["layer", "concept_type", "method"]), index=False, short=short_label)
