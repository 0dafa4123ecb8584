"""The commands of `musicviz-mlx`, one module each; importing them registers them with `cli.main`."""

from . import analyze, bench, compose, convert, live, mels, render, train  # noqa: F401
