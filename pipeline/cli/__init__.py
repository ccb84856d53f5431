"""The command line: ``pipeline.cli.main`` holds the Typer app (the ``pipeline`` console script names it as
``pipeline.cli:app``), one module per command beside it. Nothing outside this package imports it.

The app is handed on lazily, so that ``python -m pipeline.cli.tune`` (one process per GPU under accelerate or
torchrun) loads the tune command alone, not every command of the CLI.
"""


def __getattr__(name: str):
    if name == "app":
        from .main import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
