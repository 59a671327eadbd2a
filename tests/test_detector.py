"""The fitted detector: built from a run, saved, loaded, and consistent with the pipeline."""

import numpy as np
import pytest

from superactivators.config import config_from_dict
from superactivators.data.datasets import load_dataset
from superactivators.detector import ConceptDetector
from superactivators.evaluate.scoring import make_scorer
from superactivators.pipeline import run_pipeline


@pytest.fixture(scope="module")
def run(tmp_path_factory, small_emotions, tiny_bert):
    out = tmp_path_factory.mktemp("det")
    cfg = config_from_dict({
        "name": "d", "output_dir": str(out), "score_device": "cpu", "data": {"path": str(small_emotions)},
        "embed": {"model": str(tiny_bert), "layers": "all", "store_dtype": "float32"},
        "concepts": {"types": ["linsep"], "linsep_max_tokens_per_class": 300},
        "detect": {"methods": ["superactivator", "max_token"], "grid": [5, 20, 50]},
    })
    return run_pipeline(cfg, progress=False)


def test_detector_matches_pipeline_and_round_trips(run, small_emotions, tmp_path):
    det = ConceptDetector.from_run(run.run_dir, "linsep", layer=2)
    t = run.table
    sa = t[(t.method == "superactivator") & (t.layer == 2) & (t.concept_type == "linsep")].set_index("concept")
    assert det.thresholds["emotion::joy"] == pytest.approx(sa.loc["emotion::joy", "threshold"])
    ds = load_dataset(small_emotions)
    test_ids = ds.split_indices("test")[:6]
    texts = ds.texts(test_ids)
    found = det.detect(texts)
    # same decision as the pipeline: max token activation from the store vs the threshold
    store = run.store
    cs = det.concept_sets[2]
    x = np.concatenate([store.tokens(2, s) for s in store.shards])
    acts = make_scorer(cs)(x)
    for j, sid in enumerate(test_ids):
        seg = acts[store.offsets[sid]:store.offsets[sid + 1]]
        for c, name in enumerate(cs.names):
            assert found[j].max_activation[name] == pytest.approx(float(seg[:, c].max()), abs=1e-4)
            assert found[j].present[name] == (seg[:, c].max() >= det.thresholds[name])
            for ev in found[j].evidence.get(name, []):  # evidence: the localisation threshold
                assert ev.activation >= det.localization_thresholds[name]
                assert texts[j][ev.span[0]:ev.span[1]] == ev.text
    det.save(tmp_path / "saved")
    again = ConceptDetector.load(tmp_path / "saved").detect(texts)
    assert [d.present for d in again] == [d.present for d in found]


def test_localization_thresholds_come_from_the_runs_localisation(run):
    det = ConceptDetector.from_run(run.run_dir, "linsep", layer=2)
    loc = run.localization
    assert loc is not None
    sa = loc[(loc.method == "superactivator") & (loc.layer == 2) & (loc.concept_type == "linsep")].set_index("concept")
    assert set(det.localization_thresholds) == set(det.concepts)
    for name, thr in det.localization_thresholds.items():
        assert thr == pytest.approx(float(sa.loc[name, "threshold"]))


def test_best_layer_per_concept(run):
    det = ConceptDetector.from_run(run.run_dir, "linsep")
    t = run.table
    sa = t[(t.method == "superactivator") & (t.concept_type == "linsep") & t.concept.str.startswith("emotion")]
    for name in det.concepts:
        rows = sa[sa.concept == name]
        best = rows.sort_values(["cal_f1", "layer"], ascending=[False, True]).iloc[0]
        layer = next(l for l, cs in det.concept_sets.items() if name in cs.names)
        assert layer == best.layer


def test_detector_errors(run):
    with pytest.raises(ValueError, match="no SuperActivator results"):
        ConceptDetector.from_run(run.run_dir, "mean")
    with pytest.raises(ValueError, match="concepts not in the run"):
        ConceptDetector.from_run(run.run_dir, "linsep", concepts=["nope"])
    det = ConceptDetector.from_run(run.run_dir, "linsep", layer=1)
    with pytest.raises(TypeError):
        det.detect("a single string")


def test_image_detector_matches_store(image_run):
    run = image_run
    det = ConceptDetector.from_run(run.run_dir, "mean", layer=2)
    assert det.modality == "image"
    ds = load_dataset(run.run_dir.parent.parent / "shapes")
    ids = ds.split_indices("test")[:4]
    found = det.detect([ds.image_path(int(i)) for i in ids])
    store = run.store
    cs = det.concept_sets[2]
    for j, sid in enumerate(ids):
        rows = slice(store.offsets[sid], store.offsets[sid + 1])
        shard = next(s for s in store.shards if s.start <= sid < s.stop)
        x = store.tokens(2, shard)[rows.start - shard.token_start:rows.stop - shard.token_start]
        a = make_scorer(cs)(x)
        a[~store.valid[rows]] = -np.inf
        for c, name in enumerate(cs.names):
            assert found[j].max_activation[name] == pytest.approx(float(a[:, c].max()), abs=1e-3)
            assert found[j].present[name] == (found[j].max_activation[name] >= det.thresholds[name])


def _crafted_model(tiny_bert, root):
    """A copy of the tiny BERT whose config asks to run its own module (which leaves a marker file)."""
    import json
    import shutil

    model = root / "crafted"
    shutil.copytree(tiny_bert, model)
    marker = root / "code-ran"
    (model / "custom.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import BertConfig, BertModel\n"
        "class EvilConfig(BertConfig):\n    model_type = 'bert'\n"
        "class EvilModel(BertModel):\n    config_class = EvilConfig\n")
    conf = json.loads((model / "config.json").read_text())
    conf["auto_map"] = {"AutoConfig": "custom.EvilConfig", "AutoModel": "custom.EvilModel"}
    (model / "config.json").write_text(json.dumps(conf))
    return model, marker


def test_saved_detector_or_run_config_cannot_switch_on_remote_code(run, tiny_bert, tmp_path, monkeypatch):
    import json

    import yaml

    monkeypatch.setattr("transformers.dynamic_module_utils.HF_MODULES_CACHE", str(tmp_path / "modules"))
    model, marker = _crafted_model(tiny_bert, tmp_path)
    det = ConceptDetector.from_run(run.run_dir, "linsep", layer=2)
    det.save(tmp_path / "det")
    d = json.loads((tmp_path / "det" / "detector.json").read_text())
    assert d["embed"]["trust_remote_code"] is False
    d["embed"].update(model=str(model), trust_remote_code=True)  # what a crafted detector would carry
    (tmp_path / "det" / "detector.json").write_text(json.dumps(d))
    from superactivators.store.artefacts import ArtefactError, record

    with pytest.raises(ArtefactError, match="detector.json"):  # an edited file no longer matches its checksum
        ConceptDetector.load(tmp_path / "det")
    record(tmp_path / "det", ["detector.json"])  # a crafted detector carries checksums that match (CRC-32, not a signature)
    loaded = ConceptDetector.load(tmp_path / "det")
    assert loaded.embed.trust_remote_code is False
    loaded.detect(["Thank you so much."])
    assert not marker.exists()
    # the same through a run folder's config.yaml
    cfg = yaml.safe_load((run.run_dir / "config.yaml").read_text())
    assert cfg["embed"]["trust_remote_code"] is False
    cfg["embed"]["trust_remote_code"] = True
    with pytest.raises(ValueError, match="embed.trust_remote_code: cannot be switched on from a config file"):
        config_from_dict(cfg)
    assert ConceptDetector.load(tmp_path / "det", trust_remote_code=True).embed.trust_remote_code is True
