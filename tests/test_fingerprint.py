"""Cache keys cover the content of every input file, not just metadata.csv and path names."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from superactivators.config import config_from_dict
from superactivators.data.datasets import load_dataset
from superactivators.data.fingerprint import content_key, file_hash
from superactivators.pipeline import store_dir_for


def _text(tmp_path):
    (tmp_path / "t").mkdir(parents=True)
    for i in range(4):
        (tmp_path / "t" / f"{i}.txt").write_text(f"text {i}")
    (tmp_path / "metadata.csv").write_text(
        "a,text_path,split\n1,t/0.txt,train\n0,t/1.txt,train\n1,t/2.txt,cal\n0,t/3.txt,test\n")
    return load_dataset(tmp_path)


def test_rewritten_texts_change_the_store_key(tmp_path):
    ds = _text(tmp_path / "d")
    cfg = config_from_dict({"output_dir": str(tmp_path / "runs"), "data": {"path": str(tmp_path / "d")}})
    first = store_dir_for(cfg, ds)
    assert store_dir_for(cfg, ds) == first
    (tmp_path / "d" / "t" / "3.txt").write_text("text 9")  # same size, same name
    assert store_dir_for(cfg, ds) != first


def test_replaced_images_change_the_key(tmp_path):
    (tmp_path / "images").mkdir()
    for i in range(2):
        Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(tmp_path / "images" / f"{i}.png")
    (tmp_path / "metadata.csv").write_text("image_path,a,split\nimages/0.png,1,train\nimages/1.png,0,cal\n")
    ds = load_dataset(tmp_path)
    k = content_key(ds)
    Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(tmp_path / "images" / "1.png")
    assert content_key(ds) != k


def test_hashes_are_reused_while_size_and_mtime_hold(tmp_path, monkeypatch):
    ds = _text(tmp_path / "d")
    cache = tmp_path / "fp.json"
    k = content_key(ds, cache)
    calls = []
    monkeypatch.setattr("superactivators.data.fingerprint.file_hash", lambda p: calls.append(p) or file_hash(p))
    assert content_key(ds, cache) == k and calls == []  # nothing re-read
    f = tmp_path / "d" / "t" / "0.txt"
    st = f.stat()
    f.write_text("text 5")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert content_key(ds, cache) != k and calls == [f]
