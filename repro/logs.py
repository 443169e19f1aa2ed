"""Logging in notebooks: each record reaches the notebook's reader (and papermill's log) at its own level.

papermill logs what a notebook's kernel writes to stdout at INFO and what it writes to stderr at WARNING, and
Python's logging writes every record to stderr by default: a run's progress would read as a page of warnings
in papermill.log and in Kaggle's session log. `notebook_logging` sends records below WARNING to stdout and the
others to stderr. It also silences tqdm's "IProgress not found" warning, which importing timm (through
huggingface_hub's `tqdm.auto`) raises in every Jupyter kernel without ipywidgets, where the plain text bar it
falls back to is the one wanted anyway.
"""
from __future__ import annotations

import logging
import sys
import warnings

__all__ = ["notebook_logging"]

# Marks the handlers installed here, so that running the setup cell again replaces them instead of doubling.
_MARK = "_repro_notebook_handler"


def notebook_logging(level: int = logging.INFO) -> None:
    """Log records below WARNING to stdout and WARNING and above to stderr, as bare messages, from `level` on."""
    warnings.filterwarnings("ignore", message="IProgress not found")
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, _MARK, False)]:
        root.removeHandler(handler)
    below = logging.StreamHandler(sys.stdout)
    below.addFilter(lambda record: record.levelno < logging.WARNING)
    above = logging.StreamHandler(sys.stderr)
    above.setLevel(logging.WARNING)
    for handler in (below, above):
        handler.setFormatter(logging.Formatter("%(message)s"))
        setattr(handler, _MARK, True)
        root.addHandler(handler)
    root.setLevel(level)
