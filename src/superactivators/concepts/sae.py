"""Pretrained sparse autoencoders (SAELens layout) whose units serve as concepts.

A SAELens SAE folder holds ``cfg.json`` (``d_in``, ``d_sae``, ``architecture``,
``hook_name``, ``apply_b_dec_to_input``, ``normalize_activations``, ...; newer releases nest
``hook_name`` under ``metadata``) and ``sae_weights.safetensors`` with ``W_enc [d_in, d_sae]``,
``b_enc [d_sae]``, ``W_dec [d_sae, d_in]``, ``b_dec [d_in]`` and, for JumpReLU SAEs,
``threshold [d_sae]``. Unit activations follow SAELens' ``encode``:

    x'   = norm(x)                    # normalize_activations (see INPUT_NORMS)
    pre  = (x' - b_dec * apply_b_dec_to_input) @ W_enc + b_enc
    act  = relu(pre)                  # standard
    act  = relu(pre) * (pre > thr)    # jumprelu

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
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..util.io import atomic_write_json
from .supervised import ConceptSet

SAE_CFG = "cfg.json"
SAE_WEIGHTS = "sae_weights.safetensors"
ARCHITECTURES = ("standard", "jumprelu")
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
        raise FileNotFoundError(f"SAE folder not found: {spec} (give a folder or an HF repo id org/name[/subfolder])")
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
    if norm == "expected_average_only_in":
        warnings.warn(f"{folder}: normalize_activations=expected_average_only_in is applied as the identity "
                      "(SAELens folds its scaling factor into the saved weights)", stacklevel=2)
    return SAEWeights(
        W_enc=w["W_enc"], b_enc=w["b_enc"], W_dec=w["W_dec"], b_dec=w["b_dec"],
        threshold=w.get("threshold") if arch == "jumprelu" else None, architecture=arch,
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)), normalize_activations=norm,
        hook_name=hook_name_of(cfg), source=str(spec),
    )


@dataclass
class SAEConceptSet(ConceptSet):
    """SAE units as a concept set: ``vectors = W_enc.T``, ``bias = b_enc``, ``center = b_dec`` (or 0).

    ``scale`` is 1: SAE inputs are raw hidden states (after the SAE's own normalisation).
    """

    threshold: np.ndarray | None = None  # [C] JumpReLU thresholds
    architecture: str = "standard"
    input_norm: str = "none"
    hook_name: str = ""

    def subset(self, units: np.ndarray) -> "SAEConceptSet":
        """The same SAE restricted to ``units`` (activations of a unit do not depend on the others)."""
        u = np.asarray(units, dtype=np.int64)
        return dataclasses.replace(super().subset(u), threshold=None if self.threshold is None else self.threshold[u])

    def save(self, path: str | Path) -> None:
        super().save(path)
        extra = {"architecture": self.architecture, "input_norm": self.input_norm, "hook_name": self.hook_name}
        if self.threshold is not None:
            np.save(Path(path) / "threshold.npy", self.threshold.astype(np.float32))
        atomic_write_json(Path(path) / "sae.json", extra)

    @classmethod
    def load(cls, path: str | Path) -> "SAEConceptSet":
        base = ConceptSet.load(path)
        extra = json.loads((Path(path) / "sae.json").read_text())
        thr = Path(path) / "threshold.npy"
        return cls(**base.__dict__, threshold=np.load(thr) if thr.exists() else None, **extra)


def sae_concept_set(sae: SAEWeights, layer: int | None = None) -> SAEConceptSet:
    """Every unit of ``sae`` as a concept (names ``sae_unit_00042``) at its hook's store layer."""
    layer = sae_store_layer(sae.hook_name) if layer is None else layer
    width = max(5, len(str(sae.d_sae - 1)))
    center = sae.b_dec if sae.apply_b_dec_to_input else np.zeros(sae.d_in, np.float32)
    return SAEConceptSet(
        "sae", [f"sae_unit_{j:0{width}d}" for j in range(sae.d_sae)],
        np.ascontiguousarray(sae.W_enc.T, dtype=np.float32), sae.b_enc.astype(np.float32), "sae", layer,
        center.astype(np.float32), 1.0, threshold=sae.threshold, architecture=sae.architecture,
        input_norm=sae.normalize_activations, hook_name=sae.hook_name,
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
        act = torch.relu(pre)
        if self.cs.architecture == "jumprelu":
            act = act * (pre > self.thr)
        return act.cpu().numpy()
