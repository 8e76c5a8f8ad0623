"""The ``lightning-pareto`` command: LightningCLI for fit/validate/test/predict, plus the experiments in ``EXPERIMENTS``.

Short class names work in YAML (``class_path: DigitsDataModule``, ``class_path: MLP``,
``class_path: PerClassAccuracy``) because the package's datamodules, networks and callbacks are
imported here, where jsonargparse finds them as subclasses.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import logging
import os
import sys
import textwrap
import warnings
from typing import Any

from jsonargparse import DefaultHelpFormatter
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

import lightning_pareto.callbacks  # noqa: F401  (registers the callbacks for short class names)
import lightning_pareto.data  # noqa: F401  (registers the datamodules for short class names)
import lightning_pareto.nets  # noqa: F401  (registers the networks for short class names)
from lightning_pareto.callbacks.monitor import find_monitor
from lightning_pareto.module import ClassifierModule

__all__ = ["ParetoCLI", "main"]

# Subcommands handled outside LightningCLI: name -> module with a ``main(argv: list[str])``. The first line
# of the module's docstring (after "``lightning-pareto NAME``: ") is the command's line in ``--help``.
EXPERIMENTS = {
    "trim": "lightning_pareto.experiments.trim",
    "active": "lightning_pareto.experiments.active",
    "compare": "lightning_pareto.experiments.compare",
    "audit": "lightning_pareto.experiments.audit",
}


DESCRIPTION = (
    "Training-time course correction of classifiers through influence functions: per-class monitoring, "
    'Direct Improvement and Course Correction ("What Is The Performance Ceiling of My Classifier?"), data '
    'trimming and active learning with the FI measure ("Enhancing Prediction Performance through Influence '
    'Measure").'
)
EPILOG = (
    "'lightning-pareto COMMAND --help' shows a command's options, e.g. 'lightning-pareto fit --help'; "
    "'lightning-pareto fit --config configs/digits_course_correction.yaml' runs a demo."
)
PROG = "lightning-pareto"
# What LightningCLI's subcommands do here; a subcommand not named gets the first sentence of its Trainer method's docstring.
LIGHTNING_COMMANDS = {
    "fit": "Train a model from a YAML config: per-class accuracy, the interventions its callbacks make, logs.",
    "validate": "Validate a checkpoint (--ckpt_path); val_acc/<class> with PerClassAccuracy among the callbacks.",
    "test": "Per-class test accuracy of a checkpoint (--ckpt_path): logged as test_acc/<class> and printed.",
    "predict": "Run the model on the predict data (--ckpt_path).",
}
NET_CHOICES = (
    "one of the package's networks by short name ("
    + ", ".join(lightning_pareto.nets.__all__)
    + ") or any torch.nn.Module by its class_path, e.g. {class_path: my_package.MyNet, init_args: {...}}"
)


class _HelpFormatter(DefaultHelpFormatter):
    """jsonargparse's help, except that ``--model.net`` names the package's networks instead of every ``torch.nn`` class."""

    def _get_help_string(self, action: Any) -> str:
        text = super()._get_help_string(action)
        if getattr(action, "dest", None) == "model.net" and ", known subclasses: " in text:
            text = text.split(", known subclasses: ")[0] + f"; {NET_CHOICES})"
        return text


class _NoTips(logging.Filter):
    """Drops Lightning's "Tip: try installing ..." advertisements."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in str(record.msg)


_NO_TIPS = _NoTips()


def _quiet_third_party() -> None:
    """Keep what a user cannot act on off the console: Lightning's tips, and a deprecation notice Lightning itself
    triggers on torch >= 2.9 (``isinstance(treespec, LeafSpec)``)."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NO_TIPS)  # adding it twice is a no-op
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    # LightningCLI itself calls jsonargparse APIs that jsonargparse deprecates.
    os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")


class ParetoCLI(LightningCLI):
    """LightningCLI for :class:`ClassifierModule` and any ``LightningDataModule`` (subclass mode).

    ``model.num_classes`` and ``model.class_names`` come from the datamodule, and ``fit`` ends with a
    per-class summary table from :class:`~lightning_pareto.callbacks.PerClassAccuracy`.
    """

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        return super().init_parser(**kwargs)

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


def commands() -> dict[str, str]:
    """Every ``lightning-pareto`` command with its one-line description, from where it is registered: LightningCLI's
    subcommands (the ``Trainer`` method's docstring) and :data:`EXPERIMENTS` (the module's docstring)."""
    lines = {
        name: LIGHTNING_COMMANDS.get(name) or _first_sentence(inspect.getdoc(getattr(Trainer, name)) or "")
        for name in ParetoCLI.subcommands()
    }
    for name, module_name in EXPERIMENTS.items():
        docstring = _module_docstring(module_name)
        prefix = f"``{PROG} {name}``:"
        first = docstring.strip().splitlines()[0] if docstring.strip() else module_name
        line = first[len(prefix) :].strip() if first.startswith(prefix) else first
        lines[name] = line[:1].upper() + line[1:]
    return lines


def print_help() -> None:
    """The top-level ``--help``: what the tool is and every command, one line each."""
    listed = commands()
    width = max(len(name) for name in listed)
    body = "\n".join(
        textwrap.fill(line, 100, initial_indent=f"  {name:<{width}}  ", subsequent_indent=" " * (width + 4))
        for name, line in listed.items()
    )
    print(
        f"usage: {PROG} COMMAND [options]\n\n{textwrap.fill(DESCRIPTION, 100)}\n\ncommands:\n{body}\n\n"
        f"{textwrap.fill(EPILOG, 100)}"
    )


def _first_sentence(text: str) -> str:
    paragraph = " ".join(text.split("\n\n")[0].split())
    return paragraph.split(". ")[0].rstrip(".") + "."


def _module_docstring(module_name: str) -> str:
    """A module's docstring read from its source, without importing it (``--help`` stays fast)."""
    spec = importlib.util.find_spec(module_name)
    if spec is None or spec.origin is None:
        return ""
    with open(spec.origin, encoding="utf-8") as source:
        return ast.get_docstring(ast.parse(source.read())) or ""


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
    if words[:1] in (["-h"], ["--help"]):
        print_help()
        raise SystemExit(0)
    if words and words[0] in EXPERIMENTS:
        _run_experiment(words[0], words[1:])
        return
    build_cli(argv)


def build_cli(argv: list[str] | None, run: bool = True) -> ParetoCLI:
    """The ``lightning-pareto`` LightningCLI on ``argv`` (``None``: ``sys.argv``); ``run=False`` only builds it."""
    _quiet_third_party()
    return ParetoCLI(
        ClassifierModule,
        LightningDataModule,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"prog": PROG, "description": DESCRIPTION, "epilog": EPILOG},
        args=argv,  # None: LightningCLI reads sys.argv itself
        run=run,
    )
