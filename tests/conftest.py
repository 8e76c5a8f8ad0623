"""Shared test fixtures: seeding and quiet, fast Trainer settings."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
import torch


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
