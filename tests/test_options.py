"""Stage options: each section owns its defaults, choices and problems; RunConfig only composes them."""

from __future__ import annotations

import pytest

from superactivators.concepts.options import ConceptConfig
from superactivators.concepts.types import KMeansType, LinsepType, concept_type
from superactivators.config import SECTIONS, RunConfig, config_from_dict
from superactivators.data.options import DataConfig
from superactivators.encoders.base import EmbedConfig
from superactivators.evaluate.options import DetectConfig
from superactivators.localize.attribution import AttributionOptions
from superactivators.localize.options import LocalizeConfig
from superactivators.util.errors import ValidationError


def test_every_section_answers_its_own_problems():
    assert set(SECTIONS) == {"data", "embed", "concepts", "detect", "localize"}
    assert DataConfig(mask_coverage=0).problems() == ["data.mask_coverage: must be in (0, 1], got 0"]
    assert EmbedConfig(batch_size=0).problems() == ["embed.batch_size: must be >= 1, got 0"]
    assert ConceptConfig(linsep_c=0).problems() == ["concepts.linsep_c: must be > 0, got 0"]
    assert DetectConfig(grid=[0, 50]).problems() == ["detect.grid: percentages must be in (0, 100], got [0]"]
    assert LocalizeConfig(attributions=["nope"]).problems()[0].startswith("localize.attributions: unknown ['nope']")
    cfg = RunConfig(data=DataConfig(mask_coverage=0), detect=DetectConfig(grid=[]))
    assert cfg.problems() == ["data.mask_coverage: must be in (0, 1], got 0", "detect.grid: empty"]


def test_problems_reach_the_user_through_config_from_dict():
    with pytest.raises(ValidationError) as err:
        config_from_dict({"embed": {"batch_size": 0}, "concepts": {"types": ["mean", "nope"]}, "score_device": "gpu"})
    assert err.value.problems == [
        "score_device: 'gpu' is not a device; use auto, cpu, cuda, cuda:N or mps",
        "embed.batch_size: must be >= 1, got 0",
        "concepts.types: unknown concept type(s) ['nope']; choose from "
        "['mean', 'diffmean', 'linsep', 'kmeans', 'kmeans-linsep', 'sae']",
    ]


def test_concept_type_defaults_are_the_configs():
    lin = concept_type("linsep")
    assert isinstance(lin, LinsepType)
    assert (lin.max_per_class, lin.c_reg) == (ConceptConfig.linsep_max_tokens_per_class, ConceptConfig.linsep_c)
    km = concept_type("kmeans", ConceptConfig(kmeans_k_tokens=7))
    assert isinstance(km, KMeansType) and (km.k_tokens, km.k_global) == (7, ConceptConfig.kmeans_k_global)
    assert concept_type("linsep", {"linsep_c": 0.5}, solver="seed").solver == "seed"


def test_attribution_options_follow_the_localize_section():
    lc = LocalizeConfig(attributions=["saliency"], attribution_budget=5, occlusion_window=2)
    opts = AttributionOptions.from_config(lc, seed=3)
    assert (opts.methods, opts.budget, opts.occlusion_window, opts.seed) == (["saliency"], 5, 2, 3)
    assert AttributionOptions().budget == LocalizeConfig().attribution_budget


def test_mask_options_come_from_one_place():
    ours = config_from_dict({"data": {"mask_coverage": 0.25}}).mask_options()
    seed = config_from_dict({"protocol": "seed"}).mask_options()
    assert (ours.coverage, ours.any_pixel, seed.any_pixel) == (0.25, False, True)
