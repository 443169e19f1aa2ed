"""The resume check that needs nothing built: a run folder's saved config against the config asked for.

Resuming a run folder with another preset or recipe would mix two experiments. The engine compares the
config of every checkpoint it resumes from; this check compares the folder's config.yaml first, before the
data are read, the model is built and SNIP scores it, so a wrong --out fails in a second, not minutes later.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from ..config import RunConfig, config_differences
from ..errors import ReproError
from .hardware import without_hardware_keys


def different_setup_message(where: str | Path, diffs: list[str]) -> str:
    """The refusal to resume `where` with a config that differs in `diffs` (one `key: old -> new` each)."""
    return (f"{where} holds a run with a different setup, so resuming would mix two experiments:\n  "
            + "\n  ".join(diffs) + "\nUse another --out folder, or --force to resume anyway.")


def check_resume_config(out_dir: str | Path, cfg: RunConfig, force: bool) -> None:
    """Refuse to continue `out_dir` when its config.yaml differs from `cfg` in a key that changes results
    (`force` lets it through; the engine then warns). A folder without config.yaml passes."""
    out_dir = Path(out_dir)
    saved_file = out_dir / "config.yaml"
    if force or not saved_file.is_file():
        return
    try:
        saved = yaml.safe_load(saved_file.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ReproError(f"{saved_file} cannot be read ({type(exc).__name__}: {exc}), so it is unknown what this "
                         "run folder holds; restore the file, or use another --out folder") from None
    if not isinstance(saved, dict):
        raise ReproError(f"{saved_file} holds a {type(saved).__name__}, not a run config; restore the file, or "
                         "use another --out folder")
    mine = RunConfig.from_dict(cfg.to_dict())
    if mine.model.num_classes is None:  # filled in from the data when the run was built; not a difference
        mine.model.num_classes = (saved.get("model") or {}).get("num_classes")
    # Batch, accumulation and precision may change with the machine; the checkpoint check judges them.
    diffs = without_hardware_keys(config_differences(saved, mine))
    if diffs:
        raise ReproError(different_setup_message(out_dir, diffs))
