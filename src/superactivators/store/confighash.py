"""A run folder records the hash of the config its results came from (``config.hash``, beside
``config.yaml``); a run under the same name with a changed config refuses in one line instead of
overwriting them. ``force`` replaces them: the old results and the stale ``report/`` go, the
content-keyed caches (``stores/``, ``stages/``) stay, since they are reused only where they match."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from ..util.errors import ValidationError
from ..util.io import atomic_write_bytes, stable_hash

HASH_FILE = "config.hash"
# knobs that change how fast a run goes, not its numbers; where the folder is (output_dir) is the folder itself
NOT_HASHED = {"output_dir": None, "score_device": None,
              "embed": ("batch_size", "device", "device_map", "shard_tokens", "bucket_window", "trust_remote_code")}
RESULTS = ("config.yaml", HASH_FILE, "stages.json", "detection_metrics.csv", "detection_macro_f1.csv",
           "best_layers.csv", "localization_metrics.csv", "attribution_metrics.csv")


def _relevant(cfg: dict[str, Any]) -> dict[str, Any]:
    d = json.loads(json.dumps(cfg, default=str))  # a deep copy in plain values
    for key, sub in NOT_HASHED.items():
        if sub is None:
            d.pop(key, None)
        elif isinstance(d.get(key), dict):
            for k in sub:
                d[key].pop(k, None)
    return d


def config_hash(cfg: dict[str, Any]) -> str:
    """Hash of the settings that change a run's results (see ``NOT_HASHED`` for those left out)."""
    return stable_hash(_relevant(cfg), 16)


def _changed(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _changed(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(prefix + k)
    return out


def check_run_config(run_dir: Path, cfg: dict[str, Any], force: bool = False) -> None:
    """Refuse (one line) when ``run_dir`` holds results of a different config; with ``force``
    remove those results and ``report/`` first."""
    recorded = run_dir / HASH_FILE
    old_yaml = run_dir / "config.yaml"
    if recorded.exists():
        old = recorded.read_text().strip()
    elif old_yaml.exists():  # a run from before config.hash: hash its config.yaml
        old = config_hash(yaml.safe_load(old_yaml.read_text()) or {})
    else:
        return  # nothing finished here (a new folder, or an interrupted first run: resumed)
    if old == config_hash(cfg):
        return
    if not force:
        keys = []
        if old_yaml.exists():
            keys = _changed(_relevant(yaml.safe_load(old_yaml.read_text()) or {}), _relevant(cfg))
        what = f" (changed: {', '.join(keys[:6])}{', ...' if len(keys) > 6 else ''})" if keys else ""
        raise ValidationError(f"{run_dir.resolve()} holds the results of a different config{what}; pass --force to "
                              "replace them, or give the run another name")
    for name in RESULTS:
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir / "report", ignore_errors=True)


def record_run_config(run_dir: Path, cfg: dict[str, Any]) -> None:
    """Write ``config.hash`` for the config whose results were just written."""
    atomic_write_bytes(run_dir / HASH_FILE, (config_hash(cfg) + "\n").encode())
