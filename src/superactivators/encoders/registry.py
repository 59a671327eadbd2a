"""What the embedding stage needs to know about each model family, in one table.

A :class:`ModelFamily` says, for one architecture family and one modality:

- which Hugging Face ``model_type`` values it covers and which class loads it;
- how many layers ("blocks") it has, read from its config, and where the block modules are,
  so that forward hooks can keep only the requested layers and stop the forward pass after
  the deepest one (:mod:`superactivators.encoders.capture`);
- what layer ``n`` (the last) means: the block output itself (vision encoders, as Hugging
  Face's ``hidden_states[-1]``) or the model output after the final norm (language models,
  where Hugging Face reports ``hidden_states[-1] = last_hidden_state``);
- which token is the global embedding (CLS, mean of valid tokens, last token) and how many
  non-patch tokens precede the patches of an image;
- the seed study's default layer sweep in percent through the model.

:func:`family_for` finds the family of a config, a local folder or a Hub id (the seed's four
checkpoints are known by id without any download). :data:`REFERENCE_CONFIGS` holds the
architecture numbers of those four checkpoints (no weights) so that layer tables and store
sizes can be computed and tested here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Literal, Sequence

from .layers import resolve_layers

if TYPE_CHECKING:
    from torch import nn

Modality = Literal["text", "image"]

#: Sweep used when a family has no seed default (percent through the model).
GENERIC_SWEEP: tuple[float, ...] = (25, 50, 75, 100)


class UnknownModelFamily(LookupError):
    """No family in the registry matches a model (for the given modality)."""


# --------------------------------------------------------------------------- config helpers


def get_path(obj: Any, path: str) -> Any:
    """``obj.a.b`` for ``path='a.b'`` (works on modules and configs); AttributeError names it."""
    cur = obj
    for part in path.split("."):
        if not hasattr(cur, part):
            raise AttributeError(f"{type(obj).__name__} has no {path!r} (missing {part!r})")
        cur = getattr(cur, part)
    return cur


def _num_hidden_layers(cfg: Any) -> int:
    return int(cfg.num_hidden_layers)


def _mllama_vision_layers(cfg: Any) -> int:
    return int(cfg.num_hidden_layers) + int(cfg.num_global_layers)


def _mllama_self_attention_indices(cfg: Any) -> list[int]:
    """Indices (in ``layers``) of the text blocks that run without an image."""
    cross = set(int(i) for i in (cfg.cross_attention_layers or []))
    return [i for i in range(int(cfg.num_hidden_layers)) if i not in cross]


def _mllama_text_layers(cfg: Any) -> int:
    return len(_mllama_self_attention_indices(cfg))


def _no_prefix(cfg: Any) -> int:
    return 0


def _one_cls(cfg: Any) -> int:
    return 1


def _cls_and_registers(cfg: Any) -> int:
    return 1 + int(getattr(cfg, "num_register_tokens", 0))


# --------------------------------------------------------------------------- block finders


def _module_lists(model: "nn.Module", length: int) -> list[tuple[str, "nn.Module"]]:
    from torch import nn

    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == length]


def generic_blocks(model: "nn.Module", n_layers: int) -> list["nn.Module"]:
    """The model's only ``ModuleList`` with ``n_layers`` entries (the transformer blocks).

    Module paths change between transformers versions (``encoder.layer`` vs ``layers``); the
    block list is the one structure they share. Ambiguity is an error, never a guess.
    """
    found = _module_lists(model, n_layers)
    if len(found) != 1:
        names = [n for n, _ in found] or "none"
        raise LookupError(
            f"{type(model).__name__}: expected exactly one list of {n_layers} blocks, found {names}"
        )
    return list(found[0][1])


def _blocks_at(model: "nn.Module", paths: Sequence[str]) -> "nn.Module":
    for p in paths:
        try:
            return get_path(model, p)
        except AttributeError:
            continue
    raise LookupError(f"{type(model).__name__}: none of the block lists {list(paths)} exists")


def _mllama_vision_blocks(model: "nn.Module", n_layers: int) -> list["nn.Module"]:
    """Local transformer blocks 1..32, then global transformer blocks 33..40."""
    local = _blocks_at(model, ("transformer.layers", "vision_model.transformer.layers"))
    glob = _blocks_at(model, ("global_transformer.layers", "vision_model.global_transformer.layers"))
    blocks = list(local) + list(glob)
    if len(blocks) != n_layers:
        raise LookupError(f"Mllama vision: {len(blocks)} blocks but the config says {n_layers}")
    return blocks


def _mllama_text_blocks(model: "nn.Module", n_layers: int) -> list["nn.Module"]:
    """The self-attention blocks of the language model (cross-attention ones skip without images)."""
    layers = _blocks_at(model, ("layers", "language_model.layers", "model.language_model.layers"))
    cfg = getattr(model, "config", None)
    cfg = getattr(cfg, "text_config", None) or cfg
    blocks = [layers[i] for i in _mllama_self_attention_indices(cfg)]
    if len(blocks) != n_layers:
        raise LookupError(f"Mllama text: {len(blocks)} self-attention blocks but expected {n_layers}")
    return blocks


# --------------------------------------------------------------------------- the family record


@dataclass(frozen=True)
class ModelFamily:
    """Per-family facts the encoders need; see the module docstring."""

    name: str
    model_types: tuple[str, ...]
    modality: Modality
    loader: str  # transformers class that loads the part we read ("AutoModel", "CLIPVisionModel", ...)
    sweep: tuple[float, ...] = GENERIC_SWEEP
    global_token: str = "auto"  # cls | mean | last | tile-cls-mean | auto (cls if the tokenizer has one)
    config_key: str | None = None  # sub-config holding the sizes ("vision_config", "text_config")
    count_layers: Callable[[Any], int] = _num_hidden_layers
    find_blocks: Callable[["nn.Module", int], list["nn.Module"]] = generic_blocks
    last_layer: Literal["block", "model_output"] = "block"
    prefix_tokens: Callable[[Any], int] = _no_prefix  # non-patch tokens before the patches (images)
    attn_implementation: str | None = None
    hub_ids: tuple[str, ...] = ()
    notes: str = ""

    # ---- config-derived numbers
    def sub_config(self, config: Any) -> Any:
        """The (sub-)config with this family's sizes; a bare sub-config passes through."""
        if self.config_key and hasattr(config, self.config_key):
            sub = getattr(config, self.config_key)
            if sub is not None:
                return sub
        return config

    def n_layers(self, config: Any) -> int:
        return int(self.count_layers(self.sub_config(config)))

    def hidden_size(self, config: Any) -> int:
        return int(self.sub_config(config).hidden_size)

    def n_prefix_tokens(self, config: Any) -> int:
        return int(self.prefix_tokens(self.sub_config(config)))

    def blocks(self, model: "nn.Module", config: Any | None = None) -> list["nn.Module"]:
        """Block modules in layer order: block ``k`` (1-based layer ``k``) is ``blocks[k - 1]``."""
        config = config if config is not None else model.config
        return self.find_blocks(model, self.n_layers(config))

    # ---- layers
    def sweep_spec(self) -> list[str]:
        """The default sweep as layer specs (``["4%", "25%", ...]``) for :func:`resolve_layers`."""
        return [f"{p:g}%" for p in self.sweep]

    def sweep_layers(self, config: Any) -> list[int]:
        """Block indices of the default sweep for a concrete config."""
        return resolve_layers(self.sweep_spec(), self.n_layers(config))

    def resolve(self, spec: Any, config: Any) -> list[int]:
        """Layer spec -> indices; ``"sweep"`` (or ``"default"``) means this family's default sweep."""
        if isinstance(spec, str) and spec.strip().lower() in ("sweep", "default"):
            spec = self.sweep_spec()
        return resolve_layers(spec, self.n_layers(config))


