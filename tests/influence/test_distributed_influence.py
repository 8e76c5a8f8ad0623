"""Under torch.distributed (2 gloo processes, no Lightning) each rank scores its shard and gets one process's matrix."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _influence_reference import digits, loader, mlp

from lightning_pareto.influence import category_influence

REPOSITORY = Path(__file__).resolve().parents[2]

WORKER = r"""
import sys
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, TensorDataset
sys.path.insert(0, sys.argv[2])
from _influence_reference import digits, mlp, train

from lightning_pareto.influence import category_influence

torch.set_num_threads(1)
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
x, y = digits()
model = train(mlp(), x[:300], y[:300], steps=30)
train_set = TensorDataset(x[:300], y[:300], torch.arange(300))
val_set = TensorDataset(x[300:500], y[300:500], torch.arange(200))
results = {}
for curvature in ("ekfac", "exact"):
    train_shard = DataLoader(train_set, batch_size=64, sampler=range(rank, 300, world))
    val_shard = DataLoader(val_set, batch_size=64, sampler=range(rank, 200, world))
    results[curvature] = category_influence(model, train_shard, val_shard, 10, curvature=curvature)
torch.save({"results": results, "state": model.state_dict()}, f"{sys.argv[1]}/rank{rank}.pt")
dist.destroy_process_group()
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_sharded_ranks_get_the_single_process_matrix(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    port = str(_free_port())
    processes = []
    for rank in range(2):
        environment = dict(
            os.environ,
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
            RANK=str(rank),
            WORLD_SIZE="2",
            OMP_NUM_THREADS="1",
            PYTHONPATH=os.pathsep.join([str(REPOSITORY), os.environ.get("PYTHONPATH", "")]),
        )
        processes.append(
            subprocess.Popen(
                [sys.executable, str(script), str(tmp_path), str(Path(__file__).parent)],
                env=environment,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    for process in processes:
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, output[-4000:]
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=False) for rank in range(2)]

    model = mlp()
    model.load_state_dict(ranks[0]["state"])
    x, y = digits()
    for curvature in ("ekfac", "exact"):
        torch.testing.assert_close(ranks[1]["results"][curvature], ranks[0]["results"][curvature], rtol=0, atol=0)
        reference = category_influence(
            model, loader(x[:300], y[:300]), loader(x[300:500], y[300:500]), 10, curvature=curvature
        )
        scale = float(reference.abs().max())
        torch.testing.assert_close(ranks[0]["results"][curvature], reference, rtol=1e-4, atol=1e-5 * scale)
