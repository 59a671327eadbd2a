"""Text encoder that knows its model family: loading, layers, global token, memory.

:class:`TextEncoder` is :class:`superactivators.encoders.text.TextEncoder` with

- the family from :mod:`superactivators.encoders.registry` (Gemma-2, Qwen3, Mllama's language
  model, BERT-like encoders, decoder LMs, or a generic fallback) deciding which class loads
  the weights, how many layers there are, and which token is the global embedding;
- only the requested layers kept, through forward hooks, and the forward pass stopped after
  the deepest requested block (:class:`superactivators.encoders.capture.LayerTap`);
- ``use_cache=False`` (no key/value cache is built for a pure encoding pass);
- ``device_map`` (e.g. ``"auto"``) passed to ``from_pretrained`` for models larger than one
  device; compute dtype bf16 on GPU and fp32 on CPU unless ``EmbedConfig.dtype`` says otherwise;
- a load check: a checkpoint that leaves any weight of the loaded class uninitialised is an
  error (never embed with random weights).

Layer ``n`` (the last) of a language model is the model output after its final norm, as
Hugging Face reports ``hidden_states[-1]``; layers ``1..n-1`` are raw block outputs.
"""

from __future__ import annotations

import importlib.util
import inspect
import warnings
from typing import Any, Sequence

import numpy as np
import torch

from ..data.datasets import DatasetError
from ..util.device import pick_device, pick_dtype
from .base import EmbedConfig, EncodedBatch, load_text_tokenizer, pick_global_token, resolve_model_path
from .capture import LayerTap
from .pooling import pool_global
from .registry import ModelFamily, family_for, load_class

GLOBAL_TOKENS = ("cls", "mean", "last")


def compute_dtype(cfg: EmbedConfig, device: torch.device) -> torch.dtype:
    """``EmbedConfig.dtype``; with a ``device_map``, "auto" means bf16 when a GPU is present."""
    if cfg.device_map and cfg.dtype == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return pick_dtype(cfg.dtype, device)


def load_pretrained(cls: Any, path: str, cfg: EmbedConfig, dtype: torch.dtype, device: torch.device,
                    **extra: Any) -> torch.nn.Module:
    """``cls.from_pretrained`` with dtype / device_map, checking that no weight was left missing."""
    kw: dict[str, Any] = {"revision": cfg.revision, "dtype": dtype, "trust_remote_code": cfg.trust_remote_code,
                          "output_loading_info": True, **extra}
    if cfg.device_map:
        if importlib.util.find_spec("accelerate") is None:
            raise ImportError(f"device_map={cfg.device_map!r} needs accelerate: pip install accelerate")
        kw["device_map"] = cfg.device_map
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the load report lists the other tower's weights as "unexpected"
    try:
        model, info = cls.from_pretrained(path, **kw)
    finally:
        hf_logging.set_verbosity(level)
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise ValueError(
            f"{path}: {len(missing)} weights of {cls.__name__} are not in the checkpoint "
            f"(e.g. {missing[:3]}); refusing to embed with randomly initialised layers"
        )
    if not cfg.device_map:
        model = model.to(device)
    return model.eval()


