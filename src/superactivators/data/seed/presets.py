"""The seed's concept subsets, selectable by name (``data.concepts: seed`` or ``preset:NAME``).

The seed evaluates only some of each dataset's concept columns (``DATASET_TO_CONCEPTS`` in its
``utils/filter_datasets_utils.py``; COCO's list is also ``get_coco_concepts`` in
``utils/general_utils.py``): COCO's 29 frequent categories and supercategories, Pascal's 83
object/part labels, OpenSurfaces' 26 materials, CLEVR's 6, Sarcasm's ``sarcasm``, iSarcasm's
``sarcastic`` (the OR of its six kinds) and 14 of GoEmotions' 19 emotions. A preset keeps the
metadata's column order (the seed filters, it does not reorder).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import DatasetError

_COCO = (
    "accessory", "animal", "appliance", "bench", "book", "bottle", "bowl", "bus", "car", "chair", "couch",
    "cup", "dining table", "electronic", "food", "furniture", "indoor", "kitchen", "motorcycle", "outdoor",
    "person", "pizza", "potted plant", "sports", "train", "truck", "tv", "umbrella", "vehicle",
)
_PASCAL_OBJECTS = (
    "airplane", "bicycle", "bird", "boat", "body", "book", "building", "bus", "cap", "car", "cat", "cup", "dog",
    "door", "ear", "engine", "grass", "hair", "horse", "leg", "mirror", "motorbike", "mountain", "painting",
    "person", "pottedplant", "saddle", "screen", "sky", "sofa", "table", "track", "train", "tvmonitor", "wheel",
    "wood",
)
_PASCAL_PARTS = (
    "arm", "bag", "beak", "bottle", "box", "cabinet", "ceiling", "chain wheel", "chair", "coach", "curtain", "eye",
    "eyebrow", "fabric", "fence", "floor", "foot", "ground", "hand", "handle bar", "head", "headlight", "light",
    "mouth", "muzzle", "neck", "nose", "paw", "plant", "plate", "plaything", "pole", "pot", "road", "rock", "rope",
    "shelves", "sidewalk", "signboard", "stern", "tail", "torso", "tree", "wall", "water", "windowpane", "wing",
)
_OPENSURFACES = (
    "brick", "cardboard", "carpet", "ceramic", "concrete", "fabric", "food", "fur", "glass", "granite", "hair",
    "laminate", "leather", "metal", "mirror", "painted", "paper", "plastic-clear", "plastic-opaque", "rock",
    "rubber", "skin", "tile", "wallpaper", "wicker", "wood",
)
_GOEMOTIONS = (
    "confusion", "joy", "sadness", "anger", "love", "caring", "optimism", "amusement", "curiosity", "disapproval",
    "approval", "annoyance", "gratitude", "admiration",
)

#: preset name -> the seed's concept list for that dataset
SEED_PRESETS: dict[str, tuple[str, ...]] = {
    "coco": _COCO,
    "broden-pascal": tuple(f"object::{n}" for n in _PASCAL_OBJECTS) + tuple(f"part::{n}" for n in _PASCAL_PARTS),
    "broden-opensurfaces": tuple(f"material::{n}" for n in _OPENSURFACES),
    "clevr": ("color::blue", "color::green", "color::red", "shape::cube", "shape::cylinder", "shape::sphere"),
    "sarcasm": ("sarcasm",),
    "isarcasm": ("sarcastic",),
    "goemotions": _GOEMOTIONS,
}

#: the seed's folder names (and the names its scripts use) -> preset
FOLDER_PRESETS = {
    "coco": "coco", "coco-cal": "coco", "broden-pascal": "broden-pascal",
    "broden-opensurfaces": "broden-opensurfaces", "clevr": "clevr", "sarcasm": "sarcasm",
    "isarcasm": "isarcasm", "augmented_isarcasm": "isarcasm", "goemotions": "goemotions",
    "augmented_goemotions": "goemotions",
}


def preset_name(spec: str, folder: str) -> str | None:
    """The preset a ``data.concepts`` string names, None when it is not a preset spec.

    ``seed`` picks the preset of the dataset folder (``Data/<Dataset>/`` names as the seed's);
    ``preset:NAME`` (or ``preset:NAME-seed``) names one explicitly.
    """
    s = spec.strip().lower()
    if s == "seed":
        key = FOLDER_PRESETS.get(folder.lower())
        if key is None:
            raise DatasetError(
                f"data.concepts 'seed': folder {folder!r} is not one of the seed's datasets "
                f"({', '.join(sorted(FOLDER_PRESETS))}); name a preset: "
                + ", ".join(f"preset:{k}" for k in SEED_PRESETS))
        return key
    if s.startswith("preset:"):
        key = s.split(":", 1)[1].strip().removesuffix("-seed")
        if key not in SEED_PRESETS:
            raise DatasetError(f"unknown concept preset {spec!r}; choose from "
                               + ", ".join(f"preset:{k}" for k in SEED_PRESETS) + " or 'seed'")
        return key
    return None


def resolve_concepts(spec: str | Sequence[str] | None, available: Sequence[str], folder: str,
                     source: object) -> list[str] | None:
    """Concept names for ``data.concepts``: a list, a preset spec, or None (every column).

    A preset keeps ``available``'s order; a preset concept missing from ``available`` is an error
    naming the file (the preset belongs to another dataset or another version of it).
    """
    if spec is None:
        return None
    if isinstance(spec, str):
        key = preset_name(spec, folder)
        if key is None:
            return [spec]
        want = SEED_PRESETS[key]
        missing = [c for c in want if c not in available]
        if missing:
            raise DatasetError(f"{source}: concept preset {key!r} needs column(s) {missing[:8]}"
                               + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
                               + " that this metadata does not have")
        keep = set(want)
        return [c for c in available if c in keep]
    return list(spec)
