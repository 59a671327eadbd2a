"""The global embedding of a sample from its token states, by the rule :func:`~.base.pick_global_token` chose.

One function for the text and image encoders and the attribution adapters, so that the score an
attribution explains is the score of the global embedding the store holds.
"""

from __future__ import annotations

import torch


def pool_global(rule: str, states: torch.Tensor, mask: torch.Tensor | None = None, *, n_prefix: int = 0,
                last: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, d]`` from states ``[B, L, d]``.

    ``cls``: position 0. ``last``: position ``last[b]`` of each sample (its last attended token).
    ``mean``: the mean of the positions after the ``n_prefix`` CLS / register tokens where ``mask``
    (``[B, L - n_prefix]`` bool, aligned with them) is True; all of them without a mask.
    """
    if rule == "cls":
        return states[:, 0]
    if rule == "last":
        if last is None:
            raise ValueError("the last-token rule needs each sample's last position")
        return states[torch.arange(states.shape[0], device=states.device), last]
    if rule != "mean":
        raise ValueError(f"unknown global-token rule {rule!r}")
    body = states[:, n_prefix:]
    m = torch.ones(body.shape[:2], dtype=torch.bool, device=body.device) if mask is None else mask
    m = m.unsqueeze(-1).to(body.dtype)
    return (body * m).sum(1) / m.sum(1).clamp_min(1)
