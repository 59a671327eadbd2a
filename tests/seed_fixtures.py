"""Seed-layout fixture folders (``Data/<Dataset>/``): the first rows of each split of the reference
metadata plus ground-truth files written in exactly the seed's formats, with known amounts.

Every builder returns ``(folder, expected)`` where ``expected`` maps a concept to its in-concept
amount (words or pixels at mask resolution), fixed by construction: the tests compare the readers'
counts against these numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .conftest import REFERENCE_DATA

WORDS_PER_POSITIVE = 2  # text: the 2nd and 3rd word of each positive paragraph are annotated
CLEVR_OBJECT = (6, 10)  # CLEVR object rectangle: 6 rows x 10 columns
BRODEN_PIXELS = 4  # Broden: every positive concept owns 4 segmentation pixels
COCO_SUPER = {
    "person": ["person"],
    "vehicle": ["bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat"],
    "outdoor": ["traffic light", "fire hydrant", "stop sign", "parking meter", "bench"],
    "animal": ["bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe"],
    "accessory": ["backpack", "umbrella", "handbag", "tie", "suitcase"],
    "sports": ["frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove",
               "skateboard", "surfboard", "tennis racket"],
    "kitchen": ["bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl"],
    "food": ["banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake"],
    "furniture": ["chair", "couch", "potted plant", "bed", "dining table", "toilet"],
    "electronic": ["tv", "laptop", "mouse", "remote", "keyboard", "cell phone"],
    "appliance": ["microwave", "oven", "toaster", "sink", "refrigerator"],
    "indoor": ["book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush"],
}
VOCAB = ["the", "cat", "sat,", "on", "a", "warm", "mat.", "Oh", "great", "another", "Monday!", "we", "love",
         "waiting", "in", "line", "(again)", "so", "fun", "really"]


def head_rows(name: str, per_split: int) -> pd.DataFrame:
    """The first ``per_split`` rows of each split of a reference metadata file, in file order."""
    df = pd.read_csv(REFERENCE_DATA / name / "metadata.csv", dtype=str, keep_default_na=False)
    keep = np.zeros(len(df), dtype=bool)
    for s in ("train", "cal", "test"):
        keep[np.flatnonzero(df["split"].to_numpy() == s)[:per_split]] = True
    return df[keep].reset_index(drop=True)


def concept_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c not in ("image_path", "text_path", "split", "class")]


def text_folder(base: Path, name: str, per_split: int = 6, kind: str = "sarcasm") -> tuple[Path, dict[str, int]]:
    """Sarcasm / Augmented_iSarcasm / Augmented_GoEmotions with word- and paragraph-level files."""
    root = base / name
    (root / "paragraphs").mkdir(parents=True)
    df = head_rows(name, per_split)
    concepts = concept_columns(df)
    rng = np.random.default_rng(0)
    words_rows, para_rows = [], []
    for i, row in df.iterrows():
        words = [VOCAB[j] for j in rng.integers(0, len(VOCAB), size=8)]
        text = " ".join(words[:4]) + "\n" + " ".join(words[4:]) + "\n\n"
        (root / row["text_path"]).write_text(text, encoding="utf-8")
        for k, w in enumerate(words):
            rec = {"paragraph_id": i + 1, "sentence_id": 1 + (k >= 4), "word": w.strip(",.!()")}
            for c in concepts:
                rec[c] = int(row[c] == "1" and k in (1, 2))
            words_rows.append(rec)
        para_rows.append({"paragraph_id": i + 1, "text": text, **{c: int(row[c]) for c in concepts}})
    df.to_csv(root / "metadata.csv", index=False)
    pd.DataFrame(words_rows).to_csv(root / f"word_level_{kind}.csv", index=False)
    pd.DataFrame(para_rows).to_csv(root / f"paragraph_level_{kind}.csv", index=False)
    return root, {c: WORDS_PER_POSITIVE * int((df[c] == "1").sum()) for c in concepts}


def clevr_folder(base: Path, per_split: int = 6, with_masks: bool = True, size: tuple[int, int] = (24, 32)
                 ) -> tuple[Path, dict[str, int]]:
    """CLEVR: grey scenes with one coloured rectangle; ``object_segmentations.pt`` optional."""
    import torch
    from PIL import Image

    root = base / "CLEVR"
    df = head_rows("CLEVR", per_split)
    colour = {"red": (200, 30, 30), "green": (30, 180, 40), "blue": (30, 40, 210)}
    masks = []
    h, w = size
    oh, ow = CLEVR_OBJECT
    for i, row in df.iterrows():
        rng = np.random.default_rng(i)
        img = np.full((h, w, 3), 120, dtype=np.uint8) + rng.integers(0, 15, size=(h, w, 1), dtype=np.uint8)
        top, left = int(rng.integers(0, h - oh)), int(rng.integers(0, w - ow))
        img[top:top + oh, left:left + ow] = colour[row["class"].split("_")[0]]
        p = root / row["image_path"]
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(p)
        m = torch.zeros(h, w, dtype=torch.float32)
        m[top:top + oh, left:left + ow] = 1.0
        masks.append(m)
    df.to_csv(root / "metadata.csv", index=False)
    if with_masks:
        torch.save(masks, root / "object_segmentations.pt")
    return root, {c: oh * ow * int((df[c] == "1").sum()) for c in concept_columns(df)}


def coco_folder(base: Path, per_split: int = 4) -> tuple[Path, dict[str, int]]:
    """Coco + Coco-Cal: val2017 / train2017 instances files; each positive category is one box,
    drawn as a polygon (even rows) or an uncompressed crowd RLE (odd rows)."""
    from PIL import Image

    root = base / "Coco"
    df = head_rows("Coco", per_split)
    cats = [c for c in concept_columns(df) if c not in COCO_SUPER or c == "person"]
    sup_of = {c: s for s, cs in COCO_SUPER.items() for c in cs}
    categories = [{"id": k + 1, "name": c, "supercategory": sup_of[c]} for k, c in enumerate(cats)]
    cid = {c["name"]: c["id"] for c in categories}
    files = {"main": {"images": [], "annotations": [], "categories": categories},
             "cal": {"images": [], "annotations": [], "categories": categories}}
    expected = {c: 0 for c in concept_columns(df)}
    h, w = 30, 40
    for i, row in df.iterrows():
        part = "cal" if row["split"] == "cal" else "main"
        fn = Path(row["image_path"]).name
        p = root / row["image_path"]
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((h, w, 3), 90, dtype=np.uint8)).save(p)
        iid = 1000 + i
        files[part]["images"].append({"id": iid, "file_name": fn, "height": h, "width": w})
        pos = [c for c in cats if row[c] == "1"]
        sup_masks: dict[str, np.ndarray] = {}
        for k, c in enumerate(pos):
            x0, y0 = k % 8 * 5, k // 8 * 7  # disjoint 4 x 3 boxes
            box = np.zeros((h, w), dtype=bool)
            box[y0:y0 + 3, x0:x0 + 4] = True
            if i % 2 == 0:
                seg = [[x0, y0, x0 + 4, y0, x0 + 4, y0 + 3, x0, y0 + 3]]
                crowd = 0
            else:  # uncompressed RLE: run lengths over the column-major (Fortran) pixel order
                flat = box.flatten(order="F").astype(np.int8)
                change = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
                seg = {"counts": np.diff(np.concatenate([[0], change])).tolist(), "size": [h, w]}
                crowd = 1
            files[part]["annotations"].append({"id": len(files[part]["annotations"]) + 1 + 100000 * (part == "cal"),
                                               "image_id": iid, "category_id": cid[c], "segmentation": seg,
                                               "iscrowd": crowd, "area": 12.0, "bbox": [x0, y0, 4, 3]})
            expected[c] += 12
            sup_masks.setdefault(sup_of[c], np.zeros((h, w), dtype=bool))
            sup_masks[sup_of[c]] |= box
        for s, m in sup_masks.items():
            if s != "person":
                expected[s] += int(m.sum())
    df.to_csv(root / "metadata.csv", index=False)
    (root / "instances_val2017.json").write_text(json.dumps(files["main"]))
    cal = base / "Coco-Cal" / "annotations"
    cal.mkdir(parents=True)
    (cal / "instances_train2017.json").write_text(json.dumps(files["cal"]))
    return root, expected


def _broden_layout(df: pd.DataFrame, seg: int) -> dict[int, dict[str, tuple[int, np.ndarray]]]:
    """Per row: concept -> (plane number, pixel mask); concepts of one category never overlap."""
    out = {}
    for i, row in df.iterrows():
        per_cat: dict[str, int] = {}
        d = {}
        for c in concept_columns(df):
            if row[c] != "1":
                continue
            cat = c.split("::")[0]
            k = per_cat.get(cat, 0)
            per_cat[cat] = k + 1
            m = np.zeros(seg * seg, dtype=bool)
            plane = k % 2 if cat == "part" else 0
            slot = k // 2 if cat == "part" else k
            m[slot * BRODEN_PIXELS:(slot + 1) * BRODEN_PIXELS] = True
            d[c] = (plane, m.reshape(seg, seg))
        out[i] = d
    return out


def broden_folder(base: Path, name: str, per_split: int = 4, raw: bool = True, pt: bool = False,
                  seg: int = 16) -> tuple[Path, dict[str, int]]:
    """Broden-Pascal / Broden-OpenSurfaces: the raw release in ``broden1_224/`` and/or the seed's
    ``segmentations.pt``; images twice the segmentation size (as broden1_224: 224 / 112)."""
    import torch
    from PIL import Image

    root = base / name
    df = head_rows(name, per_split)
    layout = _broden_layout(df, seg)
    concepts = concept_columns(df)
    for _, row in df.iterrows():
        p = root / row["image_path"]
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((2 * seg, 2 * seg, 3), 70, dtype=np.uint8)).save(p)
    df.to_csv(root / "metadata.csv", index=False)
    names = sorted({c.split("::", 1)[1] for c in concepts})
    number = {n: 300 + k for k, n in enumerate(names)}  # > 255: the G channel matters
    if pt:
        torch.save([{c: torch.from_numpy(m.astype(np.uint8)) for c, (_, m) in layout[i].items()}
                    for i in range(len(df))], root / "segmentations.pt")
    if raw:
        rel = root / "broden1_224"
        (rel / "images").mkdir(parents=True)
        cats = sorted({c.split("::")[0] for c in concepts})
        pd.DataFrame({"number": [number[n] for n in names], "name": names,
                      "category": [";".join(f"{c.split('::')[0]}(1)" for c in concepts if c.split("::")[1] == n)
                                   for n in names], "frequency": 1, "coverage": 1.0, "syns": ""}
                     ).to_csv(rel / "label.csv", index=False)
        pd.DataFrame({"name": cats, "first": 1, "last": 1, "count": 1, "frequency": 1}).to_csv(
            rel / "category.csv", index=False)
        for cat in cats:
            mine = [c.split("::")[1] for c in concepts if c.startswith(cat + "::")]
            pd.DataFrame({"code": range(1, len(mine) + 1), "number": [number[n] for n in mine], "name": mine,
                          "frequency": 1, "coverage": 1.0}).to_csv(rel / f"c_{cat}.csv", index=False)
        index = []
        for i, row in df.iterrows():
            stem = row["image_path"].rsplit(".", 1)[0]
            rec = {"image": row["image_path"], "split": "train", "ih": 2 * seg, "iw": 2 * seg, "sh": seg, "sw": seg}
            for cat in ("color", "object", "part", "material"):
                planes = sorted({pl for c, (pl, _) in layout[i].items() if c.startswith(cat + "::")})
                names_ = []
                for pl in planes:
                    lab = np.zeros((seg, seg), dtype=np.int32)
                    for c, (pl2, m) in layout[i].items():
                        if c.startswith(cat + "::") and pl2 == pl:
                            lab[m] = number[c.split("::")[1]]
                    rgb = np.stack([lab % 256, lab // 256, np.zeros_like(lab)], axis=-1).astype(np.uint8)
                    fn = f"{stem}_{cat}{'_' + str(pl + 1) if cat == 'part' else ''}.png"
                    (rel / "images" / fn).parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(rgb).save(rel / "images" / fn)
                    names_.append(fn)
                rec[cat] = ";".join(names_)
            rec.update(scene="", texture="")
            index.append(rec)
        pd.DataFrame(index).to_csv(rel / "index.csv", index=False)
    return root, {c: BRODEN_PIXELS * int((df[c] == "1").sum()) for c in concepts}
