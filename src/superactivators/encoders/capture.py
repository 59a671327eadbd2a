"""Keep only the requested layers' hidden states, and stop the forward after the deepest one.

``output_hidden_states=True`` makes a model hold every layer's states for the whole batch
(41 tensors of ``[B, L, 4096]`` for an 11B language model) and runs every block even when only
the early layers are wanted. :class:`LayerTap` instead registers forward hooks on the block
modules of the requested layers only; the hook of the deepest requested block raises a
private exception that ends the forward pass right there, so later blocks never run and
their activations are never allocated.

Layer numbering follows Hugging Face's ``hidden_states``: layer ``k >= 1`` is the output of
block ``k`` (``blocks[k - 1]``), layer 0 the input of block 1 (the embedding output).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn


class _StopForward(Exception):
    """Raised from the hook of the deepest requested block; never escapes :meth:`LayerTap.run`."""


def _first_tensor(x: Any) -> torch.Tensor:
    """The hidden states in a block's output (a tensor, or the first item of a tuple)."""
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (tuple, list)) and x and isinstance(x[0], torch.Tensor):
        return x[0]
    raise TypeError(f"cannot find the hidden states in a block output of type {type(x).__name__}")


@dataclass
class Capture:
    """What one forward pass under a :class:`LayerTap` produced."""

    states: dict[int, torch.Tensor]  # layer -> [..., d] hidden states
    output: Any  # the model output when the forward ran to the end, else None
    stopped_early: bool


class LayerTap:
    """Hooks on ``blocks`` that keep ``layers`` and (optionally) stop after the deepest.

    ``need_output=True`` lets the forward finish (its output is needed, e.g. for the last
    layer of a language model, which Hugging Face reports after the final norm).
    """

    def __init__(self, blocks: Sequence[nn.Module], layers: Sequence[int], stop_early: bool = True,
                 need_output: bool = False):
        self.blocks = list(blocks)
        n = len(self.blocks)
        self.layers = sorted(set(int(l) for l in layers))
        if not self.layers:
            raise ValueError("LayerTap needs at least one layer")
        bad = [l for l in self.layers if not 0 <= l <= n]
        if bad:
            raise ValueError(f"layers {bad} out of range for a model with {n} blocks")
        self.deepest = self.layers[-1]
        self.stop_early = bool(stop_early) and not need_output and self.deepest < n

    def run(self, forward: Callable[[], Any]) -> Capture:
        """Call ``forward()`` with the hooks in place; hooks are always removed afterwards."""
        states: dict[int, torch.Tensor] = {}
        handles = []

        def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            if args:
                states[0] = args[0]
            else:  # keyword name differs between versions (hidden_states / hidden_state)
                states[0] = next(v for k, v in kwargs.items() if k.startswith("hidden_state"))

        def make_hook(layer: int) -> Callable:
            stop = self.stop_early and layer == self.deepest

            def hook(module: nn.Module, args: tuple, output: Any) -> None:
                states[layer] = _first_tensor(output)
                if stop:
                    raise _StopForward

            return hook

        try:
            if 0 in self.layers:
                handles.append(self.blocks[0].register_forward_pre_hook(pre_hook, with_kwargs=True))
            for layer in self.layers:
                if layer >= 1:
                    handles.append(self.blocks[layer - 1].register_forward_hook(make_hook(layer)))
            try:
                output, stopped = forward(), False
            except _StopForward:
                output, stopped = None, True
        finally:
            for h in handles:
                h.remove()
        missing = [l for l in self.layers if l not in states]
        if missing:
            raise RuntimeError(f"blocks of layers {missing} did not run in the forward pass")
        return Capture(states, output, stopped)
