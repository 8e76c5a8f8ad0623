"""What the ``trim`` and ``active`` comparisons share: the parser's common part, the seed plan, the outputs."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace
from torch import nn

from lightning_pareto.data.base import ClassificationDataModule

__all__ = ["check_names", "comparison_parser", "prepare_output", "seed_list", "seeded_objects", "write_csv"]


def comparison_parser(prog: str, description: str, *, data_help: str, net_help: str, outputs: str) -> ArgumentParser:
    """A jsonargparse parser with the options every comparison has.

    ``--config``, ``--output_dir``, ``--data`` (a datamodule whose seed each run replaces), ``--net``,
    ``--seeds`` (a count or a list) and ``--num_threads``; the caller adds its own.

    Args:
        prog: The command, e.g. ``"lightning-pareto trim"``.
        description: The ``--help`` text.
        data_help: What the datamodule's splits are used for.
        net_help: Which networks fit.
        outputs: The files the command writes, for ``--output_dir``'s help.
    """
    import lightning_pareto.data  # noqa: F401  (registers the datamodules for short class names)
    import lightning_pareto.nets  # noqa: F401  (registers the networks for short class names)

    parser = ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with any of the options below.")
    parser.add_argument("--output_dir", type=str, required=True, help=f"Folder for {outputs}.")
    parser.add_subclass_arguments(
        ClassificationDataModule,
        "data",
        required=True,
        help=f"{data_help} Its seed is replaced by each run's seed.",
    )
    parser.add_subclass_arguments(nn.Module, "net", required=True, help=net_help)
    parser.add_argument(
        "--seeds", type=int | list[int], default=3, help="A count N (seeds 0..N-1) or an explicit list of seeds."
    )
    parser.add_argument(
        "--num_threads",
        type=int | None,
        default=None,
        help="torch.set_num_threads for the run (1 is fastest for tiny models on busy machines).",
    )
    return parser


def seed_list(seeds: int | list[int]) -> list[int]:
    """``N`` -> ``[0, ..., N-1]``; a list is kept. Raises ``ValueError`` on ``N < 1``, an empty list or repeats."""
    if isinstance(seeds, int):
        if seeds < 1:
            raise ValueError(f"seeds as a count must be >= 1, got {seeds}")
        seeds = list(range(seeds))
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be a count or a non-empty list of distinct seeds, got {seeds}")
    return list(seeds)


def check_names(names: Sequence[str], known: Sequence[str], what: str) -> list[str]:
    """Raise a ``ValueError`` on an empty or repeating list of ``what`` (methods, strategies); return it as a list."""
    if not names:
        raise ValueError(f"{what} is empty; name at least one of {list(known)}")
    if len(set(names)) != len(names):
        raise ValueError(f"{what} has duplicates: {list(names)}")
    return list(names)


def prepare_output(parser: ArgumentParser, config: Namespace) -> Path:
    """Apply ``--num_threads``, create ``--output_dir`` and save the full configuration there as ``config.yaml``."""
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    output = Path(config.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    parser.save(config, output / "config.yaml", overwrite=True, skip_check=True)
    return output


def seeded_objects(parser: ArgumentParser, config: Namespace, seed: int) -> Namespace:
    """Instantiate the configuration for one seed: the datamodule's ``seed`` set, ``torch.manual_seed(seed)`` first.

    The network's initialisation therefore depends on the seed alone, not on earlier runs.
    """
    seeded = config.clone()
    seeded.data.init_args.seed = seed
    torch.manual_seed(seed)
    return parser.instantiate(seeded)


def write_csv(rows: Sequence[dict[str, Any]], path: Path, columns: Sequence[str]) -> None:
    """Write ``rows`` (dicts with the keys ``columns``) as CSV; ``None`` becomes an empty cell."""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: "" if row[key] is None else row[key] for key in columns})
