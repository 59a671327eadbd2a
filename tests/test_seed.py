"""Readers of the seed's ground-truth files (superactivators.data.seed): each format on hand-made
fixtures with hand counts, the seven seed folders through dataset-info, presets, and bad input."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from superactivators.cli import main
from superactivators.data.datasets import DatasetError, load_dataset, truth_amounts
from superactivators.data.masks import MaskSource, check_images
from superactivators.data.seed import SEED_PRESETS
from superactivators.util.errors import ValidationError
from superactivators.data.seed.clevr import foreground

from . import seed_fixtures as fx
from .conftest import REFERENCE_DATA

needs_reference = pytest.mark.skipif(not REFERENCE_DATA.exists(), reason=f"no reference data at {REFERENCE_DATA}")


# --------------------------------------------------------------------------- text


def _text_set(root: Path, texts: list[str], words: list[dict], labels: list[int], para_text: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "paragraphs").mkdir(exist_ok=True)
    for i, t in enumerate(texts):
        (root / f"paragraphs/paragraph_{i + 1:06d}.txt").write_text(t)
    pd.DataFrame({"sarcasm": labels, "text_path": [f"paragraphs/paragraph_{i + 1:06d}.txt" for i in range(len(texts))],
                  "split": ["train", "cal", "test"][: len(texts)]}).to_csv(root / "metadata.csv", index=False)
    pd.DataFrame(words).to_csv(root / "word_level_sarcasm.csv", index=False)
    para = {"paragraph_id": range(1, len(texts) + 1), "sarcasm": labels}
    if para_text:
        para["text"] = texts
    pd.DataFrame(para).to_csv(root / "paragraph_level_sarcasm.csv", index=False)
    return root


TEXTS = ["Oh great, another Monday.\n\n", "I like tea"]
WORDS = [  # paragraph 1: words 'Oh' 'great,' 'another' 'Monday.'; paragraph 2 unannotated
    {"paragraph_id": 1, "sentence_id": 1, "word": "Oh", "sarcasm": 0},
    {"paragraph_id": 1, "sentence_id": 1, "word": "great", "sarcasm": 1},
    {"paragraph_id": 1, "sentence_id": 1, "word": "another", "sarcasm": 0},
    {"paragraph_id": 1, "sentence_id": 1, "word": "Monday", "sarcasm": 1},
]


def test_word_level_spans_and_tokens(tmp_path, tiny_bert):
    from transformers import AutoTokenizer

    from superactivators.store.truth import span_token_bits

    root = _text_set(tmp_path / "Sarcasm", TEXTS, WORDS, [1, 1])
    ds = load_dataset(root)
    assert ds.truth.kind == "seed-words"
    # hand: 'great,' = chars 3..9, 'Monday.' = chars 18..25
    assert ds.spans[0] == {"sarcasm": [(3, 9), (18, 25)]}
    assert ds.spans[1] == {}  # no word rows: sample-level fallback
    amounts = truth_amounts(ds)
    assert amounts.loc["sarcasm"].tolist() == [2, 1, 2]  # positives, with truth, words
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    enc = tok(TEXTS[0], add_special_tokens=False, return_offsets_mapping=True)
    offs = np.array(enc["offset_mapping"])
    bits = np.unpackbits(span_token_bits(ds, np.array([0]), np.array([len(offs)]), offs), axis=1)[:, 0]
    pieces = tok.convert_ids_to_tokens(enc["input_ids"])
    assert [p for p, b in zip(pieces, bits) if b] == ["great", ",", "monday", "."]


def test_paragraph_file_gives_the_labels(tmp_path):
    root = _text_set(tmp_path / "Sarcasm", TEXTS, WORDS, [1, 0])
    pd.DataFrame({"paragraph_id": [1, 2], "text": TEXTS, "sarcasm": [1, 1]}).to_csv(
        root / "paragraph_level_sarcasm.csv", index=False)
    with pytest.warns(UserWarning, match="differ"):
        ds = load_dataset(root)
    assert ds.labels[:, 0].tolist() == [1, 1]
    pd.DataFrame(WORDS).to_csv(root / "word_level_sarcasm.csv")  # with pandas' index column 'Unnamed: 0'
    with pytest.warns(UserWarning, match="differ"):
        assert load_dataset(root).spans[0] == {"sarcasm": [(3, 9), (18, 25)]}
    assert load_dataset(root, ground_truth="none").labels[:, 0].tolist() == [1, 0]


@pytest.mark.parametrize("case, match", [
    ("missing_para", "paragraph_level_sarcasm.csv"),
    ("truncated_para", r"paragraph_level_sarcasm.csv: 1 rows .*truncated: row 3 \(sample 2\) is missing"),
    ("unknown_sample", r"word_level_sarcasm.csv: row 6, column 'paragraph_id': 9 is not a sample"),
    ("unknown_concept", r"word_level_sarcasm.csv: row 1 \(header\): concept column\(s\) \['irony'\]"),
    ("word_not_in_text", r"word_level_sarcasm.csv: row 3: word 'grate' does not occur in word 2 of paragraph 1"),
    ("too_many_words", r"word_level_sarcasm.csv: row 6: paragraph 1 has 5 word rows but its text has 4 words"),
    ("bad_value", r"word_level_sarcasm.csv: row 2, column 'sarcasm': expected 0 or 1"),
    ("text_differs", r"paragraph_level_sarcasm.csv: row 3, column 'text' differs"),
])
def test_text_bad_input(tmp_path, case, match):
    words = [dict(w) for w in WORDS]
    if case == "unknown_sample":
        words.append({"paragraph_id": 9, "sentence_id": 1, "word": "x", "sarcasm": 0})
    if case == "word_not_in_text":
        words[1]["word"] = "grate"
    if case == "too_many_words":
        words.append({"paragraph_id": 1, "sentence_id": 1, "word": "", "sarcasm": 0})
    if case == "bad_value":
        words[0]["sarcasm"] = 2
    if case == "unknown_concept":
        for w in words:
            w["irony"] = 0
    root = _text_set(tmp_path / "Sarcasm", TEXTS, words, [1, 0])
    if case == "missing_para":
        (root / "paragraph_level_sarcasm.csv").unlink()
    if case == "truncated_para":
        pd.DataFrame({"paragraph_id": [1], "sarcasm": [1]}).to_csv(root / "paragraph_level_sarcasm.csv", index=False)
    if case == "text_differs":
        pd.DataFrame({"paragraph_id": [1, 2], "text": [TEXTS[0], "I like coffee"], "sarcasm": [1, 0]}).to_csv(
            root / "paragraph_level_sarcasm.csv", index=False)
    with pytest.raises(DatasetError, match=match):
        load_dataset(root)


def test_bad_truth_fails_before_the_model_and_writes_nothing(tmp_path):
    from superactivators.config import config_from_dict
    from superactivators.pipeline import run_pipeline

    words = [dict(w) for w in WORDS]
    words[3]["word"] = "Tuesday"
    root = _text_set(tmp_path / "Sarcasm", TEXTS, words, [1, 0])
    cfg = config_from_dict({"name": "bad", "output_dir": str(tmp_path / "runs"),
                            "data": {"path": str(root)}, "embed": {"model": str(tmp_path / "no-such-model")}})
    # every problem is listed before anything loads: the truth file's row and the missing model
    with pytest.raises(ValidationError, match="row 5: word 'Tuesday'") as err:
        run_pipeline(cfg, progress=False)
    assert any("no-such-model" in line for line in err.value.problems)
    assert not (tmp_path / "runs" / "bad" / "stores").exists()


# --------------------------------------------------------------------------- CLEVR


def test_clevr_grey_rule():
    px = np.array([[[100, 110, 118], [100, 121, 100], [0, 0, 20], [255, 234, 255]]], dtype=np.uint8)
    # max pairwise channel differences 18, 21, 20, 21 -> grey, colour, grey, colour
    assert foreground(px).tolist() == [[False, True, False, True]]


def test_clevr_mask_file_and_images(tmp_path):
    root, expected = fx.clevr_folder(tmp_path, per_split=2)
    ds = load_dataset(root)
    assert ds.truth.kind == "clevr-masks"
    oh, ow = fx.CLEVR_OBJECT
    got = ds.truth.masks(0, ["color::green", "shape::sphere"])  # row 0 is green_sphere
    assert ds.metadata["class"].iloc[0] == "green_sphere"
    assert {k: int(v.sum()) for k, v in got.items()} == {"color::green": oh * ow, "shape::sphere": oh * ow}
    amounts = truth_amounts(ds)
    assert amounts["pixels"].to_dict() == expected
    # without the .pt file, the same masks come from the images (objects are not grey, scenes are)
    (root / "object_segmentations.pt").unlink()
    ds2 = load_dataset(root)
    assert ds2.truth.kind == "clevr-images"
    assert truth_amounts(ds2)["pixels"].to_dict() == expected


def test_clevr_bad_mask_file(tmp_path):
    root, _ = fx.clevr_folder(tmp_path, per_split=2)
    masks = torch.load(root / "object_segmentations.pt")
    torch.save(masks[:-1], root / "object_segmentations.pt")
    with pytest.raises(DatasetError, match=r"object_segmentations.pt: 5 entries but .*metadata.csv has 6 rows"):
        load_dataset(root)
    masks[2] = torch.zeros(5, 7)
    torch.save(masks, root / "object_segmentations.pt")
    ds = load_dataset(root)
    with pytest.raises(DatasetError, match=r"object_segmentations.pt, entry 2 \(row 4 of .*mask is 7x5 but the image is 32x24"):
        check_images(ds)
    (root / "object_segmentations.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(DatasetError, match="cannot read object mask file"):
        load_dataset(root)


# --------------------------------------------------------------------------- COCO


def _coco(root: Path, anns: list[dict], images: list[dict] | None = None) -> Path:
    root.mkdir(parents=True)
    (root / "val2017").mkdir()
    Image.new("RGB", (6, 5)).save(root / "val2017/000000000007.jpg")
    pd.DataFrame({"cat": [1], "dog": [1], "animal": [1], "image_path": ["val2017/000000000007.jpg"],
                  "split": ["train"]}).to_csv(root / "metadata.csv", index=False)
    cats = [{"id": 17, "name": "cat", "supercategory": "animal"}, {"id": 18, "name": "dog", "supercategory": "animal"}]
    images = images or [{"id": 7, "file_name": "000000000007.jpg", "height": 5, "width": 6}]
    (root / "instances_val2017.json").write_text(json.dumps({"images": images, "annotations": anns,
                                                             "categories": cats}))
    return root


COCO_ANNS = [
    # polygon box x 1..4, y 0..2: 4 x 3 = 12 pixels
    {"id": 1, "image_id": 7, "category_id": 17, "iscrowd": 0, "segmentation": [[1, 0, 5, 0, 5, 3, 1, 3]]},
    # crowd region, uncompressed RLE, column-major over 5 rows: 10 off, 5 on (column 2 fully), rest off
    {"id": 2, "image_id": 7, "category_id": 18, "iscrowd": 1, "segmentation": {"counts": [10, 5, 15], "size": [5, 6]}},
    # a second cat polygon of 2 x 1 pixels at y 4, x 0..1 (OR-merged into 'cat')
    {"id": 3, "image_id": 7, "category_id": 17, "iscrowd": 0, "segmentation": [[0, 4, 2, 4, 2, 5, 0, 5]]},
]


def test_coco_polygons_rle_and_supercategories(tmp_path):
    root = _coco(tmp_path / "Coco", COCO_ANNS)
    ds = load_dataset(root)
    assert ds.truth.kind == "coco"
    m = ds.truth.masks(0, ["cat", "dog", "animal"])
    # cat 12 + 2 = 14; dog 5 (column 2); animal = union: column 2 overlaps the box in 3 pixels -> 14 + 5 - 3
    assert {k: int(v.sum()) for k, v in m.items()} == {"cat": 14, "dog": 5, "animal": 16}
    assert m["dog"][:, 2].all() and m["dog"].sum(axis=0).tolist() == [0, 0, 5, 0, 0, 0]
    assert truth_amounts(ds)["pixels"].tolist() == [14, 5, 16]  # the same from the RLEs, no mask drawn
    src = MaskSource(ds)
    masks, cols, known = src.concept_masks(0, (5, 6))
    assert known.all() and masks.sum(axis=(0, 1)).tolist() == [14, 5, 16]


def test_coco_cal_rows_read_the_cal_file(tmp_path):
    root, expected = fx.coco_folder(tmp_path, per_split=2)
    ds = load_dataset(root)
    cal = int(np.flatnonzero(ds.splits == "cal")[0])
    f, _ = ds.truth.where[cal]
    assert ds.truth.files[f].parent.parent.name == "Coco-Cal"
    assert truth_amounts(ds)["pixels"].to_dict() == expected


@pytest.mark.parametrize("case, match", [
    ("unknown_sample", r"row 2: image '000000000007.jpg' is in none of the COCO annotation files"),
    ("truncated", r"instances_val2017.json: not a valid COCO instances file"),
    ("size", r"instances_val2017.json: image 7 is 6x4 but row 2 of .*000000000007.jpg is 6x5 \(mask size mismatch"),
    ("unknown_concept", r"concept column\(s\) \['cow'\] are neither a category nor a supercategory"),
])
def test_coco_bad_input(tmp_path, case, match):
    images = [{"id": 7, "file_name": "000000000008.jpg" if case == "unknown_sample" else "000000000007.jpg",
               "height": 4 if case == "size" else 5, "width": 6}]
    root = _coco(tmp_path / "Coco", COCO_ANNS, images)
    if case == "truncated":
        p = root / "instances_val2017.json"
        p.write_text(p.read_text()[:50])
    if case == "unknown_concept":
        df = pd.read_csv(root / "metadata.csv")
        df.insert(0, "cow", 0)
        df.to_csv(root / "metadata.csv", index=False)
    with pytest.raises(DatasetError, match=match):
        check_images(load_dataset(root))


# --------------------------------------------------------------------------- Broden


def _broden_raw(root: Path, part_cell: str = "a/1_part_1.png;a/1_part_2.png", seg_size: int = 4) -> Path:
    """One 8x8 image, 4x4 segmentations; object 'dog' = 300 (R 44, G 1), part 'leg' = 301."""
    rel = root / "broden1_224"
    (rel / "images/a").mkdir(parents=True)
    (root / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "a/1.jpg")
    pd.DataFrame({"object::dog": [1], "part::leg": [1], "image_path": ["a/1.jpg"], "split": ["train"]}).to_csv(
        root / "metadata.csv", index=False)
    pd.DataFrame({"number": [300, 301], "name": ["dog", "leg"], "category": ["object(1)", "part(1)"],
                  "frequency": 1, "coverage": 1, "syns": ""}).to_csv(rel / "label.csv", index=False)
    pd.DataFrame({"code": [1], "number": [300], "name": ["dog"]}).to_csv(rel / "c_object.csv", index=False)
    pd.DataFrame({"code": [1], "number": [301], "name": ["leg"]}).to_csv(rel / "c_part.csv", index=False)

    def png(name: str, cells: list[tuple[int, int]], number: int) -> None:
        lab = np.zeros((seg_size, seg_size), dtype=np.int32)
        for y, x in cells:
            lab[y, x] = number
        lab[seg_size - 1, seg_size - 1] = 5  # another label: never counted
        Image.fromarray(np.stack([lab % 256, lab // 256, 0 * lab], -1).astype(np.uint8)).save(rel / "images" / name)

    png("a/1_object.png", [(0, 0), (0, 1), (1, 0)], 300)  # 3 pixels
    png("a/1_part_1.png", [(2, 2), (2, 3)], 301)  # 2 pixels
    png("a/1_part_2.png", [(2, 3), (3, 0)], 301)  # 2 pixels, one shared: union 3
    pd.DataFrame({"image": ["a/1.jpg"], "split": ["train"], "ih": [8], "iw": [8], "sh": [4], "sw": [4],
                  "color": [""], "object": ["a/1_object.png"], "part": [part_cell], "material": [""],
                  "scene": [""], "texture": [""]}).to_csv(rel / "index.csv", index=False)
    return root


def test_broden_release_label_encoding_and_part_planes(tmp_path):
    ds = load_dataset(_broden_raw(tmp_path / "Broden-Pascal"))
    assert ds.truth.kind == "broden-release"
    assert truth_amounts(ds)["pixels"].to_dict() == {"object::dog": 3, "part::leg": 3}
    masks, _, known = MaskSource(ds).concept_masks(0, (8, 8))  # 4x4 segmentation -> 8x8 image: x2
    assert known.all() and masks.sum(axis=(0, 1)).tolist() == [12, 12]
    # object pixels (0,0) (0,1) (1,0) become the 2x2 blocks at rows 0-1 x cols 0-3 and rows 2-3 x cols 0-1
    assert masks[:2, :4, 0].all() and masks[2:4, :2, 0].all() and masks[..., 0].sum() == 12


@pytest.mark.parametrize("case, match", [
    ("plane_missing", r"Broden segmentation not found: .*1_part_9.png \(row 2"),
    ("size", r"1_object.png: 5x5 but .*index.csv says 4x4 \(row 2 .*mask size mismatch"),
    ("unknown_sample", r"row 2: image 'a/2.jpg' is not in .*index.csv \(unknown sample\)"),
    ("unknown_concept", r"concept 'object::cow': label 'cow' is not in .*label.csv"),
])
def test_broden_release_bad_input(tmp_path, case, match):
    root = _broden_raw(tmp_path / "Broden-Pascal", part_cell="a/1_part_9.png" if case == "plane_missing"
                       else "a/1_part_1.png;a/1_part_2.png")
    if case == "size":
        Image.new("RGB", (5, 5)).save(root / "broden1_224/images/a/1_object.png")
    if case in ("unknown_sample", "unknown_concept"):
        df = pd.read_csv(root / "metadata.csv")
        if case == "unknown_sample":
            df["image_path"] = ["a/2.jpg"]
        else:
            df.insert(0, "object::cow", 0)
        df.to_csv(root / "metadata.csv", index=False)
    with pytest.raises(DatasetError, match=match):  # before any model: the up-front image check
        check_images(load_dataset(root))
    if case in ("plane_missing", "size"):
        with pytest.raises(DatasetError, match=match):  # and when the masks are read
            truth_amounts(load_dataset(root))


def test_broden_segmentations_pt(tmp_path):
    root, expected = fx.broden_folder(tmp_path, "Broden-OpenSurfaces", per_split=2, raw=True, pt=True)
    ds = load_dataset(root)  # both present: the seed's segmentations.pt wins, as the seed reads it
    assert ds.truth.kind == "broden-segmentations"
    assert truth_amounts(ds)["pixels"].to_dict() == expected
    raw = load_dataset(root, ground_truth="broden-release")
    assert truth_amounts(raw)["pixels"].to_dict() == expected
    segs = torch.load(root / "segmentations.pt")
    c = next(iter(segs[1]))
    torch.save([*segs[:1], {**segs[1], c: torch.ones(5, 5)}, *segs[2:]], root / "segmentations.pt")
    with pytest.raises(DatasetError, match=rf"segmentations.pt, entry 1 \(row 3 .*concept '{c}'.*mask is 5x5 but "
                                          r"the image is 32x32"):
        check_images(load_dataset(root))
    segs[1] = {**segs[1], "material::unobtainium": torch.ones(16, 16)}
    torch.save(segs, root / "segmentations.pt")
    with pytest.raises(DatasetError, match=r"segmentations.pt: entry 1 \(row 3 .*\['material::unobtainium'\]"):
        load_dataset(root)
    torch.save(segs[:3], root / "segmentations.pt")
    with pytest.raises(DatasetError, match=r"segmentations.pt: 3 entries but .* has 6 rows \(truncated"):
        load_dataset(root)


# --------------------------------------------------------------------------- the seven seed folders

SEVEN = {
    "Sarcasm": ("seed-words", lambda b: fx.text_folder(b, "Sarcasm")),
    "Augmented_iSarcasm": ("seed-words", lambda b: fx.text_folder(b, "Augmented_iSarcasm")),
    "Augmented_GoEmotions": ("seed-words", lambda b: fx.text_folder(b, "Augmented_GoEmotions", kind="emotion")),
    "CLEVR": ("clevr-masks", lambda b: fx.clevr_folder(b)),
    "Coco": ("coco", lambda b: fx.coco_folder(b)),
    "Broden-Pascal": ("broden-release", lambda b: fx.broden_folder(b, "Broden-Pascal")),
    "Broden-OpenSurfaces": ("broden-segmentations",
                            lambda b: fx.broden_folder(b, "Broden-OpenSurfaces", raw=False, pt=True)),
}


@needs_reference
@pytest.mark.parametrize("name", sorted(SEVEN))
def test_dataset_info_on_seed_folders(tmp_path, capsys, name):
    kind, build = SEVEN[name]
    root, expected = build(tmp_path)
    assert main(["dataset-info", str(root), "--concepts", "seed"]) == 0
    out = capsys.readouterr().out
    assert f"token-level ground truth: {kind}" in out
    ds = load_dataset(root, concepts="seed")
    table = truth_amounts(ds)
    unit = "words" if ds.modality == "text" else "pixels"
    assert f"token-level truth per concept (in-concept {unit}" in out
    assert table[unit].to_dict() == {c: expected[c] for c in ds.concepts}
    assert (table["with_truth"] == table["positives"]).all()
    assert table[unit].sum() > 0
    c = table[unit].idxmax()
    assert any(line.split() and line.split()[-1] == str(expected[c]) and c in line for line in out.splitlines())


# --------------------------------------------------------------------------- presets


@needs_reference
@pytest.mark.parametrize("folder, n", [("Coco", 29), ("Broden-Pascal", 83), ("Broden-OpenSurfaces", 26),
                                       ("CLEVR", 6), ("Sarcasm", 1), ("Augmented_iSarcasm", 1),
                                       ("Augmented_GoEmotions", 14)])
def test_seed_presets_on_reference_metadata(folder, n):
    full = load_dataset(REFERENCE_DATA / folder)
    ds = load_dataset(REFERENCE_DATA / folder, concepts="seed")
    assert len(ds.concepts) == n
    assert ds.concepts == [c for c in full.concepts if c in set(ds.concepts)]  # metadata order kept
    cols = [full.concepts.index(c) for c in ds.concepts]
    assert (ds.labels == full.labels[:, cols]).all()


def test_preset_names_and_errors(tmp_path):
    assert {k: len(v) for k, v in SEED_PRESETS.items()} == {
        "coco": 29, "broden-pascal": 83, "broden-opensurfaces": 26, "clevr": 6, "sarcasm": 1, "isarcasm": 1,
        "goemotions": 14}
    assert SEED_PRESETS["isarcasm"] == ("sarcastic",)
    assert sum(c.startswith("object::") for c in SEED_PRESETS["broden-pascal"]) == 36
    root = _text_set(tmp_path / "mine", TEXTS, WORDS, [1, 0])
    assert load_dataset(root, concepts="preset:sarcasm-seed").concepts == ["sarcasm"]
    with pytest.raises(DatasetError, match="folder 'mine' is not one of the seed's datasets"):
        load_dataset(root, concepts="seed")
    with pytest.raises(DatasetError, match="unknown concept preset 'preset:nope'"):
        load_dataset(root, concepts="preset:nope")
    with pytest.raises(DatasetError, match=r"concept preset 'coco' needs column\(s\) \['accessory'"):
        load_dataset(root, concepts="preset:coco")


# --------------------------------------------------------------------------- end to end


def test_text_run_stores_word_truth(tmp_path, tiny_bert):
    from superactivators.config import config_from_dict
    from superactivators.pipeline import run_pipeline

    root, expected = fx.text_folder(tmp_path, "Sarcasm", per_split=8)
    cfg = config_from_dict({"name": "t", "output_dir": str(tmp_path / "runs"), "score_device": "cpu",
                            "data": {"path": str(root), "concepts": "seed"},
                            "embed": {"model": str(tiny_bert), "layers": [2], "batch_size": 8},
                            "concepts": {"types": ["mean"]}, "detect": {"grid": [10, 50]}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = run_pipeline(cfg, progress=False)
    st = res.store
    assert st.info.token_ground_truth == "spans" and st.info.dataset["truth"].startswith("seed-words")
    gt = np.concatenate([st.token_labels(s)[:, 0] for s in st.shards])
    pos_tokens = sum(int(st.offsets[i + 1] - st.offsets[i]) for i in np.flatnonzero(st.labels[:, 0]))
    # 2 annotated words per positive paragraph, each one or a few word pieces: far fewer than all tokens
    assert expected["sarcasm"] <= int(gt.sum()) < pos_tokens


def test_image_run_stores_mask_truth(tmp_path):
    from transformers import ViTConfig, ViTImageProcessorPil, ViTModel

    from superactivators.config import config_from_dict
    from superactivators.pipeline import run_pipeline

    root, _ = fx.clevr_folder(tmp_path, per_split=8, size=(32, 32))
    torch.manual_seed(0)
    ViTModel(ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       image_size=32, patch_size=8), add_pooling_layer=False).eval().save_pretrained(tmp_path / "vit")
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "vit")
    cfg = config_from_dict({"name": "i", "output_dir": str(tmp_path / "runs"), "score_device": "cpu",
                            "data": {"path": str(root), "concepts": "seed", "mask_coverage": 0.2},
                            "embed": {"model": str(tmp_path / "vit"), "layers": [2], "batch_size": 8},
                            "concepts": {"types": ["mean"]}, "detect": {"grid": [10, 50]}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = run_pipeline(cfg, progress=False)
    st = res.store
    assert st.info.token_ground_truth == "masks" and st.info.dataset["truth"].startswith("clevr-masks")
    gt = np.concatenate([st.token_labels(s) for s in st.shards])
    per_sample = gt.reshape(st.n_samples, 16, -1).sum(axis=1)  # 4 x 4 patches
    pos = st.labels > 0
    # a 6 x 10 object spans at most 2 x 3 of the 8x8 patches and puts >= 3 x 5 = 15 px (> 20 % of 64) in one
    assert (per_sample[pos] >= 1).all() and (per_sample[pos] <= 6).all() and (per_sample[~pos] == 0).all()


def test_seed_protocol_gives_whitespace_tokens_to_the_previous_word(tmp_path, tiny_gpt2):
    from transformers import AutoTokenizer

    from superactivators.store.truth import span_token_bits

    ds = load_dataset(_text_set(tmp_path / "Sarcasm", TEXTS, WORDS, [1, 1]))
    tok = AutoTokenizer.from_pretrained(tiny_gpt2)
    enc = tok(TEXTS[0], add_special_tokens=False, return_offsets_mapping=True)
    offs = np.array(enc["offset_mapping"])
    pieces = tok.convert_ids_to_tokens(enc["input_ids"])

    def marked(texts):
        bits = np.unpackbits(span_token_bits(ds, np.array([0]), np.array([len(offs)]), offs, texts), axis=1)[:, 0]
        return [(p, tuple(o)) for p, o, b in zip(pieces, offs.tolist(), bits) if b]

    ours, seed = marked(None), marked([TEXTS[0]])
    # ours: tokens overlapping 'great,' [3, 9) or 'Monday.' [18, 25) with a non-empty range
    assert ours == [(p, tuple(o)) for p, o in zip(pieces, offs.tolist()) if o[1] > o[0] and
                    ((o[0] < 9 and o[1] > 3) or (o[0] < 25 and o[1] > 18))]
    # seed: plus the trailing newline tokens, which follow 'Monday.'; nothing else changes
    extra = [t for t in seed if t not in ours]
    assert extra and all(o[0] >= 25 and TEXTS[0][o[0]:o[1]].isspace() for _, o in extra)
    assert set(ours) <= set(seed) and len(seed) == len(ours) + len(extra)
    assert sum(1 for o in offs.tolist() if o[0] >= 25) == len(extra)  # every token after 'Monday.'