# --------------------------------------------------------------------------- the registry

FAMILIES: tuple[ModelFamily, ...] = (
    ModelFamily(
        name="clip-vision", model_types=("clip", "clip_vision_model"), modality="image",
        loader="CLIPVisionModel", sweep=(4, 25, 46, 67, 88, 100), global_token="cls",
        config_key="vision_config", prefix_tokens=_one_cls,
        hub_ids=("openai/clip-vit-large-patch14",),
        notes="vision tower; 224 px / 14-px patches = 16x16 = 256 patch tokens after the CLS token; "
              "global = the layer's CLS state (CLIP's image embedding is post_layernorm(CLS) of the "
              "last block, projected)",
    ),
    ModelFamily(
        name="mllama-vision", model_types=("mllama", "mllama_vision_model"), modality="image",
        loader="MllamaVisionModel", sweep=(2, 15, 28, 40, 52, 65, 78, 90, 100),
        global_token="tile-cls-mean", config_key="vision_config",
        count_layers=_mllama_vision_layers, find_blocks=_mllama_vision_blocks, prefix_tokens=_one_cls,
        hub_ids=("meta-llama/Llama-3.2-11B-Vision-Instruct", "meta-llama/Llama-3.2-11B-Vision"),
        notes="layers 1-32 = local transformer blocks, 33-40 = gated global blocks; each 560-px tile "
              "is 40x40 = 1600 patches after its CLS token; up to 4 tiles per image by aspect ratio "
              "(see superactivators.encoders.mllama); global = mean of the real tiles' CLS states",
    ),
    ModelFamily(
        name="mllama-text", model_types=("mllama", "mllama_text_model"), modality="text",
        loader="MllamaTextModel", sweep=(3, 19, 34, 50, 66, 81, 97, 100), global_token="mean",
        config_key="text_config", count_layers=_mllama_text_layers, find_blocks=_mllama_text_blocks,
        last_layer="model_output",
        hub_ids=("meta-llama/Llama-3.2-11B-Vision-Instruct", "meta-llama/Llama-3.2-11B-Vision"),
        notes="language model only; without an image its cross-attention blocks (3, 8, ..., 38) are "
              "skipped, so layers count the 32 self-attention blocks; BOS excluded; global = mean",
    ),
    ModelFamily(
        name="gemma2", model_types=("gemma2",), modality="text", loader="AutoModel",
        sweep=(4, 21, 39, 57, 75, 93, 100), global_token="mean", last_layer="model_output",
        attn_implementation="eager", hub_ids=("google/gemma-2-9b", "google/gemma-2-9b-it"),
        notes="eager attention (logit soft-capping); <bos> excluded; global = mean of valid tokens",
    ),
    ModelFamily(
        name="qwen3", model_types=("qwen3",), modality="text", loader="AutoModel",
        sweep=(3, 19, 34, 50, 66, 81, 97, 100), global_token="last", last_layer="model_output",
        hub_ids=("Qwen/Qwen3-Embedding-4B",),
        notes="global = last non-padding token (Qwen3-Embedding's own pooling; its tokenizer "
              "appends <|endoftext|>, which is excluded from the tokens but is the pooled one)",
    ),
    # ---- further families that work without per-model code (no seed sweep)
    ModelFamily(
        name="vit", model_types=("vit",), modality="image", loader="AutoModel", global_token="cls",
        prefix_tokens=_one_cls, notes="CLS then patches",
    ),
    ModelFamily(
        name="dinov2", model_types=("dinov2", "dinov2_with_registers"), modality="image",
        loader="AutoModel", global_token="cls", prefix_tokens=_cls_and_registers,
        notes="CLS, then num_register_tokens registers (with-registers variant), then patches",
    ),
    ModelFamily(
        name="siglip-vision", model_types=("siglip", "siglip_vision_model", "siglip2", "siglip2_vision_model"),
        modality="image", loader="SiglipVisionModel", global_token="mean", config_key="vision_config",
        notes="no CLS token: patches only; global = mean of patches (SigLIP's pooled output is an "
              "attention-pooling head, not a token)",
    ),
    ModelFamily(
        name="bert-like", model_types=("bert", "roberta", "xlm-roberta", "mpnet", "distilbert", "electra"),
        modality="text", loader="AutoModel", global_token="cls", last_layer="model_output",
        notes="encoder; [CLS]/[SEP] excluded from tokens, CLS state is the global embedding",
    ),
    ModelFamily(
        name="llama", model_types=("llama", "mistral"), modality="text", loader="AutoModel",
        sweep=(3, 19, 34, 50, 66, 81, 97, 100), global_token="mean", last_layer="model_output",
        hub_ids=("HuggingFaceTB/SmolLM2-135M-Instruct",),
        notes="Llama-architecture decoders (packaged: smollm2 = SmolLM2-135M-Instruct, 30 blocks); "
              "the seed's Llama-3.2 text sweep; BOS (when the tokenizer adds one) excluded; global = mean",
    ),
    ModelFamily(
        name="gemma3-text", model_types=("gemma3_text",), modality="text", loader="AutoModel",
        sweep=(4, 21, 39, 57, 75, 93, 100), global_token="mean", last_layer="model_output",
        hub_ids=("google/gemma-3-270m",),
        notes="Gemma-3 language model (packaged: gemma3-270m, 18 blocks); sliding-window and global "
              "attention layers, QK-norm (no soft-capping, so SDPA is exact); the seed's Gemma-2 sweep; "
              "<bos> excluded; global = mean",
    ),
    ModelFamily(
        name="qwen2", model_types=("qwen2",), modality="text", loader="AutoModel",
        sweep=(3, 19, 34, 50, 66, 81, 97, 100), global_token="mean", last_layer="model_output",
        hub_ids=("Qwen/Qwen2.5-Coder-0.5B-Instruct",),
        notes="Qwen2 / Qwen2.5 decoders (packaged: qwen2.5-0.5b = Qwen2.5-Coder-0.5B-Instruct, 24 "
              "blocks); the seed's Qwen3 sweep; no BOS is added; global = mean (a chat model, not an "
              "embedding model, so not Qwen3-Embedding's last-token pooling)",
    ),
    ModelFamily(
        name="decoder-lm", model_types=("gpt2", "gemma", "phi3"),
        modality="text", loader="AutoModel", global_token="mean", last_layer="model_output",
        notes="causal language model; last layer = after the final norm (as Hugging Face reports it)",
    ),
)

