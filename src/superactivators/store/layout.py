"""Every path of a run folder, named once.

A run folder holds::

    RUN_DIR/
      config.yaml                 the config the results beside it came from
      stages.json                 which stage folders and which store this config used
      detection_metrics.csv       one row per (layer, concept type, method, concept) + aggregates
      detection_macro_f1.csv      macro F1 per (layer, concept type) x method
      best_layers.csv             each concept at its best layer on cal, with bootstrap errors
      localization_metrics.csv    token-level localisation (data with masks / spans)
      attribution_metrics.csv     localisation of the attribution baselines
      report/                     the HTML report
      prompt/                     the prompting baseline's cached answers
      stores/NAME-KEY/            the token store (manifest.json, shards)
      stages/L{layer:02d}_{type}_{key}/     one (layer, concept type)
        concepts/ global_concepts/          concept vectors (safetensors + cfg.json)
        summary.npz                         the scoring pass (written last: the stage is finished)
        hist.npz curves.npz predictions.npz matches.csv localization_*.csv attribution_*
      stages/units/L{layer:02d}_{type}_{key}/   unlabelled types' units before matching

:class:`RunLayout` and :class:`StageFolder` are the only places these names are spelled;
:func:`cached` is the one "load it if it is there, else compute and save it" helper.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

from .tokens import MANIFEST

T = TypeVar("T")

_STAGE_RE = re.compile(r"^L(\d+)_(.+)_([0-9a-f]{8,})$")


@dataclass(frozen=True)
class StageFolder:
    """The files of one (layer, concept type) stage."""

    path: Path

    @property
    def concepts(self) -> Path:
        return self.path / "concepts"

    @property
    def global_concepts(self) -> Path:
        return self.path / "global_concepts"

    @property
    def summary(self) -> Path:
        """Written last: its presence means the stage is finished."""
        return self.path / "summary.npz"

    @property
    def unit_summary(self) -> Path:
        return self.path / "unit_summary.npz"

    @property
    def hist(self) -> Path:
        return self.path / "hist.npz"

    @property
    def curves(self) -> Path:
        return self.path / "curves.npz"

    @property
    def predictions(self) -> Path:
        """Test predictions and test / cal sample scores of every method (docs/layout.md)."""
        return self.path / "predictions.npz"

    @property
    def matches(self) -> Path:
        return self.path / "matches.csv"

    @property
    def attribution_maps(self) -> Path:
        return self.path / "attribution_maps.npz"

    def localization(self, key: str) -> Path:
        return self.path / f"localization_{key}.csv"

    @property
    def done(self) -> bool:
        return self.summary.exists()


def stage_name(layer: int, concept_type: str, key: str) -> str:
    """``L{layer:02d}_{type}_{key}``: the one spelling of a stage folder's name."""
    return f"L{layer:02d}_{concept_type}_{key}"


def parse_stage_name(name: str) -> tuple[int, str, str] | None:
    """``(layer, concept type, key)`` of a stage folder's name; ``None`` for any other name."""
    m = _STAGE_RE.match(name)
    return (int(m.group(1)), m.group(2), m.group(3)) if m else None


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run folder."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # --- files at the top -------------------------------------------------------------------
    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def stages_index(self) -> Path:
        return self.root / "stages.json"

    @property
    def lock(self) -> Path:
        return self.root / ".run.lock"

    @property
    def fingerprints(self) -> Path:
        """Size, mtime and content hash of each input file (so unchanged inputs are not re-read)."""
        return self.root / ".input_fingerprints.json"

    @property
    def detection_metrics(self) -> Path:
        return self.root / "detection_metrics.csv"

    @property
    def macro_f1(self) -> Path:
        return self.root / "detection_macro_f1.csv"

    @property
    def best_layers(self) -> Path:
        return self.root / "best_layers.csv"

    @property
    def localization_metrics(self) -> Path:
        return self.root / "localization_metrics.csv"

    @property
    def attribution_metrics(self) -> Path:
        return self.root / "attribution_metrics.csv"

    @property
    def result_files(self) -> tuple[Path, ...]:
        """The run-level files a finished run writes (each checksummed, store.artefacts)."""
        return (self.config, self.stages_index, self.detection_metrics, self.macro_f1, self.localization_metrics,
                self.attribution_metrics, self.best_layers)

    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def prompt_cache(self) -> Path:
        return self.root / "prompt"

    # --- folders ----------------------------------------------------------------------------
    @property
    def stores(self) -> Path:
        return self.root / "stores"

    def store(self, name: str) -> Path:
        return self.stores / name

    @property
    def stages(self) -> Path:
        return self.root / "stages"

    @property
    def units(self) -> Path:
        """Unlabelled concept types' fitted units, before matching (shared by their stages)."""
        return self.stages / "units"

    def stage(self, layer: int, concept_type: str, key: str) -> StageFolder:
        return StageFolder(self.stages / stage_name(layer, concept_type, key))

    def unit_stage(self, layer: int, concept_type: str, key: str) -> StageFolder:
        return StageFolder(self.units / stage_name(layer, concept_type, key))

    def stage_folders(self) -> list[tuple[tuple[int, str], StageFolder]]:
        """Every stage folder by name (finished or not), with its (layer, concept type)."""
        if not self.stages.is_dir():
            return []
        out = []
        for d in sorted(self.stages.iterdir()):
            parsed = parse_stage_name(d.name)
            if parsed is not None and d.is_dir():
                out.append(((parsed[0], parsed[1]), StageFolder(d)))
        return out

    def store_manifests(self) -> list[Path]:
        return sorted(self.stores.glob(f"*/{MANIFEST}"))

    def relative(self, path: Path) -> str:
        """``path`` relative to the run folder, as ``stages.json`` records it."""
        return Path(path).relative_to(self.root).as_posix()


def cached(path: Path, exists: Callable[[Path], bool], load: Callable[[Path], T], compute: Callable[[], T],
           save: Callable[[T, Path], None]) -> T:
    """The artefact at ``path``: loaded when ``exists(path)``, else computed and saved there first.

    The one spelling of "exists -> load, else compute -> save" for stage artefacts; ``save``
    must write atomically (a half-written file never passes ``exists``).
    """
    if exists(path):
        return load(path)
    value = compute()
    save(value, path)
    return value


@dataclass(frozen=True)
class BenchmarkLayout:
    """The paths of a ``superactivators benchmark`` output folder (docs/benchmarks.md)::

        OUTPUT_DIR/
          benchmark_metrics.csv        one row per (setting, concept type, method, concept) + aggregates
          regime_metrics.csv           --regime: one row per (setting, regime point, type, method, concept)
          regime_summary.csv           --regime: mean and std over repeats per knob, type and method
          regime.png                   --regime: F1 and AUROC against the knob
          data/SETTING/metadata.csv    each setting as a dataset
          data/regimes/POINT/SETTING/  the setting's labels at one regime point (same texts, same folder name)
          runs/RUN/                    the pipeline's run folders
    """

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def metrics(self) -> Path:
        return self.root / "benchmark_metrics.csv"

    @property
    def regime_metrics(self) -> Path:
        return self.root / "regime_metrics.csv"

    @property
    def regime_summary(self) -> Path:
        return self.root / "regime_summary.csv"

    @property
    def regime_figure(self) -> Path:
        return self.root / "regime.png"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    def data(self, setting: str) -> Path:
        return self.root / "data" / setting

    def regime_data(self, point: str, setting: str) -> Path:
        """The setting at a regime point: the folder keeps the setting's name, so the dataset's name
        (and the shared hidden states it keys) is the setting's."""
        return self.root / "data" / "regimes" / point / setting
