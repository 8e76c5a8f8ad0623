"""``python -m lightning_pareto``: the same as the ``lightning-pareto`` command."""

from lightning_pareto.cli import main

if __name__ == "__main__":
    main()
