"""Content fingerprints of a dataset's files, for cache keys that change when any input changes.

Each file's content hash (BLAKE2b) is recorded with its size and modification time in a small
JSON cache; a later run re-reads only the files whose size or mtime moved, so a rerun over
thousands of unchanged images costs one ``stat`` each. Why content and not names: rewriting
every test text or image must never return the cached metrics of the old files.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..util.io import atomic_write_json
from .datasets import Dataset
from .hf import DESCRIPTOR_SUFFIX

CHUNK = 1 << 20


def file_hash(path: Path) -> str:
    """BLAKE2b-128 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def input_files(ds: Dataset) -> list[Path]:
    """Every file a sample reads: texts, images, masks, seed ground truth, the mask label table, padding files."""
    if ds.source is not None and ds.source.name.endswith(DESCRIPTOR_SUFFIX):
        return []  # Parquet / Arrow / datasets: the descriptor (in the key) carries their content fingerprint
    rels: list[str] = []
    for col in (ds.text_paths, ds.image_paths, ds.mask_paths):
        if col is not None:
            rels += [p for p in col if str(p).strip()]
    for c in ds.metadata.columns:
        if str(c).startswith("mask::"):
            rels += [p for p in ds.metadata[c].tolist() if str(p).strip()]
    files = [ds.root / p for p in dict.fromkeys(rels)]
    if ds.truth is not None:  # seed ground-truth files (word annotations, COCO json, Broden index, ...)
        files += [Path(f) for f in ds.truth.files]
    if ds.modality == "image":
        files += sorted(p for p in ds.root.glob("mask_labels.json")) + sorted(ds.root.glob("patches_w_image_mask_inputsize_*.pt"))
    return files


def content_key(ds: Dataset, cache: Path | None = None) -> str:
    """One hash over the contents of every input file of ``ds`` (missing files hash as missing).

    ``cache`` (a JSON file) keeps ``path -> [size, mtime_ns, hash]`` between runs.
    """
    known: dict[str, list] = {}
    if cache is not None and cache.exists():
        try:
            known = json.loads(cache.read_text())
        except (ValueError, OSError):
            known = {}  # a damaged cache is only a cost: everything is re-hashed
    fresh: dict[str, list] = {}
    total = hashlib.blake2b(digest_size=16)
    for path in input_files(ds):
        key = str(path)
        try:
            st = os.stat(path)
        except OSError:
            total.update(f"{key}\0missing\n".encode())
            continue
        old = known.get(key)
        if old and old[0] == st.st_size and old[1] == st.st_mtime_ns:
            digest = old[2]
        else:
            digest = file_hash(path)
        fresh[key] = [st.st_size, st.st_mtime_ns, digest]
        total.update(f"{os.path.relpath(path, ds.root)}\0{digest}\n".encode())
    if cache is not None and fresh != known:
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(cache, fresh)
    return total.hexdigest()
