"""Pretrained sparse autoencoders (SAELens layout) whose units serve as concepts.

A SAELens SAE folder holds ``cfg.json`` (``d_in``, ``d_sae``, ``architecture``,
``hook_name``, ``apply_b_dec_to_input``, ``normalize_activations``, ...; newer releases nest
``hook_name`` under ``metadata``) and ``sae_weights.safetensors`` with ``W_enc [d_in, d_sae]``,
``b_enc [d_sae]``, ``W_dec [d_sae, d_in]``, ``b_dec [d_in]`` and, for JumpReLU SAEs,
``threshold [d_sae]``. Unit activations follow SAELens' ``encode``:

    x'   = norm(x)                    # normalize_activations (see INPUT_NORMS)
    pre  = (x' - b_dec * apply_b_dec_to_input) @ W_enc + b_enc
    act  = relu(pre)                  # standard
    act  = relu(pre) * (pre > thr)    # jumprelu (also SAELens' inference form of BatchTopK SAEs)
    act  = relu(pre) on the k largest pre-activations of the token, 0 elsewhere   # topk

A TopK unit's activation depends on the other units (the k-th largest of the token), so a
subset of TopK units keeps the whole encoder for that and reports only its own columns.

Two other layouts are read as well:

- Gemma Scope: a ``params.npz`` (``W_enc``, ``W_dec``, ``b_enc``, ``b_dec``, ``threshold``), a
  JumpReLU SAE on ``x`` itself (no ``b_dec`` subtraction); the folder path names the layer
  (``.../layer_12/width_16k/...`` = ``blocks.12.hook_resid_post``).
- patchsae (the CLIP SAE the seed uses): a ``.pt`` checkpoint ``{"cfg": ..., "state_dict":
  {W_enc, b_enc, W_dec, b_dec}}``, a standard ReLU SAE on ``x - b_dec``; ``cfg`` names the
  layer (``hook_point`` or ``block_layer``, the output of that block).

The input ``x`` is the **raw** hidden state at the SAE's hook, not the train-centred one
the other concept sets use. A hook ``blocks.L.hook_resid_pre`` is the input of block L,
i.e. Hugging Face ``hidden_states[L]`` (store layer L); ``blocks.L.hook_resid_post`` is
store layer ``L + 1``. Other hooks (attention, MLP outputs) are not hidden states and are
refused. Note that several Hugging Face models apply their final norm to the last hidden
state, so an SAE on the last block's ``resid_post`` sees different inputs (we warn).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..store.artefacts import check_file_named, load_json, recording
from ..util.io import atomic_write_json
from .supervised import ConceptSet

SAE_CFG = "cfg.json"
SAE_WEIGHTS = "sae_weights.safetensors"
ARCHITECTURES = ("standard", "jumprelu", "topk")
GEMMA_SCOPE_FILE = "params.npz"
_LAYER_IN_PATH = re.compile(r"layer_(\d+)")
# SAELens names; "expected_average_only_in" is a training-time scaling that SAELens folds
# into the weights when saving for inference, so it is the identity here (as in SAELens).
INPUT_NORMS = ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm")
LN_EPS = 1e-5
_HOOK = re.compile(r"^blocks\.(\d+)\.hook_resid_(pre|post)$")


@dataclass
class SAEWeights:
    """A loaded SAE: weights as float32 arrays plus the settings that change its encoding."""

    W_enc: np.ndarray  # [d_in, d_sae]
    b_enc: np.ndarray  # [d_sae]
    W_dec: np.ndarray  # [d_sae, d_in]
    b_dec: np.ndarray  # [d_in]
    threshold: np.ndarray | None  # [d_sae] (jumprelu)
    architecture: str
    k: int | None
    apply_b_dec_to_input: bool
    normalize_activations: str
    hook_name: str
    source: str

    @property
    def d_in(self) -> int:
        return self.W_enc.shape[0]

    @property
    def d_sae(self) -> int:
        return self.W_enc.shape[1]


def resolve_sae_path(spec: str) -> Path:
    """A local SAE folder, or ``[hf://]org/repo[/sub/folder]`` fetched with ``snapshot_download``.

    The hub is contacted only when ``spec`` is not an existing local path.
    """
    local = Path(spec).expanduser()
    if local.exists():
        return local
    ref = spec[len("hf://"):] if spec.startswith("hf://") else spec
    parts = [p for p in ref.split("/") if p]
    if spec.startswith((".", "/", "~")) or len(parts) < 2:
        raise FileNotFoundError(f"SAE folder not found: {os.path.abspath(os.path.expanduser(spec))} (give a folder or an HF repo id org/name[/subfolder])")
    repo, sub = "/".join(parts[:2]), "/".join(parts[2:])
    from huggingface_hub import snapshot_download  # noqa: PLC0415

    root = snapshot_download(repo_id=repo, allow_patterns=[f"{sub}/*"] if sub else None)
    return Path(root) / sub if sub else Path(root)


def hook_name_of(cfg: dict) -> str:
    """The hook an SAE config names (newer SAELens releases nest it under ``metadata``)."""
    return str(cfg.get("hook_name") or (cfg.get("metadata") or {}).get("hook_name") or "")


def sae_store_layer(hook_name: str) -> int:
    """Store layer (Hugging Face ``hidden_states`` index) read by a SAELens hook."""
    m = _HOOK.match(hook_name)
    if not m:
        raise ValueError(f"SAE hook {hook_name!r} is not a residual-stream hook (blocks.L.hook_resid_pre|post); "
                         "only hidden states are stored")
    return int(m.group(1)) + (1 if m.group(2) == "post" else 0)


def load_sae(spec: str | Path) -> SAEWeights:
    """Read a SAELens folder (or HF repo id); shapes and settings are checked, weights cast to float32."""
    from safetensors.torch import load_file  # noqa: PLC0415 - handles bf16 weights

    folder = resolve_sae_path(str(spec))
    if folder.is_file() and folder.suffix == ".pt":
        return _load_patchsae(folder)
    if (folder.is_file() and folder.name == GEMMA_SCOPE_FILE) or (folder / GEMMA_SCOPE_FILE).is_file():
        return _load_gemma_scope(folder if folder.is_file() else folder / GEMMA_SCOPE_FILE)
    cpath = folder / SAE_CFG
    if not cpath.exists():
        raise FileNotFoundError(f"{folder}: missing {SAE_CFG} (not a SAELens SAE folder)")
    cfg = json.loads(cpath.read_text())
    wpath = folder / SAE_WEIGHTS
    if not wpath.exists():
        found = sorted(folder.glob("*.safetensors"))
        if len(found) != 1:
            raise FileNotFoundError(f"{folder}: missing {SAE_WEIGHTS}")
        wpath = found[0]
    w = {k: v.float().numpy() for k, v in load_file(str(wpath)).items()}
    arch = str(cfg.get("architecture", "standard"))
    if arch not in ARCHITECTURES:
        raise ValueError(f"{folder}: SAE architecture {arch!r} not supported; supported: {list(ARCHITECTURES)}")
    norm = str(cfg.get("normalize_activations") or "none")
    if norm not in INPUT_NORMS:
        raise ValueError(f"{folder}: normalize_activations={norm!r} not supported; supported: {list(INPUT_NORMS)}")
    missing = [k for k in ("W_enc", "b_enc", "W_dec", "b_dec") if k not in w]
    if arch == "jumprelu" and "threshold" not in w and "log_threshold" not in w:
        missing.append("threshold")
    if missing:
        raise ValueError(f"{wpath}: missing tensor(s) {missing}")
    if "threshold" not in w and "log_threshold" in w:
        w["threshold"] = np.exp(w["log_threshold"])
    d_in, d_sae = int(cfg.get("d_in", w["W_enc"].shape[0])), int(cfg.get("d_sae", w["W_enc"].shape[1]))
    want = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    if arch == "jumprelu":
        want["threshold"] = (d_sae,)
    bad = [f"{k} {w[k].shape} != {s}" for k, s in want.items() if w[k].shape != s]
    if bad:
        raise ValueError(f"{wpath}: tensor shapes disagree with d_in={d_in}, d_sae={d_sae}: {bad}")
    for k in want:
        if not np.isfinite(w[k]).all():
            raise ValueError(f"{wpath}: non-finite values in {k}")
    k = None
    if arch == "topk":
        if "k" not in cfg or int(cfg["k"]) < 1 or int(cfg["k"]) > d_sae:
            raise ValueError(f"{cpath}: a topk SAE needs 1 <= k <= d_sae={d_sae}, got {cfg.get('k')!r}")
        k = int(cfg["k"])
        if cfg.get("rescale_acts_by_decoder_norm"):  # SAELens folds it when saving for inference
            norms = np.linalg.norm(w["W_dec"], axis=1)
            w["W_enc"], w["b_enc"] = w["W_enc"] * norms[None], w["b_enc"] * norms
            w["W_dec"] = w["W_dec"] / norms[:, None]
    if norm == "expected_average_only_in":
        warnings.warn(f"{folder}: normalize_activations=expected_average_only_in is applied as the identity "
                      "(SAELens folds its scaling factor into the saved weights)", stacklevel=2)
    return SAEWeights(
        W_enc=w["W_enc"], b_enc=w["b_enc"], W_dec=w["W_dec"], b_dec=w["b_dec"],
        threshold=w.get("threshold") if arch == "jumprelu" else None, architecture=arch,
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)), normalize_activations=norm,
        hook_name=hook_name_of(cfg), source=str(spec), k=k,
    )


def _checked(w: dict[str, np.ndarray], where: Path, need_threshold: bool) -> dict[str, np.ndarray]:
    need = ["W_enc", "b_enc", "W_dec", "b_dec"] + (["threshold"] if need_threshold else [])
    missing = [k for k in need if k not in w]
    if missing:
        raise ValueError(f"{where}: missing tensor(s) {missing} (found {sorted(w)})")
    d_in, d_sae = w["W_enc"].shape
    want = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,),
            "threshold": (d_sae,)}
    bad = [f"{k} {w[k].shape} != {want[k]}" for k in need if w[k].shape != want[k]]
    if bad:
        raise ValueError(f"{where}: tensor shapes disagree with W_enc {w['W_enc'].shape}: {bad}")
    return {k: np.asarray(w[k], dtype=np.float32) for k in need}


def _load_gemma_scope(path: Path) -> SAEWeights:
    """Gemma Scope ``params.npz``: JumpReLU on ``x`` (no ``b_dec`` subtraction); layer from the path."""
    with np.load(path) as z:
        w = _checked({k: z[k] for k in z.files}, path, need_threshold=True)
    found = _LAYER_IN_PATH.findall(str(path.parent))
    if not found:
        raise ValueError(f"{path}: the Gemma Scope layer is named by a 'layer_N' folder, none in {path.parent}")
    return SAEWeights(w["W_enc"], w["b_enc"], w["W_dec"], w["b_dec"], w["threshold"], "jumprelu", None,
                      apply_b_dec_to_input=False, normalize_activations="none",
                      hook_name=f"blocks.{int(found[-1])}.hook_resid_post", source=str(path))


def _load_patchsae(path: Path) -> SAEWeights:
    """A patchsae checkpoint: standard ReLU SAE on ``x - b_dec``; ``cfg`` (a dict) names the layer."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a pickled config class from the training code
        raise ValueError(f"{path}: not a plain checkpoint ({type(err).__name__}); re-save it as "
                         "{'cfg': dict, 'state_dict': tensors} with torch.save") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(f"{path}: a patchsae checkpoint holds 'cfg' and 'state_dict'; found {list(ckpt)[:5]}")
    cfg = dict(ckpt.get("cfg") or ckpt.get("config") or {})
    w = _checked({k: v.float().numpy() for k, v in ckpt["state_dict"].items()}, path, need_threshold=False)
    hook = str(cfg.get("hook_point") or "")
    if not _HOOK.match(hook):
        block = cfg.get("block_layer")
        if block is None or int(block) < 0:
            raise ValueError(f"{path}: cfg gives no residual hook_point and block_layer={block!r}; a negative "
                             "block_layer counts from the end: give cfg.hook_point 'blocks.L.hook_resid_post'")
        hook = f"blocks.{int(block)}.hook_resid_post"
    return SAEWeights(w["W_enc"], w["b_enc"], w["W_dec"], w["b_dec"], None, "standard", None,
                      apply_b_dec_to_input=True, normalize_activations="none", hook_name=hook, source=str(path))


@dataclass
class SAEConceptSet(ConceptSet):
    """SAE units as a concept set: ``vectors = W_enc.T``, ``bias = b_enc``, ``center = b_dec`` (or 0).

    ``scale`` is 1: SAE inputs are raw hidden states (after the SAE's own normalisation).
    """

    threshold: np.ndarray | None = None  # [C] JumpReLU thresholds
    architecture: str = "standard"
    input_norm: str = "none"
    hook_name: str = ""
    k: int | None = None  # topk
    # topk subsets: the whole encoder (the k-th largest pre-activation needs every unit) and
    # which of its units this set reports
    full_vectors: np.ndarray | None = None
    full_bias: np.ndarray | None = None
    topk_units: np.ndarray | None = None

    def subset(self, units: np.ndarray) -> "SAEConceptSet":
        """The same SAE restricted to ``units`` (TopK: still ranked among all units)."""
        u = np.asarray(units, dtype=np.int64)
        extra = {}
        if self.architecture == "topk":  # keep the whole encoder: the k-th largest needs every unit
            base = self.topk_units if self.topk_units is not None else np.arange(len(self.names))
            extra = {"full_vectors": self.full_vectors if self.full_vectors is not None else self.vectors,
                     "full_bias": self.full_bias if self.full_bias is not None else self.bias,
                     "topk_units": base[u]}
        return dataclasses.replace(super().subset(u), threshold=None if self.threshold is None else self.threshold[u],
                                   **extra)

    def save(self, path: str | Path) -> None:
        super().save(path)
        extra = {"architecture": self.architecture, "input_norm": self.input_norm, "hook_name": self.hook_name,
                 "k": self.k}
        for name in ("threshold", "full_vectors", "full_bias", "topk_units"):
            value = getattr(self, name)
            if value is not None:
                with recording(Path(path) / f"{name}.npy"):
                    np.save(Path(path) / f"{name}.npy", value)
        with recording(Path(path) / "sae.json"):
            atomic_write_json(Path(path) / "sae.json", extra)

    @classmethod
    def load(cls, path: str | Path) -> "SAEConceptSet":
        base = ConceptSet.load(path)
        extra = load_json(Path(path) / "sae.json")
        arrays = {n: np.load(check_file_named(Path(path) / f"{n}.npy")) for n in ("threshold", "full_vectors", "full_bias", "topk_units")
                  if (Path(path) / f"{n}.npy").exists()}
        return cls(**base.__dict__, **arrays, **extra)


def sae_concept_set(sae: SAEWeights, layer: int | None = None) -> SAEConceptSet:
    """Every unit of ``sae`` as a concept (names ``sae_unit_00042``) at its hook's store layer."""
    layer = sae_store_layer(sae.hook_name) if layer is None else layer
    width = max(5, len(str(sae.d_sae - 1)))
    center = sae.b_dec if sae.apply_b_dec_to_input else np.zeros(sae.d_in, np.float32)
    return SAEConceptSet(
        "sae", [f"sae_unit_{j:0{width}d}" for j in range(sae.d_sae)],
        np.ascontiguousarray(sae.W_enc.T, dtype=np.float32), sae.b_enc.astype(np.float32), "sae", layer,
        center.astype(np.float32), 1.0, threshold=sae.threshold, architecture=sae.architecture,
        input_norm=sae.normalize_activations, hook_name=sae.hook_name, k=sae.k,
    )


class SAEScorer:
    """Unit activations ``[t, C]`` of raw hidden states, SAELens ``encode`` semantics (module doc)."""

    def __init__(self, cs: ConceptSet, device: str | torch.device = "cpu"):
        if not isinstance(cs, SAEConceptSet):
            raise TypeError("scoring 'sae' needs an SAEConceptSet (superactivators.concepts.sae.sae_concept_set)")
        self.cs = cs
        self.device = torch.device(device)
        self.Wt = torch.from_numpy(np.ascontiguousarray(cs.vectors.T, dtype=np.float32)).to(self.device)
        self.b = torch.from_numpy(np.asarray(cs.bias, dtype=np.float32)).to(self.device)
        self.center = torch.from_numpy(np.asarray(cs.center, dtype=np.float32)).to(self.device)
        self.thr = None if cs.threshold is None else torch.from_numpy(
            np.asarray(cs.threshold, dtype=np.float32)).to(self.device)
        self.units = None
        if cs.architecture == "topk" and cs.full_vectors is not None:  # rank among every unit
            self.Wt = torch.from_numpy(np.ascontiguousarray(cs.full_vectors.T, dtype=np.float32)).to(self.device)
            self.b = torch.from_numpy(np.asarray(cs.full_bias, dtype=np.float32)).to(self.device)
            self.units = torch.from_numpy(np.asarray(cs.topk_units, dtype=np.int64)).to(self.device)

    def _normalise_input(self, X: torch.Tensor) -> torch.Tensor:
        if self.cs.input_norm == "constant_norm_rescale":
            return X * (X.shape[1] ** 0.5 / X.norm(dim=1, keepdim=True))
        if self.cs.input_norm == "layer_norm":
            X = X - X.mean(dim=1, keepdim=True)
            return X / (X.std(dim=1, keepdim=True) + LN_EPS)
        return X

    def __call__(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        if not isinstance(x, torch.Tensor):
            with warnings.catch_warnings():  # read-only memmaps: X is copied by .float() or never written
                warnings.simplefilter("ignore", UserWarning)
                x = torch.from_numpy(np.asarray(x))
        X = self._normalise_input(x.to(self.device).float())
        pre = (X - self.center) @ self.Wt + self.b
        if self.cs.architecture == "topk":
            top = torch.topk(pre, k=int(self.cs.k), dim=1, sorted=False)
            act = torch.zeros_like(pre).scatter_(1, top.indices, torch.relu(top.values))
            if self.units is not None:
                act = act[:, self.units]
            return act.cpu().numpy()
        act = torch.relu(pre)
        if self.cs.architecture == "jumprelu":
            act = act * (pre > self.thr)
        return act.cpu().numpy()
