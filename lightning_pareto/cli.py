"""The ``lightning-pareto`` command: LightningCLI for fit/validate/test, plus the ``trim`` and ``active`` experiments.

Short class names work in YAML (``class_path: DigitsDataModule``, ``class_path: MLP``,
``class_path: PerClassAccuracy``) because the package's datamodules, networks and callbacks are
imported here, where jsonargparse finds them as subclasses.
"""

from __future__ import annotations

import importlib
import os
import sys
from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

import lightning_pareto.callbacks  # noqa: F401  (registers the callbacks for short class names)
import lightning_pareto.data  # noqa: F401  (registers the datamodules for short class names)
import lightning_pareto.nets  # noqa: F401  (registers the networks for short class names)
from lightning_pareto.callbacks.monitor import find_monitor
from lightning_pareto.module import ClassifierModule

__all__ = ["ParetoCLI", "main"]

# Subcommands handled outside LightningCLI: name -> module with a ``main(argv: list[str])``.
EXPERIMENTS = {
    "trim": "lightning_pareto.experiments.trim",
    "active": "lightning_pareto.experiments.active",
    "compare": "lightning_pareto.experiments.compare",
}


DESCRIPTION = (
    "Training-time course correction of classifiers through influence functions: per-class monitoring, "
    "Direct Improvement and Course Correction (\"What Is The Performance Ceiling of My Classifier?\"), data "
    "trimming and active learning with the FI measure (\"Enhancing Prediction Performance through Influence "
    "Measure\")."
)
EPILOG = (
    "More commands: 'lightning-pareto compare --config CFG' (the config with and without its interventions, per-class "
    "test accuracy at the end of training), 'lightning-pareto trim --help' (FI data trimming), "
    "'lightning-pareto active --help' (FI active learning)."
)


class ParetoCLI(LightningCLI):
    """LightningCLI for :class:`ClassifierModule` and any ``LightningDataModule`` (subclass mode).

    ``model.num_classes`` and ``model.class_names`` come from the datamodule, and ``fit`` ends with a
    per-class summary table from :class:`~lightning_pareto.callbacks.PerClassAccuracy`.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")

    def after_fit(self) -> None:
        monitor = find_monitor(self.trainer)
        if monitor is not None and self.trainer.is_global_zero:
            print("\nPer-class validation accuracy\n" + monitor.summary_table())

    def after_test(self) -> None:
        per_class = getattr(self.model, "test_per_class", [])
        if per_class and self.trainer.is_global_zero:
            names = list(getattr(self.model, "class_names", [str(c) for c in range(len(per_class))]))
            width = max(len("class"), *(len(n) for n in names))
            rows = [f"{name:<{width}}  {100 * value:6.1f}%" for name, value in zip(names, per_class)]
            print("\nPer-class test accuracy\n" + "\n".join([f"{'class':<{width}}  {'test':>7}", *rows]))


def _run_experiment(name: str, argv: list[str]) -> None:
    module_name = EXPERIMENTS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is None or not module_name.startswith(error.name):
            raise
        sys.exit(f"lightning-pareto {name}: this experiment is not available ({module_name} is missing).")
    module.main(argv)


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``lightning-pareto`` and ``python -m lightning_pareto``.

    Args:
        argv: Command-line arguments without the program name (default ``sys.argv[1:]``).
    """
    words = list(sys.argv[1:] if argv is None else argv)
    if words and words[0] in EXPERIMENTS:
        _run_experiment(words[0], words[1:])
        return
    build_cli(argv)


def build_cli(argv: list[str] | None, run: bool = True) -> ParetoCLI:
    """The ``lightning-pareto`` LightningCLI on ``argv`` (``None``: ``sys.argv``); ``run=False`` only builds it."""
    # LightningCLI itself calls jsonargparse APIs that jsonargparse deprecates; a user cannot act on those warnings.
    os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")
    return ParetoCLI(
        ClassifierModule,
        LightningDataModule,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"prog": "lightning-pareto", "description": DESCRIPTION, "epilog": EPILOG},
        args=argv,  # None: LightningCLI reads sys.argv itself
        run=run,
    )
