"""The ``detect`` section of a run config: detection methods and the calibration grid (no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .calibrate import DEFAULT_GRID
from .methods import ALL_METHODS, METHODS, PROMPT_METHODS

PROMPT_CHAT = ("auto", "always", "never")


@dataclass
class DetectConfig:
    """Detection methods and the calibration grid (percent of in-concept tokens kept)."""

    methods: list[str] = field(default_factory=lambda: list(METHODS))
    grid: list[float] = field(default_factory=lambda: list(DEFAULT_GRID))
    best_threshold: bool = True
    rolling_window: int = 8  # tokens per window of the rolling_max baseline (max over windows of the window mean)
    localize: bool = True  # token-level localisation metrics when the data has masks or spans
    # causal LM / VLM asked by method 'prompt' (calibrated logit(yes) - logit(no)) and/or
    # 'prompt_seed' (the seed's question, a greedy generated Yes/No, scored as it is)
    prompt_model: str | None = None
    prompt_batch_size: int = 8
    prompt_chat: str = "auto"  # auto: through the tokenizer's chat template when it has one | always | never
    prompt_max_new_tokens: int = 16  # prompt_seed: tokens generated per answer
    # target false-positive rates: each baseline also at the smallest threshold with FPR <= alpha
    # on the cal negatives (rows METHOD@fpr=1%); [] for none
    fpr_targets: list[float] = field(default_factory=lambda: [0.01, 0.05])
    # share of positives to re-weight test precision / F1 to (e.g. 0.01); None: as the test split is
    prevalence: float | None = None

    def problems(self) -> list[str]:
        out: list[str] = []
        if self.prompt_batch_size < 1:
            out.append(f"detect.prompt_batch_size: must be >= 1, got {self.prompt_batch_size}")
        if not self.methods:
            out.append(f"detect.methods: empty; choose from {list(ALL_METHODS)}")
        bad = [m for m in self.methods if m not in ALL_METHODS]
        if bad:
            out.append(f"detect.methods: unknown detection method(s) {bad}; choose from {list(ALL_METHODS)}")
        if set(PROMPT_METHODS) & set(self.methods) and not self.prompt_model:
            out.append("detect.methods: 'prompt' / 'prompt_seed' needs detect.prompt_model (a causal LM or VLM id/folder)")
        if self.prompt_chat not in PROMPT_CHAT:
            out.append(f"detect.prompt_chat: must be auto, always or never, got {self.prompt_chat!r}")
        if self.rolling_window < 1:
            out.append(f"detect.rolling_window: must be >= 1, got {self.rolling_window}")
        if not self.grid:
            out.append("detect.grid: empty")
        bad_n = [g for g in self.grid if not 0 < g <= 100]
        if bad_n:
            out.append(f"detect.grid: percentages must be in (0, 100], got {bad_n}")
        bad_a = [a for a in self.fpr_targets if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0 < a < 1]
        if bad_a:
            out.append(f"detect.fpr_targets: false-positive rates must be numbers in (0, 1), got {bad_a}")
        if len(set(self.fpr_targets)) != len(self.fpr_targets):
            out.append(f"detect.fpr_targets: repeated rate(s) in {self.fpr_targets}")
        p = self.prevalence
        if p is not None and (isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p < 1):
            out.append(f"detect.prevalence: must be a share of positives in (0, 1) or null, got {p!r}")
        return out
