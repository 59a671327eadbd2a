"""The ``localize`` section of a run config: which attribution baselines, and their budgets (no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field

ATTRIBUTIONS = ("integrated_gradients", "saliency", "gradcam", "occlusion", "lime", "kernel_shap", "rise")
TARGETS = ("global", "mean_token")


@dataclass
class LocalizeConfig:
    """Attribution baselines for localisation (opt-in: they run the model again).

    ``attributions``: any of :data:`ATTRIBUTIONS` (empty: none); ``attribution_budget``: perturbed
    samples per (sample, concept) for lime / kernel_shap / rise; ``attribution_samples``: detected
    samples per concept and split; ``attribution_layer``: ``best`` (per concept type, the layer of
    the best SuperActivator localisation F1 on ``cal``) or a layer index; ``attribution_types``:
    concept types (default every one with cosine or signed-distance scores; SAE units are skipped).
    """

    attributions: list[str] = field(default_factory=list)
    attribution_budget: int = 64
    attribution_samples: int = 16
    attribution_layer: str | int = "best"
    attribution_types: list[str] | None = None
    ig_steps: int = 16
    occlusion_window: int = 1
    batch_size: int = 16
    attribution_target: str = "global"  # or mean_token: the mean of the concept's token scores (the seed's)

    def problems(self) -> list[str]:
        out: list[str] = []
        if self.attributions:
            bad = [m for m in self.attributions if m not in ATTRIBUTIONS]
            if bad:
                out.append(f"localize.attributions: unknown {bad}; choose from {list(ATTRIBUTIONS)}")
            for k in ("attribution_budget", "attribution_samples", "ig_steps", "occlusion_window", "batch_size"):
                if int(getattr(self, k)) < 1:
                    out.append(f"localize.{k}: must be >= 1, got {getattr(self, k)}")
            lay = self.attribution_layer
            if not (lay == "best" or (isinstance(lay, int) and not isinstance(lay, bool))):
                out.append(f"localize.attribution_layer: must be 'best' or a layer index, got {lay!r}")
        return out