GENERIC_TEXT = ModelFamily(
    name="generic-text", model_types=(), modality="text", loader="AutoModel", global_token="auto",
    last_layer="model_output",
    notes="any other Hugging Face text model: blocks found as its single list of num_hidden_layers modules",
)


def families(modality: Modality | None = None) -> list[ModelFamily]:
    """Registered families, optionally of one modality."""
    return [f for f in FAMILIES if modality is None or f.modality == modality]


def get_family(name: str) -> ModelFamily:
    for f in (*FAMILIES, GENERIC_TEXT):
        if f.name == name:
            return f
    raise UnknownModelFamily(f"no model family {name!r}; known: {[f.name for f in FAMILIES]}")


def _pick(cands: list[ModelFamily], what: str, modality: Modality | None) -> ModelFamily:
    if modality is not None:
        cands = [f for f in cands if f.modality == modality]
    if len(cands) == 1:
        return cands[0]
    if not cands:
        if modality == "text":
            return GENERIC_TEXT
        raise UnknownModelFamily(f"{what}: no registered {modality or ''} model family".replace("  ", " "))
    raise UnknownModelFamily(
        f"{what} has several families ({[f.name for f in cands]}); say which modality (text or image)"
    )


def family_for(config_or_id: Any, modality: Modality | None = None, **load_kwargs: Any) -> ModelFamily:
    """The family of a config object, a local model folder or a Hub id.

    The seed's checkpoints are recognised by id without reading anything; any other string
    is read with ``AutoConfig.from_pretrained`` (``load_kwargs`` pass through, e.g.
    ``revision``). Models with both an image and a text side (Mllama) need ``modality``.
    An unregistered text model gets :data:`GENERIC_TEXT`; an unregistered image model raises
    :class:`UnknownModelFamily`.
    """
    if isinstance(config_or_id, str):
        key = config_or_id.strip().lower()
        by_id = [f for f in FAMILIES if key in (h.lower() for h in f.hub_ids)]
        if by_id:
            return _pick(by_id, config_or_id, modality)
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(config_or_id, **load_kwargs)
        what = f"{config_or_id} (model_type {config.model_type!r})"
    else:
        config = config_or_id
        what = f"model_type {getattr(config, 'model_type', None)!r}"
    mt = getattr(config, "model_type", None)
    return _pick([f for f in FAMILIES if mt in f.model_types], what, modality)