class TextEncoder:
    """A Hugging Face text model read at chosen layers, the family deciding the details."""

    modality = "text"

    def __init__(self, cfg: EmbedConfig, family: ModelFamily | None = None):
        from transformers import AutoConfig, AutoModel

        self.cfg = cfg
        self.path = resolve_model_path(cfg.model, cfg.revision)
        device = pick_device(cfg.device)
        self.dtype = compute_dtype(cfg, device)
        config = AutoConfig.from_pretrained(self.path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
        self.family = family or family_for(config, "text")
        if self.family.modality != "text":
            raise ValueError(f"family {self.family.name} is for {self.family.modality}, not text")
        self.tokenizer = load_text_tokenizer(self.path, cfg)
        cls = AutoModel if self.family.loader == "AutoModel" else load_class(self.family)
        extra = {"attn_implementation": self.family.attn_implementation} if self.family.attn_implementation else {}
        self.model = load_pretrained(cls, self.path, cfg, self.dtype, device, **extra)
        self.device = self.model.get_input_embeddings().weight.device if cfg.device_map else device
        self.n_layers = self.family.n_layers(config)
        self.hidden_size = self.family.hidden_size(config)
        self.layers = self.family.resolve(cfg.layers, config)
        # the seed mean-pools every text model's tokens (Qwen3 too)
        self.global_token = pick_global_token(
            cfg.global_token, default="mean" if cfg.protocol == "seed" else self.family.global_token,
            has_cls=self.tokenizer.cls_token_id is not None, allowed=GLOBAL_TOKENS, model=cfg.model)
        try:
            self.blocks: list[torch.nn.Module] | None = self.family.blocks(self.model, self.model.config)
        except LookupError as err:
            warnings.warn(f"{cfg.model}: {err}; reading output_hidden_states (no early stop)", stacklevel=2)
            self.blocks = None
        params = inspect.signature(self.model.forward).parameters
        self._forward_kwargs = {"use_cache": False} if "use_cache" in params else {}
        self._drop_inputs = {"token_type_ids"} if "token_type_ids" not in params else set()

    def describe(self) -> dict:
        return {
            "id": self.cfg.model, "path": self.path, "revision": self.cfg.revision,
            "family": self.family.name, "model_class": type(self.model).__name__, "n_layers": self.n_layers,
            "hidden_size": self.hidden_size, "global_token": self.global_token,
            "compute_dtype": str(self.dtype).replace("torch.", ""),
            "stop_early": self.blocks is not None, "device_map": self.cfg.device_map,
            "special_tokens": self.cfg.protocol != "seed", "truncation": None if self.cfg.protocol == "seed" else self.cfg.max_length,
        }

    def _layer_states(self, batch: dict) -> dict[int, torch.Tensor]:
        batch = {k: v for k, v in batch.items() if k not in self._drop_inputs}
        if self.blocks is None:
            out = self.model(**batch, **self._forward_kwargs, output_hidden_states=True)
            return {l: out.hidden_states[l].to(self.device) for l in self.layers}
        last_from_output = self.family.last_layer == "model_output" and self.n_layers in self.layers
        tap = LayerTap(self.blocks, self.layers, stop_early=True, need_output=last_from_output)
        cap = tap.run(lambda: self.model(**batch, **self._forward_kwargs))
        if last_from_output:
            cap.states[self.n_layers] = cap.output.last_hidden_state
        return {l: cap.states[l].to(self.device) for l in self.layers}

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], context_chars: Sequence[int] | None = None) -> EncodedBatch:
        """Hidden states of the valid tokens; ``context_chars[i]``: the first characters of text ``i``
        are context, in the forward pass but not stored (a token ending inside them is dropped)."""
        # protocol "seed": as the seed study, no special tokens (no BOS / appended EOS) and no
        # truncation; ours: the tokenizer's own specials in the forward pass (never stored)
        enc = self.tokenizer(list(texts), padding=True, return_tensors="pt", **self._tokenizer_kwargs())
        offsets = enc.pop("offset_mapping").numpy()
        special = enc.pop("special_tokens_mask").numpy().astype(bool)
        return self._encode_padded(enc, offsets, special, texts, context_chars)

    def _tokenizer_kwargs(self) -> dict:
        seed = self.cfg.protocol == "seed"
        return {"truncation": not seed, "max_length": None if seed else self.cfg.max_length,
                "add_special_tokens": not seed, "return_offsets_mapping": True, "return_special_tokens_mask": True}

    def tokenise(self, texts: Sequence[str]):
        """``texts`` tokenised as :meth:`encode` does, unpadded, with character offsets and
        special-token masks: a window of texts is tokenised once, batched on these lengths and
        passed to :meth:`encode_tokenised` batch by batch."""
        return self.tokenizer(list(texts), **self._tokenizer_kwargs())

    @torch.inference_mode()
    def encode_tokenised(self, tokenised, rows: Sequence[int], texts: Sequence[str],
                         context_chars: Sequence[int] | None = None) -> EncodedBatch:
        """:meth:`encode` of the texts at ``rows`` of ``tokenised`` (:meth:`tokenise`'s output);
        ``texts``: those texts. The batch is padded with the tokenizer's own ``pad`` (the model
        inputs equal what :meth:`encode` builds, so the results are identical)."""
        rows = [int(i) for i in rows]
        names = [k for k in tokenised.keys() if k not in ("offset_mapping", "special_tokens_mask")]
        enc = self.tokenizer.pad({k: [tokenised[k][i] for i in rows] for k in names}, padding=True,
                                 return_tensors="pt")
        width = enc["input_ids"].shape[1]
        offsets = np.zeros((len(rows), width, 2), dtype=np.int64)  # padding: (0, 0), special, as the tokenizer pads
        special = np.ones((len(rows), width), dtype=bool)
        for j, i in enumerate(rows):
            n = len(tokenised["input_ids"][i])
            offsets[j, :n] = tokenised["offset_mapping"][i]
            special[j, :n] = tokenised["special_tokens_mask"][i]
        return self._encode_padded(enc, offsets, special, texts, context_chars)

    def _encode_padded(self, enc, offsets: np.ndarray, special: np.ndarray, texts: Sequence[str],
                       context_chars: Sequence[int] | None) -> EncodedBatch:
        """The forward pass and the stored tokens of a padded batch (model inputs ``enc``, per
        position character ``offsets`` and ``special``-token flags)."""
        attn = enc["attention_mask"].numpy().astype(bool)
        valid = attn & ~special
        if context_chars is not None:
            valid &= offsets[..., 1] > np.asarray(context_chars, dtype=np.int64)[:, None]
        lengths = valid.sum(axis=1)
        if (lengths == 0).any():
            raise DatasetError(f"a text produced no tokens: {texts[int(np.argmin(lengths))]!r}")
        batch = {k: v.to(self.device) for k, v in enc.items()}
        states = self._layer_states(batch)
        flat = torch.from_numpy(valid.reshape(-1)).to(self.device)
        vmask = torch.from_numpy(valid).to(self.device)
        # tokens leave the device already in the store dtype (half the bytes of float32 for
        # fp16 stores; bf16 -> fp16 equals bf16 -> fp32 -> fp16); on a GPU all layers are
        # copied asynchronously and waited for once
        store_dtype = getattr(torch, self.cfg.store_dtype)
        on_gpu = self.device.type == "cuda"
        last = torch.from_numpy(attn.sum(axis=1) - 1).to(self.device)  # the last attended position
        tokens, globals_ = {}, {}
        for layer in self.layers:
            hs = states[layer]  # [B, L, d]
            tokens[layer] = hs.reshape(-1, hs.shape[-1])[flat].to(store_dtype).to("cpu", non_blocking=on_gpu)
            g = pool_global(self.global_token, hs, vmask, last=last)
            globals_[layer] = g.float().cpu().numpy()
        if on_gpu:
            torch.cuda.current_stream(self.device).synchronize()
        # a text was cut when its sequence is full and its last kept token ends before its last character
        ends = np.where(valid, offsets[..., 1], 0).max(axis=1)
        full = attn.sum(axis=1) >= self.cfg.max_length
        truncated = full & (ends < np.array([len(t.rstrip()) for t in texts]))
        return EncodedBatch(
            tokens={l: t.numpy() for l, t in tokens.items()}, globals=globals_, lengths=lengths,
            valid=np.ones(int(lengths.sum()), bool),
            char_spans=offsets.reshape(-1, 2)[valid.reshape(-1)].astype(np.int32),
            truncated=truncated,
        )

    encode_inputs = encode  # the detector's input: strings
