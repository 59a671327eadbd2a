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
        return out