def load_class(family: ModelFamily) -> Any:
    """The transformers class named by ``family.loader``."""
    import transformers

    try:
        return getattr(transformers, family.loader)
    except AttributeError:
        raise ImportError(
            f"family {family.name} needs transformers.{family.loader}; upgrade transformers"
        ) from None


# --------------------------------------------------------------------------- the seed's checkpoints


@dataclass(frozen=True)
class ReferenceModel:
    """Architecture numbers of a known checkpoint (from its config.json; no weights)."""

    hub_id: str
    family: str
    config_class: str
    config: dict[str, Any]
    tokens_per_sample: str  # typical stored tokens per sample, in words
    tokens_typical: int  # the number used for the store-size estimate
    sizes: dict[str, int] = field(default_factory=dict)  # other input -> tokens cases

    def build_config(self) -> Any:
        import transformers

        return getattr(transformers, self.config_class)(**self.config)


_MLLAMA_11B = {
    "vision_config": {
        "hidden_size": 1280, "num_hidden_layers": 32, "num_global_layers": 8, "attention_heads": 16,
        "intermediate_size": 5120, "vision_output_dim": 7680, "image_size": 560, "patch_size": 14,
        "max_num_tiles": 4, "intermediate_layers_indices": [3, 7, 15, 23, 30],
    },
    "text_config": {
        "hidden_size": 4096, "num_hidden_layers": 40, "num_attention_heads": 32, "num_key_value_heads": 8,
        "intermediate_size": 14336, "vocab_size": 128256,
        "cross_attention_layers": [3, 8, 13, 18, 23, 28, 33, 38],
    },
}

