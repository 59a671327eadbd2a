"""Everything a run can check before any model loads, reported at once, one line per problem.

The config's types and ranges, the dataset (:func:`~.data.checks.load_and_check`, the very checks
``dataset-info`` makes: columns, label cells, spans, splits, paths inside its folder, regular
files only, text files readable as UTF-8, image and mask headers and sizes, concepts that can be
learnt and calibrated), texts the tokenizer reduces to no token, the model (resolves offline,
its config reads, the layers exist) and the devices.
Why up front: a bad file found after minutes of embedding, or a traceback from deep inside a
library, costs the user far more than a list of lines naming the key, column or file.
"""

from __future__ import annotations


from .concepts.types import ConceptType, concept_type
from .config import RunConfig
from .data.checks import load_and_check, warn_positives_without_spans
from .data.datasets import Dataset, DatasetError
from .evaluate.methods import PROMPT_METHODS
from .encoders.base import resolve_model_path
from .encoders.checks import empty_text_problems, model_problems
from .encoders.factory import model_shape
from .util.device import device_problem
from .util.errors import ValidationError


def check_run(cfg: RunConfig) -> Dataset:
    """The run's dataset, restricted to usable concepts; raises :class:`ValidationError` listing every problem."""
    problems: list[str] = []
    try:
        cfg.validate()
    except ValidationError as err:
        problems += err.problems
    why = device_problem(cfg.score_device)
    if why:
        problems.append(f"score_device: {why}")
    n_other = len(problems)  # config / device problems so far; dataset problems follow
    d = cfg.data
    checked = load_and_check(d.path, concepts=d.concepts, ground_truth=d.ground_truth, columns=d.columns(),
                             allow_outside_paths=d.allow_outside_paths, sample_labels_only=d.sample_labels_only,
                             skip_bad_images=d.skip_bad_images, clip_spans=d.clip_spans,
                             missing_labels=d.missing_labels)
    ds, problems = checked.ds, problems + checked.problems
    if ds is not None and checked.usable and len(checked.usable) < len(ds.concepts):
        ds = ds.subset_concepts(checked.usable)
    n_data = len(problems) - n_other
    found = model_problems(cfg.embed, ds.modality if ds is not None else None)
    problems += found
    if ds is not None and ds.modality == "text" and not found and n_data == 0:
        problems += empty_text_problems(cfg.embed, ds)  # the tokenizer only, before the store is created
        n_data = len(problems) - n_other - len(found)
    if set(PROMPT_METHODS) & set(cfg.detect.methods) and cfg.detect.prompt_model:
        try:
            resolve_model_path(cfg.detect.prompt_model)
        except (OSError, ImportError) as err:
            problems.append(f"detect.prompt_model: {err}")
    if ds is not None and not any(p.startswith("embed.model") for p in problems):  # a model config that reads
        problems += concept_type_problems(cfg, ds.modality)
    if problems:  # only dataset problems: the more specific DatasetError (also a ValidationError)
        raise DatasetError(problems) if n_data == len(problems) else ValidationError(problems)
    assert ds is not None
    warn_positives_without_spans(ds)
    return ds


def linsep_solver(cfg: RunConfig) -> str:
    """Separator training: logistic regression with bias (ours) or the seed's bias-free Adam."""
    return "seed" if cfg.protocol == "seed" else "logreg"


def concept_types(cfg: RunConfig) -> list[ConceptType]:
    """The run's concept types, built from its ``concepts`` options."""
    return [concept_type(t, cfg.concepts, cfg.seed, solver=linsep_solver(cfg)) for t in cfg.concepts.types]


def concept_type_problems(cfg: RunConfig, modality: str) -> list[str]:
    """Each concept type's own check (an SAE's folder, layer and width) against the model's
    config, one line per type that fails; no weights load."""
    try:
        types = concept_types(cfg)
    except (ValueError, TypeError) as err:
        return [f"concepts: {err}"]
    shape = None
    if any(not t.labelled for t in types):
        try:
            shape = model_shape(cfg.embed, modality)
        except (OSError, ValueError, LookupError):
            shape = None  # model_problems has said why; the checks that need no shape still run
    problems = []
    for t in types:
        try:
            t.check(shape)
        except (OSError, ValueError, LookupError) as err:
            problems.append(f"concepts.types {t.name}: {err}")
    return problems
