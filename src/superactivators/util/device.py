"""Device and compute-dtype choice, shared by encoders, scoring and prompting."""

from __future__ import annotations

import torch


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def device_problem(spec: str) -> str | None:
    """Why device ``spec`` cannot be used on this machine, or None (checked before a model loads)."""
    if spec in ("auto", "cpu"):
        return None
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            return f"{spec!r} but no CUDA GPU is available here (torch.cuda.is_available() is False); use auto or cpu"
        idx = int(spec.split(":", 1)[1]) if ":" in spec else 0
        if idx >= torch.cuda.device_count():
            return f"{spec!r} but this machine has {torch.cuda.device_count()} CUDA device(s)"
        return None
    if spec == "mps" and not torch.backends.mps.is_available():
        return "'mps' but the Apple MPS backend is not available here; use auto or cpu"
    return None