REFERENCE_MODELS: tuple[ReferenceModel, ...] = (
    ReferenceModel(
        "openai/clip-vit-large-patch14", "clip-vision", "CLIPVisionConfig",
        {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096,
         "image_size": 224, "patch_size": 14},
        "256 patches (+ CLS as the global)", 256,
    ),
    ReferenceModel(
        "meta-llama/Llama-3.2-11B-Vision-Instruct", "mllama-vision", "MllamaConfig", _MLLAMA_11B,
        "1600 patches per tile x 1-4 tiles (padding patches stored, marked invalid)", 3200,
        {"1 tile (square image)": 1600, "2 tiles (4:3 photo, e.g. 640x480)": 3200, "4 tiles": 6400},
    ),
    ReferenceModel(
        "meta-llama/Llama-3.2-11B-Vision-Instruct", "mllama-text", "MllamaConfig", _MLLAMA_11B,
        "text tokens without <|begin_of_text|> (~200 for a paragraph)", 200,
    ),
    ReferenceModel(
        "google/gemma-2-9b", "gemma2", "Gemma2Config",
        {"hidden_size": 3584, "num_hidden_layers": 42, "num_attention_heads": 16, "num_key_value_heads": 8,
         "head_dim": 256, "intermediate_size": 14336, "vocab_size": 256000},
        "text tokens without <bos> (~200 for a paragraph)", 200,
    ),
    ReferenceModel(
        "Qwen/Qwen3-Embedding-4B", "qwen3", "Qwen3Config",
        {"hidden_size": 2560, "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8,
         "head_dim": 128, "intermediate_size": 9728, "vocab_size": 151665},
        "text tokens without the appended <|endoftext|> (~200 for a paragraph)", 200,
    ),
)


