"""Every detection and localisation method, declared once (no torch, no numpy).

A detection method is a record: which per-sample score it thresholds, which ``cal`` population
its tail threshold comes from, and its kind. Every list of methods elsewhere is a filter over
:data:`DETECTION`, and code that needs to know what a method *means* reads its record instead
of testing its name. A result row may carry a *variant* after ``@``:
``max_token@best_threshold`` is ``max_token``'s score with a threshold chosen freely on ``cal``.

Kinds:

- ``tail``: SuperActivator variants; the sample score is the max token, the threshold comes
  from a token-level population (the in-concept tokens, or the top tokens of positive samples).
- ``baseline``: a pooled per-sample score (CLS / pooled embedding, max / mean / last / random
  token, max of rolling means, the prompted model's yes-no margin), calibrated by the same tail rule over the scores
  of the concept's positive ``cal`` samples.
- ``decision``: the score is already a 0/1 answer (the seed's generated Yes / No).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["tail", "baseline", "decision"]
#: where a method's tail threshold comes from:
#: ``in_concept_tokens`` the in-concept token activations on ``cal``;
#: ``top_tokens`` the top tokens of each positive ``cal`` sample (sample labels only);
#: ``positive_samples`` the method's own score on the concept's positive ``cal`` samples
#: (unless the summary carries a population of its own for it, e.g. ``random_token`` under
#: ``protocol: seed``); ``none`` for decisions.
Population = Literal["in_concept_tokens", "top_tokens", "positive_samples", "none"]

#: the separator of a result row's variant (``METHOD@VARIANT``)
VARIANT_SEP = "@"
BEST_THRESHOLD = "best_threshold"
#: the variant of a threshold set on the ``cal`` negatives: ``max_token@fpr=1%``
FPR_PREFIX = "fpr="


@dataclass(frozen=True)
class Method:
    """One detection method."""

    name: str
    label: str  # for tables and figures
    kind: Kind
    score: str  # the ``ScoreSummary.sample_scores`` entry it thresholds
    population: Population
    default: bool = True  # in ``detect.methods`` unless the user picks
    prompt_protocol: str | None = None  # asked of a language model under this prompting protocol
    in_estimator: bool = True  # offered by ``SuperActivatorDetector(method=...)``
    short: str = ""  # console name, so that a method table fits 100 columns (default: the name)

    @property
    def free_reference(self) -> bool:
        """Also reported with a freely chosen threshold (``@best_threshold``)."""
        return self.kind == "baseline"

    @property
    def fpr_reference(self) -> bool:
        """Also reported at thresholds set on the ``cal`` negatives (``@fpr=1%``, ``detect.fpr_targets``).

        The tail methods score the max token, so their rows would repeat ``max_token@fpr=...``."""
        return self.kind == "baseline"

    @property
    def token_threshold(self) -> bool:
        """Its threshold is comparable with single token activations (it thresholds the max token)."""
        return self.score == "max_token"


SUPERACTIVATOR = Method("superactivator", "SuperActivator", "tail", "max_token", "in_concept_tokens", short="SA")
SUPERACTIVATOR_SAMPLE = Method("superactivator_sample", "SuperActivator (sample labels)", "tail", "max_token",
                               "top_tokens", in_estimator=False, short="SA_sample")
GLOBAL = Method("global", "global (CLS/pooled)", "baseline", "global", "positive_samples")
MAX_TOKEN = Method("max_token", "max token", "baseline", "max_token", "positive_samples", short="max_tok")
MEAN_TOKEN = Method("mean_token", "mean token", "baseline", "mean_token", "positive_samples", short="mean_tok")
LAST_TOKEN = Method("last_token", "last token", "baseline", "last_token", "positive_samples", short="last_tok")
#: max over windows of ``detect.rolling_window`` valid tokens of the window mean (the Gemini probes
#: paper's pooling); windows never cross samples, shorter samples score their mean
ROLLING_MAX = Method("rolling_max", "max of rolling means", "baseline", "rolling_max", "positive_samples",
                     in_estimator=False, short="roll_max")
RANDOM_TOKEN = Method("random_token", "random token", "baseline", "random_token", "positive_samples",
                      short="rand_tok")
PROMPT = Method("prompt", "prompting (yes-no margin)", "baseline", "prompt", "positive_samples", default=False,
                prompt_protocol="margin", in_estimator=False)
PROMPT_SEED = Method("prompt_seed", "prompting (seed's Yes/No)", "decision", "prompt_seed", "none", default=False,
                     prompt_protocol="seed", in_estimator=False)

#: every detection method, in table order (SuperActivator first)
DETECTION: tuple[Method, ...] = (SUPERACTIVATOR, SUPERACTIVATOR_SAMPLE, GLOBAL, MAX_TOKEN, MEAN_TOKEN, LAST_TOKEN,
                                 ROLLING_MAX, RANDOM_TOKEN, PROMPT, PROMPT_SEED)
BY_NAME: dict[str, Method] = {m.name: m for m in DETECTION}

SA = SUPERACTIVATOR.name
#: the default ``detect.methods``
METHODS: tuple[str, ...] = tuple(m.name for m in DETECTION if m.default)
#: the pooled baselines computed from the token store (not the prompted model)
BASELINES: tuple[str, ...] = tuple(m.name for m in DETECTION if m.kind == "baseline" and m.prompt_protocol is None)
TAIL_METHODS: tuple[str, ...] = tuple(m.name for m in DETECTION if m.kind == "tail")
DECISION_METHODS: tuple[str, ...] = tuple(m.name for m in DETECTION if m.kind == "decision")
PROMPT_METHODS: tuple[str, ...] = tuple(m.name for m in DETECTION if m.prompt_protocol)
#: prompting protocol -> the method whose scores it produces
PROMPT_METHOD_OF: dict[str, str] = {m.prompt_protocol: m.name for m in DETECTION if m.prompt_protocol}
ALL_METHODS: tuple[str, ...] = tuple(BY_NAME)


def variant(name: str, kind: str = BEST_THRESHOLD) -> str:
    """The result-row name of ``name`` under a variant: ``variant("max_token") == "max_token@best_threshold"``."""
    return f"{name}{VARIANT_SEP}{kind}"


def fpr_variant(name: str, alpha: float) -> str:
    """``fpr_variant("max_token", 0.01) == "max_token@fpr=1%"`` (threshold: FPR <= alpha on cal negatives)."""
    return variant(name, f"{FPR_PREFIX}{round(alpha * 100, 10):g}%")


def fpr_of(name: str) -> float | None:
    """The target false-positive rate of a ``METHOD@fpr=1%`` row (``0.01``), ``None`` for other rows."""
    var = split(name)[1]
    if not (var.startswith(FPR_PREFIX) and var.endswith("%")):
        return None
    return float(var[len(FPR_PREFIX):-1]) / 100


def split(name: str) -> tuple[str, str]:
    """``(base method, variant)`` of a result-row name; the variant is ``""`` when there is none."""
    base, _, var = name.partition(VARIANT_SEP)
    return base, var


def base_of(name: str) -> str:
    """The method a result row belongs to, without its variant."""
    return split(name)[0]


def has_variant(name: str) -> bool:
    return VARIANT_SEP in name


def record(name: str) -> Method | None:
    """The record of a result row's base method (``None`` for a name no record declares)."""
    return BY_NAME.get(base_of(name))


