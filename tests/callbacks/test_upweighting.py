"""ClassUpweighting: the target classes' samples weighted x factor from the chosen epoch to the end, nothing else."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from _intervention_helpers import Probe, ScriptedAccuracy, blobs_datamodule, classifier, trainer

from lightning_pareto import ClassUpweighting, PerClassAccuracy


def _fit(root: Path, callbacks: list, max_epochs: int = 4) -> L.Trainer:
    L.seed_everything(0)
    run = trainer(root, callbacks, max_epochs)
    run.fit(classifier(), blobs_datamodule())
    return run


class LabelProbe(Probe):
    """A Probe that also keeps each batch's labels."""

    def __init__(self) -> None:
        super().__init__()
        self.batch_labels: dict[int, list[torch.Tensor]] = {}

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: object, batch_idx: int
    ) -> None:
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        self.batch_labels.setdefault(trainer.current_epoch, []).append(batch[1].clone())


def _expected(labels: torch.Tensor, targets: list[int], factor: float) -> torch.Tensor:
    return torch.where(torch.isin(labels, torch.tensor(targets)), torch.tensor(factor), torch.tensor(1.0))


def test_target_samples_get_the_factor_from_the_chosen_epoch_to_the_end(tmp_path: Path) -> None:
    probe = LabelProbe()
    _fit(
        tmp_path,
        [PerClassAccuracy(log_figure_every_n_epochs=0), ClassUpweighting(["b"], factor=3.0, at_epoch=1), probe],
    )
    assert probe.weighted_epochs() == [2, 3]
    for epoch in (2, 3):
        for weights, labels in zip(probe.batch_weights[epoch], probe.batch_labels[epoch]):
            assert torch.equal(weights, _expected(labels, [1], 3.0))  # the labels the loss sees, noisy ones included


def test_without_at_epoch_the_weights_apply_from_the_first_epoch(tmp_path: Path) -> None:
    probe = LabelProbe()
    _fit(tmp_path, [ClassUpweighting([0, "c"], factor=2.0), probe], max_epochs=2)
    assert probe.weighted_epochs() == [0, 1]
    weights, labels = probe.batch_weights[0][0], probe.batch_labels[0][0]
    assert torch.equal(weights, _expected(labels, [0, 2], 2.0))


def test_worst_k_upweights_the_lowest_classes_at_the_chosen_epoch(tmp_path: Path) -> None:
    callback, probe = ClassUpweighting("worst:1", at_epoch=1), LabelProbe()
    _fit(tmp_path, [ScriptedAccuracy({1: (0.9, 0.8, 0.3)}), callback, probe], max_epochs=3)
    assert callback.applied == [2]
    weights, labels = probe.batch_weights[2][0], probe.batch_labels[2][0]
    assert torch.equal(weights, _expected(labels, [2], 2.0))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"targets": []}, "targets is empty"),
        ({"targets": [0], "factor": 0.0}, "factor"),
        ({"targets": [0], "factor": float("inf")}, "factor"),
        ({"targets": [0], "at_epoch": -1}, "at_epoch"),
        ({"targets": "worst:1"}, "at_epoch"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ClassUpweighting(**kwargs)


def test_unknown_class_fails_at_setup_before_training(tmp_path: Path) -> None:
    probe = Probe()
    with pytest.raises(ValueError, match="unknown class 'zebra'"):
        _fit(tmp_path, [ClassUpweighting(["zebra"]), probe])
    assert probe.starts == []


def test_weights_that_never_reach_the_loss_are_reported(tmp_path: Path) -> None:
    from lightning_pareto import ClassifierModule

    class PlainMean(ClassifierModule):
        def training_step(self, batch: object, batch_idx: int) -> torch.Tensor:
            x, y, _ = batch
            return torch.nn.functional.cross_entropy(self(x), y)

    reference = classifier()
    module = PlainMean(reference.net, 3, class_names=["a", "b", "c"], optimizer=reference.optimizer_factory)
    L.seed_everything(0)
    with pytest.warns(UserWarning, match="never looked them up"):
        trainer(tmp_path, [ClassUpweighting(["b"])], 2).fit(module, blobs_datamodule())


def test_another_weight_writer_in_the_same_trainer_is_refused_before_training(tmp_path: Path) -> None:
    from lightning_pareto import DirectImprovement

    probe = Probe()
    with pytest.raises(ValueError, match=r"ClassUpweighting and \['DirectImprovement'\] would overwrite each other"):
        _fit(tmp_path, [ScriptedAccuracy({}), ClassUpweighting(["b"]), DirectImprovement(["a"], at_epochs=[1]), probe])
    assert probe.starts == []