def store_bytes(n_samples: int, tokens_per_sample: int, hidden_size: int, bytes_per_value: int = 2) -> int:
    """Bytes of one layer's token states in the store (fp16 by default), globals excluded."""
    return int(n_samples) * int(tokens_per_sample) * int(hidden_size) * int(bytes_per_value)


@dataclass(frozen=True)
class LayerRow:
    """One row of the layer table: a model, its sweep in percent and the block indices."""

    hub_id: str
    family: str
    n_layers: int
    hidden_size: int
    sweep: tuple[float, ...]
    layers: tuple[int, ...]
    tokens_per_sample: str
    tokens_typical: int
    store_gb_5000: float  # one layer, 5,000 samples, fp16, tokens_typical tokens per sample


def reference_table(n_samples: int = 5000) -> list[LayerRow]:
    """Seed sweeps mapped to block indices for the seed's checkpoints, with store sizes."""
    rows = []
    for ref in REFERENCE_MODELS:
        fam = get_family(ref.family)
        cfg = ref.build_config()
        d = fam.hidden_size(cfg)
        rows.append(LayerRow(
            ref.hub_id, fam.name, fam.n_layers(cfg), d, fam.sweep, tuple(fam.sweep_layers(cfg)),
            ref.tokens_per_sample, ref.tokens_typical, store_bytes(n_samples, ref.tokens_typical, d) / 1e9,
        ))
    return rows


def format_families() -> str:
    """Human-readable list of families and their default sweeps (``superactivators models``)."""
    import textwrap  # noqa: PLC0415

    lines = ["Model families (layers: 'sweep' selects the default sweep; any 'P%', index or 'all' works):", ""]
    for f in FAMILIES:
        sweep = ", ".join(f"{p:g}" for p in f.sweep) + " %"
        lines.append(f"{f.name:14s} {f.modality:5s}  global={f.global_token:13s} sweep {sweep}")
        lines.append(f"{'':14s} model_type: {', '.join(f.model_types)}")
        if f.hub_ids:
            lines.append(f"{'':14s} known ids: {', '.join(f.hub_ids)}")
        lines += textwrap.wrap(f.notes, 100, initial_indent=" " * 15, subsequent_indent=" " * 15,
                               break_on_hyphens=False)
    lines += ["", "Seed checkpoints: sweep -> layer (the seed's rule: floor(p * n / 100), clamped to [1, n]):", ""]
    from ..util.console import text_table  # noqa: PLC0415

    rows = [[r.hub_id, r.family, r.n_layers, r.hidden_size, r.tokens_typical, f"{r.store_gb_5000:.1f}",
             ",".join(map(str, r.layers))] for r in reference_table()]
    lines.append(text_table(["model", "family", "n", "d", "tokens", "GB", "sweep layers"], rows,
                            numeric=[False, False, True, True, True, True, True]))
    lines += ["", "tokens = typical stored tokens per sample; GB = one layer of 5,000 samples in fp16.",
              "Mllama images: 1600 patches per 560-px tile, 1-4 tiles by aspect ratio (3200 = a 640x480 photo);",
              "text: ~200-token paragraphs. Details: docs/models.md."]
    return "\n".join(lines)


def expand_sweep(cfg: Any, modality: Modality) -> Any:
    """``cfg`` (an ``EmbedConfig``) with ``layers: sweep`` replaced by its family's sweep in percent.

    Lets encoders that call :func:`resolve_layers` directly accept ``"sweep"``; other layer
    specs pass through unchanged.
    """
    import dataclasses

    layers = cfg.layers
    if not (isinstance(layers, str) and layers.strip().lower() in ("sweep", "default")):
        return cfg
    from .base import resolve_model_path

    try:
        fam = family_for(resolve_model_path(cfg.model, cfg.revision), modality, revision=cfg.revision)
    except (UnknownModelFamily, OSError, ValueError) as err:
        raise ValueError(f"layers: sweep needs a known model family ({err}); give the layers explicitly") from None
    return dataclasses.replace(cfg, layers=fam.sweep_spec())
