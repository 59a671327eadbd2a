"""The whole pipeline, stage by stage, each stage cached under a key of its inputs.

``embed -> concepts -> score -> calibrate/detect -> evaluate``. Re-running skips finished
work; an interrupted run resumes (the store from its last completed shard, later stages from
their last completed (layer, concept type)). Every file is written under a temporary name and
renamed, so a half-written file never looks finished.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import yaml
from tqdm.auto import tqdm

from .concepts.supervised import ConceptSet
from .concepts.types import ConceptType, load_concepts
from .config import RunConfig
from .data.datasets import SAMPLE_LABELS_NOTE, Dataset
from .data.fingerprint import content_key
from .encoders.base import Encoder, ModelShape
from .encoders.factory import make_encoder, model_shape
from .evaluate.calibrate import tail_rule_key
from .evaluate.detect import macro_pivot, results_table, run_detection, save_predictions
from .evaluate.matching import UnitSummary, labelled_set, match_to_concepts, summarise_units
from .evaluate.methods import GLOBAL, PROMPT_METHOD_OF, SA, has_variant, is_baseline, short_label
from .evaluate.scoring import ScoreSummary, summarise
from .localize.attribution import AttributionOptions, run_attributions
from .localize.tokens import localize_stage
from .preflight import check_run, concept_types
from .prompting.lm import PromptConfig, prompt_scores
from .report.figdata import HistogramAccumulator, save_curves
from .stats.bestlayers import BestLayers, write_best_layers
from .store.artefacts import RUN_FILES, intact, load_json, record, remove_leftover_temps, unrecord
from .store.cache import cached_store
from .store.confighash import check_run_config, record_run_config
from .store.distributed import DistEnv, embed_data_parallel, rank_embed_config
from .store.layout import RunLayout, StageFolder, cached
from .store.runs import run_lock
from .store.tokens import MANIFEST, TokenStore, store_is_complete
from .util.console import frame_text
from .util.device import pick_device
from .util.io import atomic_write_bytes, atomic_write_json, stable_hash

log = logging.getLogger(__name__)



@dataclass
class RunResult:
    """Paths and tables a run produced."""

    run_dir: Path
    store: TokenStore
    table: pd.DataFrame
    macro: pd.DataFrame
    seconds: float
    stage_dirs: dict[str, Path] = field(default_factory=dict)
    localization: pd.DataFrame | None = None  # token-level localisation (data with masks/spans)
    attribution: pd.DataFrame | None = None  # localisation on the attributed test samples, every method
    best: BestLayers | None = None  # best_layers.csv: each concept at its best layer, with bootstrap errors

    def __repr__(self) -> str:  # a few lines, not the tables and the store
        from .report.results import run_result_text  # noqa: PLC0415

        return run_result_text(self)

    def _repr_html_(self) -> str:
        from .report.results import run_result_html  # noqa: PLC0415

        return run_result_html(self)


def prepare_dataset(cfg: RunConfig) -> Dataset:
    """Check config, dataset and model before anything loads (:func:`superactivators.preflight.check_run`);
    concepts that cannot be calibrated are dropped with a warning each."""
    return check_run(cfg)


def dataset_key(ds: Dataset, cache: Path | None = None) -> str:
    """Hash of the dataset's labels, splits and source, and of the content of every file it reads
    (texts, images, masks; :func:`superactivators.data.fingerprint.content_key`, cached in ``cache``)."""
    src = Path(ds.source).read_bytes() if ds.source else b""
    cols = [getattr(ds, "columns", None)] if getattr(ds, "columns", None) else []  # a CSV's column mapping
    return stable_hash([stable_hash(src.decode("utf-8", "replace")), ds.concepts, content_key(ds, cache), *cols], 10)


def store_dir_for(cfg: RunConfig, ds: Dataset) -> Path:
    extra = {"dataset": dataset_key(ds, RunLayout(cfg.run_dir).fingerprints)}
    if cfg.data.sample_labels_only:
        extra["sample_labels_only"] = True
    if cfg.protocol == "seed" and ds.modality == "image":
        extra["patch_truth"] = "any pixel"
    if ds.modality == "image":  # patch truth depends on these; skipped images change the samples
        extra.update(mask_coverage=cfg.data.mask_coverage, content_coverage=cfg.data.content_coverage,
                     samples=stable_hash(ds.image_paths, 10))
    if ds.truth is not None:  # the seed's ground-truth files change the token truth in the store
        extra["truth"] = ds.truth.describe()
    return RunLayout(cfg.run_dir).store(f"{ds.name}-{cfg.embed.key(extra)}")


def image_encoder_for_run(cfg: RunConfig, ds: Dataset, store_dir: Path) -> Encoder | None:
    """The run's image encoder with its mask options, or None (text data, or the store is already
    complete): the model is only loaded when there is embedding left to do."""
    if ds.modality != "image" or store_is_complete(store_dir):
        return None
    return make_encoder(cfg.embed, "image", cfg.mask_options())


def _fitted(path: Path, fit: Callable[[], ConceptSet]) -> ConceptSet:
    """The concept set saved at ``path``, fitted and saved first when missing."""
    return cached(path, ConceptSet.exists, load_concepts, fit, lambda cs, p: cs.save(p))


def concept_stage(store: TokenStore, layer: int, ct: ConceptType, cfg: RunConfig, device: str) -> Path:
    """Fit and score one (layer, concept type); the stage folder, cached under a key of its inputs.

    Every type goes through the same scoring pass and leaves the same artefacts: ``concepts/``
    (and ``global_concepts/``) named by the labelled concepts, ``hist.npz`` and ``summary.npz``
    (written last: the stage is finished). Unlabelled types first score their units (cached
    under ``stages/units/``, keyed like a labelled stage) and match them to the concepts on
    ``cal`` (``matches.csv``; the match depends on the grid and, under ``protocol: seed``, on the
    seed's threshold rule, so their stage key adds them); the
    matched set then takes the labelled path, with each baseline scored at its own matched unit
    (``ScoreSummary.method_scores``).
    """
    want_global = GLOBAL.name in cfg.detect.methods
    run = RunLayout(cfg.run_dir)
    key = stable_hash([store.path.name, ct.name, ct.cache_key(), cfg.seed, want_global,
                       f"rolling_window={cfg.detect.rolling_window}"]
                      + (["protocol=seed"] if cfg.protocol == "seed" else []))
    own: dict[str, np.ndarray] = {}
    if ct.labelled:
        stage = run.stage(layer, ct.name, key)
        if stage.done:
            return intact(stage.path)
        cs = _fitted(stage.concepts, lambda: ct.fit(store, layer, run.units))
        gcs = _fitted(stage.global_concepts, lambda: ct.fit_global(store, layer, run.units)) \
            if want_global else None
    else:
        # the match depends on the grid and on the threshold rule (seed only: ours keeps its keys)
        rule = [tail_rule_key(cfg.protocol)] if cfg.protocol == "seed" else []
        stage = run.stage(layer, ct.name, stable_hash([key, [float(g) for g in cfg.detect.grid]] + rule))
        if stage.done:
            return intact(stage.path)
        units = run.unit_stage(layer, ct.name, key)
        ucs = _fitted(units.concepts, lambda: ct.fit(store, layer, run.units))
        ugcs = _fitted(units.global_concepts, lambda: ct.fit_global(store, layer, run.units)) \
            if want_global else None
        us = cached(units.unit_summary, Path.exists, UnitSummary.load,
                    lambda: summarise_units(store, ucs, ugcs, seed=cfg.seed, device=device,
                                            rolling_window=cfg.detect.rolling_window), UnitSummary.save)
        m = match_to_concepts(us, store.labels, store.splits, store.concepts, cfg.detect.grid, cfg.protocol,
                              known=store.known)  # unknown labels (data.missing_labels: allow) are left out
        cs = labelled_set(ucs, m.tokens, store.concepts)
        cs.save(stage.concepts)
        gcs = labelled_set(ugcs, m.globals, store.concepts) if ugcs is not None and m.globals is not None else None
        if gcs is not None:
            gcs.save(stage.global_concepts)
        atomic_write_bytes(stage.matches, m.table.to_csv(index=False).encode())
        own = m.summary.method_scores
    hist = HistogramAccumulator.for_store(store, cs, seed=cfg.seed, device=device)  # figures
    summary = summarise(store, cs, gcs, seed=cfg.seed, device=device, extra=[hist],
                        independent_random=cfg.protocol == "seed", rolling_window=cfg.detect.rolling_window)
    summary.method_scores.update(own)
    hist.result().save(stage.hist)
    summary.save(stage.summary)
    record(stage.path)  # matches.csv and anything else not recorded by its writer
    return stage.path


def check_concept_types(cfg: RunConfig, ds: Dataset, sdir: Path) -> list[ConceptType]:
    """Every concept type's checks, before anything is embedded (the store's shape when it is
    already complete, else the model's config; no weights are loaded)."""
    types = concept_types(cfg)
    manifest = sdir / MANIFEST
    if manifest.exists() and (load_json(manifest) or {}).get("complete"):  # a damaged manifest names itself
        st = TokenStore(sdir)
        shape = ModelShape(tuple(st.layers), st.dim)
    else:
        shape = model_shape(cfg.embed, ds.modality) if any(not t.labelled for t in types) else None
    for t in types:
        t.check(shape)
    return types


def ask_prompt_model(cfg: RunConfig, ds: Dataset, cache_dir: Path, progress: bool) -> dict[str, np.ndarray]:
    """Scores of the prompting methods the run asks for (``prompt``: margin, ``prompt_seed``: the seed's)."""
    out = {}
    for protocol, method in PROMPT_METHOD_OF.items():
        if method in cfg.detect.methods:
            pcfg = PromptConfig(model=cfg.detect.prompt_model or "", protocol=protocol, chat=cfg.detect.prompt_chat,
                                max_new_tokens=cfg.detect.prompt_max_new_tokens,
                                batch_size=cfg.detect.prompt_batch_size, device=cfg.embed.device,
                                dtype=cfg.embed.dtype)
            out[method] = prompt_scores(ds, pcfg, cache_dir, progress=progress)
    return out


def hard_negatives_of(ds: Dataset, concepts: list[str], n: int) -> dict[str, np.ndarray] | None:
    """Concept -> ``[N]`` hard-negative marks of the dataset's ``hard_negative::`` columns, in store order."""
    hn = ds.hard_negatives()
    if hn is None:
        return None
    if len(hn) != n:
        log.warning("hard negatives left out: the dataset has %d samples, the store %d", len(hn), n)
        return None
    return {c: hn[:, ds.concepts.index(c)] for c in concepts if c in ds.concepts}


def run_pipeline(cfg: RunConfig, progress: bool = True, force: bool = False) -> RunResult:
    """Run every stage for every (layer, concept type); returns the metrics table.

    Nothing is written before config, dataset and model pass every check; the run folder is
    then held under a lock (a second run on it refuses), and ``config.yaml`` is written with
    the results, so it always describes the results beside it. A folder holding results of a
    different config refuses (``force``: they are replaced; :mod:`superactivators.store.confighash`).
    """
    t0 = time.time()
    ds = prepare_dataset(cfg)
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    with run_lock(cfg.run_dir):
        check_run_config(cfg.run_dir, cfg.to_dict(), force)
        return _run_locked(cfg, ds, progress, t0)


def _run_locked(cfg: RunConfig, ds: Dataset, progress: bool, t0: float) -> RunResult:
    run_dir = cfg.run_dir
    remove_leftover_temps(run_dir)  # a killed run's temporary files; this run holds the folder
    sdir = store_dir_for(cfg, ds)
    ctypes = check_concept_types(cfg, ds, sdir)
    store = cached_store(ds, cfg.embed, sdir, lambda: image_encoder_for_run(cfg, ds, sdir), cfg.mask_options(),
                         RunLayout(run_dir).fingerprints, progress)  # hidden states shared between runs (store/cache.py)
    for ct in ctypes:  # again on the real store: covers models whose shape is only known once built
        ct.check(ModelShape(tuple(store.layers), store.dim))
    if store.info.token_ground_truth == "sample":
        log.warning("%s: %s", ds.name, SAMPLE_LABELS_NOTE)
    device = pick_device(cfg.score_device)
    run = RunLayout(run_dir)
    prompted = ask_prompt_model(cfg, ds, run.prompt_cache, progress)  # method -> [N, C], once per run
    loc_tables: list[pd.DataFrame] = []
    attr_jobs: list[dict] = []
    hard = hard_negatives_of(ds, store.concepts, len(store.labels))
    tables, stage_index = [], []
    bar = tqdm(total=len(store.layers) * len(cfg.concepts.types), desc="stages", unit="stage", disable=not progress)
    for layer in store.layers:
        for ct in ctypes:
            bar.set_postfix_str(f"L{layer} {ct.name}")  # concepts, scoring pass, calibration, localisation
            if not ct.runs_at(layer):  # an SAE reads one layer
                bar.update()
                continue
            stage = StageFolder(concept_stage(store, layer, ct, cfg, device))
            summary = ScoreSummary.load(stage.summary)
            summary.sample_scores.update(prompted)
            results = run_detection(summary, store.labels, store.splits, cfg.detect.methods,
                                    cfg.detect.grid, cfg.detect.best_threshold, rule=cfg.protocol, known=store.known,
                                    fpr_targets=cfg.detect.fpr_targets)
            save_curves(stage.curves, results, cfg.detect.grid)  # each records its checksum
            save_predictions(stage.predictions, results, store.splits)
            stage_index.append({"layer": layer, "concept_type": ct.name, "dir": run.relative(stage.path),
                                "store": run.relative(sdir)})
            tables.append(results_table(results, cfg.detect.prevalence, hard, layer=layer, concept_type=ct.name))
            if cfg.detect.localize and store.info.token_ground_truth != "sample":
                loc_tables.append(localize_stage(
                    store, lambda: load_concepts(stage.concepts), summary, results,
                    cfg.detect.grid, stage.path, device, cfg.seed, rule=cfg.protocol, layer=layer,
                    concept_type=ct.name))
                attr_jobs.append({"layer": layer, "ctype": ct.name, "stage": stage.path, "summary": summary,
                                  "results": results, "loc": loc_tables[-1]})
            bar.update()
    bar.close()
    unrecord(run_dir, RUN_FILES)  # rewritten below, recorded again at the end
    atomic_write_bytes(run.config, yaml.safe_dump(cfg.to_dict(), sort_keys=False).encode())
    record_run_config(run_dir, cfg.to_dict())
    atomic_write_json(run.stages_index, stage_index)  # which stage folders this config used
    table = pd.concat(tables, ignore_index=True)
    atomic_write_bytes(run.detection_metrics, table.to_csv(index=False).encode())
    macro = macro_pivot(table)
    atomic_write_bytes(run.macro_f1, macro.to_csv().encode())
    loc = pd.concat(loc_tables, ignore_index=True) if loc_tables else None
    if loc is not None:
        atomic_write_bytes(run.localization_metrics, loc.to_csv(index=False).encode())
    attr = None
    if cfg.localize.attributions and attr_jobs:
        lc = cfg.localize
        opts = AttributionOptions.from_config(lc, cfg.seed)
        attr = run_attributions(lambda: make_encoder(cfg.embed, ds.modality, cfg.mask_options()), ds, store,
                                attr_jobs, lambda job: load_concepts(Path(job["stage"]) / "concepts"),
                                opts, cfg.detect.grid, lc.attribution_layer, lc.attribution_types, progress)
        if attr is not None:
            atomic_write_bytes(run.attribution_metrics, attr.to_csv(index=False).encode())
    best = write_best_layers(run_dir, seed=cfg.seed)  # per-concept best layers, weighted F1 +- bootstrap error
    for st in stage_index:  # the stage caches written above (localisation, attributions) and older stages' files
        record(run_dir / st["dir"])
    record(run_dir, RUN_FILES)
    return RunResult(run_dir, store, table, macro, time.time() - t0, {"store": sdir}, localization=loc,
                     attribution=attr, best=best)


def format_macro(macro: pd.DataFrame, variants: bool = False) -> str:
    """Macro-F1 table with the SuperActivator margin over the best baseline.

    The console shows the calibrated methods; their free-threshold (``@best_threshold``) and
    operating-point (``@fpr=``) rows are in the CSV and the report unless ``variants``.
    """
    df = macro.copy() if variants else macro[[c for c in macro.columns if not has_variant(c)]].copy()
    plain = [c for c in df.columns if is_baseline(c)]
    if SA in df.columns and plain:
        df.insert(1, "margin_vs_best_baseline", df[SA] - df[plain].max(axis=1))
    return frame_text(df, short=short_label)  # method names shortened, wrapped to 100 columns (full table: the CSV)


def suppress_noisy_warnings() -> None:
    warnings.filterwarnings("ignore", message=".*TypedStorage.*")
    np.seterr(invalid="ignore", divide="ignore")


def embed_command(cfg, progress: bool = True) -> TokenStore:
    """``superactivators embed CONFIG``: the run's token store, data-parallel under torchrun.

    The store lands where ``superactivators run`` with the same config looks for it, so a
    later single-process run reuses it and goes straight to the concept stages.
    """
    env = DistEnv.from_env()
    cfg = dataclasses.replace(cfg, embed=rank_embed_config(cfg.embed, env))
    ds = prepare_dataset(cfg)
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    # one process holds the run folder as a run does; under torchrun, rank 0 holds it for the
    # whole job (embed_data_parallel), since a lock per rank would refuse the job's other ranks
    with contextlib.nullcontext() if env.is_distributed else run_lock(cfg.run_dir):
        sdir = store_dir_for(cfg, ds)
        check_concept_types(cfg, ds, sdir)  # fail before the model loads
        if not env.is_distributed:  # one process: through the shared states cache, as a run
            return cached_store(ds, cfg.embed, sdir, lambda: image_encoder_for_run(cfg, ds, sdir),
                                cfg.mask_options(), RunLayout(cfg.run_dir).fingerprints, progress)
        encoder = image_encoder_for_run(cfg, ds, sdir)  # images: mask options travel with it
        return embed_data_parallel(ds, cfg.embed, sdir, env, encoder=encoder, progress=progress,
                                   lock_dir=cfg.run_dir if env.is_distributed else None)