def is_baseline(name: str) -> bool:
    """A plain (tail-calibrated) rival: not a SuperActivator variant, not a ``@`` variant row."""
    return name not in TAIL_METHODS and not has_variant(name)


def score_of(name: str) -> str:
    """The per-sample score a result row thresholds (the max token for the tail methods)."""
    rec = record(name)
    return rec.score if rec is not None else base_of(name)


def label(name: str) -> str:
    """Display name of a result row (``"max token @best thr."``, ``"max token @FPR<=1%"``)."""
    base, var = split(name)
    rec = BY_NAME.get(base)
    alpha = fpr_of(name)
    suffix = f" @FPR<={var[len(FPR_PREFIX):]}" if alpha is not None else (" @best thr." if var else "")
    return (rec.label if rec is not None else base) + suffix


#: console names of table columns that are not methods
SHORT_COLUMNS = {"margin_vs_best_baseline": "SA_margin", "concept_type": "type"}
#: console spelling of each variant
SHORT_VARIANTS = {BEST_THRESHOLD: "best"}


def short_label(name: str) -> str:
    """A result row's (or table column's) console name: ``max_token@best_threshold`` ->
    ``max_tok@best``, ``f1:max_token`` -> ``f1:max_tok``; short enough for a 100-column table."""
    metric, colon, method = str(name).rpartition(":")
    if colon and metric and not metric.endswith(":"):  # "metric:method", not a concept "a::b"
        return f"{metric}:{short_label(method)}"
    if name in SHORT_COLUMNS:
        return SHORT_COLUMNS[name]
    base, var = split(str(name))
    rec = BY_NAME.get(base) or LOC_BY_NAME.get(base)
    out = (rec.short or rec.name) if rec is not None else base
    return out + (f"{VARIANT_SEP}{SHORT_VARIANTS.get(var, var)}" if var else "")


def order(names: list[str] | tuple[str, ...]) -> list[str]:
    """Declared methods first in declaration order (each followed by its variants), then the rest sorted."""
    rank = {m: i for i, m in enumerate(ALL_METHODS)}
    return sorted(names, key=lambda n: (rank.get(base_of(n), len(rank)), base_of(n), has_variant(n), n))


# --- localisation -------------------------------------------------------------------------


@dataclass(frozen=True)
class LocMethod:
    """One localisation method (which tokens / patches carry a concept)."""

    name: str
    label: str
    activation_map: bool = False  # draws a per-token activation map in the report
    short: str | None = None  # console column name where ``name`` is long


LOC_SUPERACTIVATOR = LocMethod(SA, "SuperActivator", activation_map=True)
LOC_JOINT = LocMethod("superactivator_joint", "SuperActivator (joint N)", short="SA_joint")
LOC_TWOSTAGE = LocMethod("twostage", "two-stage", activation_map=True)
LOCALIZATION: tuple[LocMethod, ...] = (
    LOC_SUPERACTIVATOR, LOC_JOINT, LOC_TWOSTAGE, LocMethod("positive", "positive tokens"),
    LocMethod("topk", "top-k tokens"), LocMethod("random", "random tokens"),
    LocMethod("always_positive", "every token", short="every_tok"),
    LocMethod("always_negative", "no token", short="no_tok"),
)
LOC_METHODS: tuple[str, ...] = tuple(m.name for m in LOCALIZATION)
LOC_BY_NAME: dict[str, LocMethod] = {m.name: m for m in LOCALIZATION}
ACTIVATION_MAPS: tuple[str, ...] = tuple(m.name for m in LOCALIZATION if m.activation_map)

# --- aggregate rows of the result tables --------------------------------------------------
MACRO = "__macro__"
WEIGHTED = "__weighted__"
MICRO = "__micro__"  # pooled counts over concepts (best_layers.csv)
AGGREGATES = (MACRO, WEIGHTED, MICRO)
