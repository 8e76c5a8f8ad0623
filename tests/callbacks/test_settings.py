"""InterventionSettings: every option checked before training, and both callbacks taking the same keys."""

from __future__ import annotations

from dataclasses import fields

import pytest
from jsonargparse import ArgumentParser

from lightning_pareto import CourseCorrection, DirectImprovement
from lightning_pareto.callbacks import InterventionSettings


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"damping": -1.0}, ValueError, "damping"),
        ({"modules": "head"}, TypeError, "modules"),
        ({"curvature_samples": 0}, ValueError, "curvature_samples"),
        ({"curvature_samples": 2.5}, ValueError, "curvature_samples"),
        ({"trial_batches": 0}, ValueError, "trial_batches"),
        ({"trial_batches": "half"}, ValueError, "trial_batches"),
        ({"trial_batches": 2.5}, ValueError, "trial_batches"),
        ({"trial_batches": True}, ValueError, "trial_batches"),
        ({"trial_screen": 0}, ValueError, "trial_screen"),
        ({"trial_screen": 1.5}, ValueError, "trial_screen"),
        ({"trial_screen": "half"}, ValueError, "trial_screen"),
        ({"preset": "huge"}, ValueError, "preset"),
        ({"w_min": 1.5}, ValueError, "w_min"),
        ({"trust": 0.0}, ValueError, "trust"),
        ({"time_budget": 0}, ValueError, "time_budget"),
        ({"influence_batch_size": 0}, ValueError, "influence_batch_size"),
        ({"matmul_precision": "low"}, ValueError, "matmul_precision"),
    ],
)
def test_settings_name_the_bad_argument(kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        InterventionSettings(**kwargs)


def test_trial_batches_default_to_a_quarter_epoch_and_a_bad_one_fails_at_construction() -> None:
    assert InterventionSettings().trial_batches == "auto"
    assert InterventionSettings(trial_batches=None).trial_batches is None
    assert InterventionSettings(trial_batches=3).trial_batches == 3
    with pytest.raises(ValueError, match="trial_batches must be 'auto'"):
        DirectImprovement(targets=[0], at_epochs=[0], fitness="trial", trial_batches="quarter")
    with pytest.raises(ValueError, match="trial_batches"):
        CourseCorrection(fitness="trial", trial_batches=-1)


def test_both_callbacks_take_the_settings_as_keywords() -> None:
    direct = DirectImprovement(targets=[0], at_epochs=[0], curvature="kfac", modules=["head"], seed=3)
    correction = CourseCorrection(drop_threshold=0.1, curvature="kfac", modules=["head"], seed=3)
    assert direct.settings == InterventionSettings(curvature="kfac", modules=("head",), seed=3, trust=0.2)
    assert correction.settings == InterventionSettings(curvature="kfac", modules=("head",), seed=3, trust=0.5)
    with pytest.raises(TypeError, match="curvatur"):
        CourseCorrection(curvatur="kfac")
    with pytest.raises(ValueError, match="damping"):
        DirectImprovement(targets=[0], at_epochs=[0], damping=-1.0)


@pytest.mark.parametrize("callback", [DirectImprovement, CourseCorrection])
def test_config_keys_are_the_settings_fields_with_their_documentation(callback: type) -> None:
    # What LightningCLI shows and accepts under init_args: every setting as a flat key, documented once.
    parser = ArgumentParser()
    parser.add_class_arguments(callback, "cb")
    help_text = " ".join(parser.format_help().split())
    for item in fields(InterventionSettings):
        assert f"--cb.{item.name}" in help_text
    assert "Batch size of the influence passes." in help_text
    config = parser.parse_args(
        [
            "--cb.curvature=kfac",
            "--cb.modules=[head]",
            "--cb.trust=0.3",
            *(["--cb.targets=[0]", "--cb.at_epochs=[1]"] if callback is DirectImprovement else []),
        ]
    )
    built = parser.instantiate(config).cb
    assert built.settings.curvature == "kfac" and built.settings.modules == ("head",) and built.settings.trust == 0.3
