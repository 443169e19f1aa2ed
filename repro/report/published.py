"""The papers' published numbers, read from the CSV files shipped in `repro/published/`."""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Iterable

import pandas as pd

from ..errors import ReproError

COLUMNS = ["paper", "source", "model", "dataset", "img_size", "epochs", "distill_method", "teacher", "variant",
           "metric", "value", "hardware", "note"]
_TEXT = ["paper", "source", "model", "dataset", "distill_method", "teacher", "variant", "metric", "hardware", "note"]


def published_files() -> list[Path]:
    """The CSV files of published numbers shipped with the package."""
    folder = resources.files("repro").joinpath("published")
    return sorted(Path(str(p)) for p in folder.iterdir() if p.name.endswith(".csv"))


def load_published(files: Iterable[str | Path] | None = None) -> pd.DataFrame:
    """All published numbers as one table (one row per number; empty values are NaN, i.e. unknown)."""
    frames = []
    for path in (published_files() if files is None else [Path(f) for f in files]):
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        if list(frame.columns) != COLUMNS:
            raise ReproError(f"{path} has columns {list(frame.columns)}; expected {COLUMNS}")
        frame["file"] = path.name
        frames.append(frame)
    if not frames:
        raise ReproError("no published CSV files found; reinstall the package (repro/published/*.csv)")
    table = pd.concat(frames, ignore_index=True)
    for col in ("img_size", "epochs"):
        table[col] = pd.to_numeric(table[col].replace("", None)).astype("Int64")
    try:
        table["value"] = pd.to_numeric(table["value"].replace("", None)).astype(float)
    except ValueError as exc:
        raise ReproError(f"a published value is not a number ({exc}); fix repro/published/*.csv") from None
    for col in _TEXT:
        table[col] = table[col].str.strip()
    table["distill_method"] = table["distill_method"].str.lower()
    return table
