"""Paper-reproduction experiments behind ``lightning-pareto trim`` and ``lightning-pareto active``.

Each module exposes ``main(argv: list[str])``, which the ``lightning-pareto`` command dispatches to.
"""
