"""Readers for the ground-truth files of the seed's ``Data/<Dataset>/`` folders.

``find_ground_truth`` recognises a seed folder from the files beside its ``metadata.csv``
(``data.ground_truth: auto``, the default) or reads the kind it is told:

=====================  ============================================================  =========
kind                   files                                                         datasets
=====================  ============================================================  =========
``seed-words``         ``word_level_*.csv`` + ``paragraph_level_*.csv``              Sarcasm, Augmented_iSarcasm, Augmented_GoEmotions
``clevr-masks``        ``object_segmentations.pt``                                   CLEVR
``clevr-images``       the images themselves (non-grey pixels; folder named CLEVR)   CLEVR
``coco``               ``instances_*.json`` (+ ``../Coco-Cal/annotations/``)         Coco
``broden-segmentations`` ``segmentations.pt``                                        Broden-Pascal, Broden-OpenSurfaces
``broden-release``     raw Broden: ``index.csv``, ``label.csv``, PNGs                Broden-Pascal, Broden-OpenSurfaces
``none``               sample labels only
=====================  ============================================================  =========
"""

from __future__ import annotations

from ..errors import DatasetError
from .base import GroundTruth, MaskTruth, MetaRows, TextTruth, fit_mask
from .broden import SEGMENTATIONS, BrodenRelease, BrodenSegmentations, broden_release
from .clevr import SEGMENTATIONS as CLEVR_MASKS
from .clevr import ClevrFromImages, ClevrMaskFile
from .coco import CocoTruth, coco_annotation_files
from .presets import SEED_PRESETS, resolve_concepts
from .text import read_seed_text, seed_text_files

KINDS = ("auto", "none", "seed-words", "clevr-masks", "clevr-images", "coco", "broden-segmentations",
         "broden-release")

__all__ = ["KINDS", "SEED_PRESETS", "GroundTruth", "MaskTruth", "MetaRows", "TextTruth", "find_ground_truth",
           "fit_mask", "resolve_concepts"]


def find_ground_truth(rows: MetaRows, modality: str, kind: str = "auto") -> GroundTruth | None:
    """The ground truth of a seed folder: detected (``auto``), a named ``kind``, or None (``none``)."""
    if kind not in KINDS:
        raise DatasetError(f"unknown data.ground_truth {kind!r}; choose from {', '.join(KINDS)}")
    if kind == "none":
        return None
    root = rows.root
    if modality == "text":
        if kind not in ("auto", "seed-words"):
            raise DatasetError(f"data.ground_truth {kind!r} is for images but {rows.source} is a text dataset")
        files = seed_text_files(root)
        if files is None:
            if kind == "auto":
                return None
            raise DatasetError(f"data.ground_truth 'seed-words': no word_level_*.csv in {root}")
        return read_seed_text(rows, *files)
    if kind == "seed-words":
        raise DatasetError(f"data.ground_truth 'seed-words' is for text but {rows.source} is an image dataset")
    main, cal = coco_annotation_files(root)
    release = broden_release(root)
    if kind == "auto":
        if (root / CLEVR_MASKS).exists():
            kind = "clevr-masks"
        elif (root / SEGMENTATIONS).exists():
            kind = "broden-segmentations"
        elif release is not None:
            kind = "broden-release"
        elif main or cal:
            kind = "coco"
        elif "clevr" in root.name.lower() and rows.image_paths and (root / rows.image_paths[0]).exists():
            kind = "clevr-images"
        else:
            return None
    if kind == "clevr-masks":
        return ClevrMaskFile(rows, root / CLEVR_MASKS)
    if kind == "clevr-images":
        return ClevrFromImages(rows)
    if kind == "coco":
        return CocoTruth(rows, main, cal)
    if kind == "broden-segmentations":
        return BrodenSegmentations(rows, root / SEGMENTATIONS)
    if release is None:
        raise DatasetError(f"data.ground_truth 'broden-release': no index.csv + label.csv in {root}, "
                           f"{root}/broden*/ or {root.parent}/broden*/")
    return BrodenRelease(rows, release)
