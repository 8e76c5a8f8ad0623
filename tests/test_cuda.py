"""CUDA: influence on the GPU equals the CPU result in float32 whatever the autocast, and the plugin trains on a GPU.

Every test here needs a CUDA device; without one the module is skipped with the reason.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_pareto import ClassifierModule, DirectImprovement, PerClassAccuracy
from lightning_pareto.data import DigitsDataModule
from lightning_pareto.influence import category_influence
from lightning_pareto.nets import MLP, SmallCNN

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() is False)"
    ),
]

REPOSITORY = Path(__file__).resolve().parents[1]


def _image_loaders(num_train: int = 256, num_val: int = 96) -> tuple[DataLoader, DataLoader]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(num_train + num_val, 3, 8, 8, generator=generator)
    y = torch.randint(0, 4, (num_train + num_val,), generator=generator)
    train = TensorDataset(x[:num_train], y[:num_train], torch.arange(num_train))
    val = TensorDataset(x[num_train:], y[num_train:])
    return DataLoader(train, batch_size=64), DataLoader(val, batch_size=64)


@pytest.mark.parametrize("curvature", ["ekfac", "kfac", "exact"])
def test_influence_on_cuda_matches_cpu(curvature: str) -> None:
    torch.manual_seed(0)
    model = SmallCNN(3, 4, 8, channels=(4, 6)) if curvature != "exact" else MLP(3 * 8 * 8, 4, hidden=(8,))
    train, val = _image_loaders()
    on_cpu = category_influence(model, train, val, 4, curvature=curvature)
    on_gpu = category_influence(model.cuda(), train, val, 4, curvature=curvature)
    assert on_gpu.device.type == "cpu" and on_gpu.dtype == torch.float32
    # Same maths on another device: float32 round-off only (eigendecompositions are float64 on both).
    torch.testing.assert_close(on_gpu, on_cpu, rtol=2e-3, atol=1e-5 * float(on_cpu.abs().max()))


def test_influence_ignores_an_enclosing_autocast() -> None:
    torch.manual_seed(0)
    model = SmallCNN(3, 4, 8, channels=(4, 6)).cuda()
    train, val = _image_loaders()
    reference = category_influence(model, train, val, 4)
    for dtype in (torch.float16, torch.bfloat16):
        with torch.autocast("cuda", dtype=dtype):
            under_autocast = category_influence(model, train, val, 4)
        assert under_autocast.dtype == torch.float32
        torch.testing.assert_close(under_autocast, reference, rtol=1e-4, atol=1e-6 * float(reference.abs().max()))


@pytest.mark.parametrize("precision", ["32-true", "16-mixed", "bf16-mixed"])
def test_direct_improvement_trains_on_a_gpu(tmp_path: Path, precision: str) -> None:
    datamodule = DigitsDataModule(batch_size=64, label_noise=0.2, seed=0)
    module = ClassifierModule(MLP(64, 10, hidden=(32,)), 10)
    callback = DirectImprovement(targets="worst:2", at_epochs=[1], log_figures=False)
    trainer = L.Trainer(
        accelerator="gpu",
        devices=1,
        precision=precision,
        max_epochs=3,
        default_root_dir=str(tmp_path),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[PerClassAccuracy(log_figure_every_n_epochs=0), callback],
    )
    trainer.fit(module, datamodule)
    (record,) = callback.records
    assert record.status == "applied", record.reason
    assert record.after is not None and record.n_weighted > 0
    assert next(module.parameters()).device.type == "cuda"


def test_fsdp_is_refused_at_setup_with_the_fix(tmp_path: Path) -> None:
    trainer = L.Trainer(
        accelerator="gpu",
        devices=1,
        strategy="fsdp",
        max_epochs=2,
        default_root_dir=str(tmp_path),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[PerClassAccuracy(), DirectImprovement(targets="worst:1", at_epochs=[0])],
    )
    with pytest.raises(ValueError, match="strategy='ddp'"):
        trainer.fit(ClassifierModule(MLP(64, 10), 10), DigitsDataModule(batch_size=64, seed=0))


@pytest.mark.slow
def test_pareto_step_benchmark_runs_on_cuda(tmp_path: Path) -> None:
    output = tmp_path / "pareto_step.json"
    completed = subprocess.run(
        [
            sys.executable,
            str(REPOSITORY / "benchmarks" / "pareto_step.py"),
            "--device",
            "cuda",
            "--n",
            "2000",
            "--val",
            "500",
            "--repeats",
            "1",
            "--warmup-epochs",
            "1",
            "--json",
            "--output",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    (line,) = completed.stdout.strip().splitlines()
    result = json.loads(line)
    assert result["n"] == 2000
    assert all(np.isfinite([result["epoch_s"], result["influence_s"], result["search_s"]]))
    assert result["machine"]["device"] == torch.cuda.get_device_name(0)
    assert json.loads(output.read_text())["n"] == 2000
