"""Shared test fixtures: seeding and quiet, fast Trainer settings."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
import torch

# The tests train tiny models, for which one intra-op thread is faster than several: on a shared
# 2-core machine, extra threads mostly spin (10x slower steps were measured).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    """Every test starts from the same random state."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture
def quiet_trainer_kwargs(tmp_path: Any) -> dict[str, Any]:
    """Keyword arguments for a fast, silent CPU ``Trainer`` writing under ``tmp_path``."""
    return {
        "accelerator": "cpu",
        "devices": 1,
        "default_root_dir": str(tmp_path),
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "logger": False,
        "enable_checkpointing": False,
        "num_sanity_val_steps": 0,
    }
