"""ClassifierModule: optimizers from init arguments, argument checks, weights kept through checkpoints."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from lightning_pareto import ClassifierModule, IndexedDataset
from lightning_pareto.nets import MLP, LogisticRegression


def _loaders(n: int = 40) -> tuple[DataLoader, DataLoader]:
    x, y = torch.randn(n, 3), torch.arange(n) % 2
    data = IndexedDataset(TensorDataset(x, y))
    return DataLoader(data, batch_size=8, shuffle=True), DataLoader(data, batch_size=8)


def test_default_optimizer_is_sgd_with_momentum() -> None:
    optimizer = ClassifierModule(MLP(3, 2), num_classes=2).configure_optimizers()
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.defaults["lr"] == 0.1 and optimizer.defaults["momentum"] == 0.9


def test_optimizer_and_scheduler_come_from_the_callables() -> None:
    module = ClassifierModule(
        MLP(3, 2),
        num_classes=2,
        optimizer=partial(torch.optim.Adam, lr=0.01),
        scheduler=partial(torch.optim.lr_scheduler.StepLR, step_size=3),
    )
    config = module.configure_optimizers()
    assert isinstance(config["optimizer"], torch.optim.Adam) and config["optimizer"].defaults["lr"] == 0.01
    assert isinstance(config["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.StepLR)
    assert {id(p) for p in config["optimizer"].param_groups[0]["params"]} == {id(p) for p in module.parameters()}


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"net": "mlp", "num_classes": 2}, TypeError, "torch.nn.Module"),
        ({"num_classes": 1}, ValueError, "num_classes must be an integer >= 2"),
        ({"num_classes": 2, "class_names": ["a"]}, ValueError, "class_names has 1 entries"),
        ({"num_classes": 2, "class_names": ["a", "a"]}, ValueError, "unique"),
        ({"num_classes": 3}, ValueError, "net.head has 2 outputs but num_classes is 3"),
    ],
)
def test_bad_arguments_are_rejected(kwargs: dict[str, Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        ClassifierModule(**{"net": MLP(3, 2), **kwargs})


def test_class_names_default_to_indices() -> None:
    assert ClassifierModule(MLP(3, 3), num_classes=3).class_names == ["0", "1", "2"]


def test_validation_step_returns_the_logits_of_the_network() -> None:
    module = ClassifierModule(LogisticRegression(3, 2), num_classes=2)
    x = torch.randn(5, 3)
    with pytest.warns(UserWarning, match="self.log"):
        output = module.validation_step((x, torch.zeros(5, dtype=torch.long), torch.arange(5)), 0)
    torch.testing.assert_close(output["logits"], x @ module.net.head.weight.T + module.net.head.bias)


class _SetWeights(Callback):
    """Sets pending weights at fit start, as a reweighting callback would."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.sample_weights.set(torch.linspace(0.0, 2.0, 40))


@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
def test_pending_weights_are_in_the_checkpoint_and_restored_on_resume(tmp_path: Path) -> None:
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    common = {"accelerator": "cpu", "logger": False, "enable_progress_bar": False, "enable_model_summary": False}
    trainer = L.Trainer(max_epochs=1, callbacks=[_SetWeights(), checkpoint], **common)
    trainer.fit(ClassifierModule(MLP(3, 2), num_classes=2), *_loaders())
    saved = torch.load(checkpoint.last_model_path, weights_only=True)
    assert torch.equal(saved["sample_weights"]["weights"], torch.linspace(0.0, 2.0, 40))

    resumed = ClassifierModule(MLP(3, 2), num_classes=2)
    L.Trainer(max_epochs=2, enable_checkpointing=False, **common).fit(
        resumed, *_loaders(), ckpt_path=checkpoint.last_model_path
    )
    assert torch.equal(resumed.sample_weights.weights, torch.linspace(0.0, 2.0, 40))

    loaded = ClassifierModule.load_from_checkpoint(checkpoint.last_model_path, net=MLP(3, 2))
    assert loaded.num_classes == 2 and torch.equal(loaded.sample_weights.weights, torch.linspace(0.0, 2.0, 40))
    assert "net" not in loaded.hparams  # a live network is not pickled into the hyperparameters


def test_predict_gives_class_probabilities_of_the_test_split(quiet_trainer_kwargs: dict[str, Any]) -> None:
    from lightning_pareto.data import WineDataModule

    data = WineDataModule(seed=0)
    module = ClassifierModule(LogisticRegression(13, 3), num_classes=3)
    batches = L.Trainer(**quiet_trainer_kwargs).predict(module, data)
    probabilities = torch.cat(batches)
    x = data.test_arrays[0]
    expected = torch.softmax(x @ module.net.head.weight.T + module.net.head.bias, dim=1)
    torch.testing.assert_close(probabilities, expected)


class _Probe(Callback):
    def __init__(self) -> None:
        self.started = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started = True


@pytest.mark.parametrize(
    ("net", "labels", "error", "message"),
    [
        (
            torch.nn.Sequential(torch.nn.Linear(3, 5)),
            torch.arange(40) % 2,
            ValueError,  # last layer not named head
            r"logits of shape \(8, 5\) but num_classes=2",
        ),
        (MLP(3, 2), (torch.arange(40) % 2).float(), TypeError, "integer class indices"),
    ],
)
def test_wrong_output_width_or_float_labels_fail_before_training_with_a_clear_message(
    tmp_path: Path, net: torch.nn.Module, labels: torch.Tensor, error: type, message: str
) -> None:
    data = IndexedDataset(TensorDataset(torch.randn(40, 3), labels))
    probe = _Probe()
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[probe],
    )
    with pytest.raises(error, match=message):
        trainer.fit(
            ClassifierModule(net, num_classes=2), DataLoader(data, batch_size=8), DataLoader(data, batch_size=8)
        )
    assert not probe.started  # the sanity check's validation batch caught it


def test_test_logs_every_class_accuracy_against_a_direct_count(tmp_path: Path) -> None:
    train, test = _loaders(48)
    module = ClassifierModule(MLP(3, 2), num_classes=2, class_names=["no", "yes"])
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, train)
    metrics = trainer.test(module, test, verbose=False)[0]
    x, y = test.dataset.dataset.tensors
    with torch.no_grad():
        predicted = module(x).argmax(dim=1)
    for c, name in enumerate(["no", "yes"]):
        expected = (predicted[y == c] == c).double().mean().item()
        assert metrics[f"test_acc/{name}"] == pytest.approx(expected, abs=1e-6)
        assert module.test_per_class[c] == pytest.approx(expected, abs=1e-12)
