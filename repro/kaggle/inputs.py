"""Finding things under /kaggle/input at run time, where mount paths vary between images and sources.

A dataset may appear as /kaggle/input/<slug>/ or deeper (/kaggle/input/datasets/<owner>/<slug>/), a notebook's
output as /kaggle/input/<kernel-slug>/ or deeper; nothing here hard-codes either. Searches are bounded in depth
so an attached ImageNet (a million files) is never walked.

Plans refer to a folder inside an attached input as `kaggle-input:<relative/path>` (e.g.
`distill.teacher=kaggle-input:slak-tiny-cifar100`); the notebook prepared by `repro kaggle prepare` replaces such
references by the absolute path found here before the run starts.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ..device import kaggle_root
from ..errors import ReproError

INPUT_REF = "kaggle-input:"
MAX_DEPTH = 4


def input_root() -> Path:
    """The read-only inputs folder (/kaggle/input, or $REPRO_KAGGLE_ROOT/input)."""
    return kaggle_root() / "input"


def find_in_input(relative: str, *, max_depth: int = MAX_DEPTH, root: Path | None = None) -> list[Path]:
    """Paths `<input>/<any folders, up to max_depth>/<relative>` that exist, shallowest first."""
    from ..data.locate import walk_dirs  # bounded breadth-first walk that skips image folders
    root = input_root() if root is None else Path(root)
    relative = relative.strip("/")
    if not relative:
        raise ReproError(f"'{INPUT_REF}' needs a path after it, e.g. {INPUT_REF}slak-tiny-cifar100")
    return [folder / relative for folder in walk_dirs(root, max_depth) if (folder / relative).exists()]


def resolve_input_refs(value: Any) -> Any:
    """Replace every `kaggle-input:REL` string (also inside lists, dicts and `key=value` overrides) by a path.

    Raises ReproError when a reference matches nothing, or more than one folder at the shallowest depth.
    """
    if isinstance(value, list):
        return [resolve_input_refs(v) for v in value]
    if isinstance(value, tuple):
        return tuple(resolve_input_refs(v) for v in value)
    if isinstance(value, dict):
        return {k: resolve_input_refs(v) for k, v in value.items()}
    if not isinstance(value, str) or INPUT_REF not in value:
        return value
    prefix, _, relative = value.partition(INPUT_REF)
    hits = find_in_input(relative)
    if not hits:
        raise ReproError(f"'{value}': no '{relative}' under {input_root()} (searched {MAX_DEPTH} folders deep); "
                         "attach the notebook or dataset that holds it (kernel_sources / dataset_sources in "
                         "the plan's kaggle section) and check that it finished")
    depth = len(hits[0].relative_to(input_root()).parts)
    shallowest = [h for h in hits if len(h.relative_to(input_root()).parts) == depth]
    if len(shallowest) > 1:
        raise ReproError(f"'{value}' is ambiguous: {', '.join(map(str, shallowest))}; "
                         "add the input's slug in front (kaggle-input:<slug>/...)")
    return prefix + str(hits[0])


# Run files carried from session k-1 into session k's fresh output folder (checkpoints stay where they are:
# the engine reads them from the input).
HISTORY_FILES = ("config.yaml", "metrics.jsonl")


def require_previous_session(run: str, session: int, previous: str | None = None,
                             out_dir: str | Path | None = None) -> Path | None:
    """Session k > 1 must find session k-1's checkpoints of `run` under the inputs, or fail before training.

    Without this check a missing attachment would silently restart the run from step 0 and spend a whole
    session. With `out_dir` (this session's run folder, still empty on a fresh Kaggle session), the run's
    history (config.yaml, metrics.jsonl) is copied there, so the last session's output holds the whole run.
    Returns the run folder found (None for session 1).
    """
    if session <= 1:
        return None
    for hit in find_in_input(run):
        if any((hit / "checkpoints").glob("ckpt-*.pt")):
            print(f"session {session}: resuming {run} from {hit}")
            if out_dir is not None and not (Path(out_dir) / "metrics.jsonl").exists():
                Path(out_dir).mkdir(parents=True, exist_ok=True)
                for name in HISTORY_FILES:
                    if (hit / name).is_file():
                        shutil.copyfile(hit / name, Path(out_dir) / name)
            return hit
    source = f"kernel {previous}" if previous else f"session {session - 1}"
    raise ReproError(f"session {session} of run '{run}' continues session {session - 1}, but no checkpoint of "
                     f"'{run}' was found under {input_root()}: attach the output of {source} (kernel_sources in "
                     "kernel-metadata.json) and check with `repro kaggle status` that it ended as 'stopped' or "
                     "'complete' with its outputs saved")


def require_previous_cohort(run: str, members: list[str], session: int, previous: str | None = None,
                            out_dir: str | Path | None = None) -> list[Path] | None:
    """`require_previous_session` for every member of a cohort run (`<run>/<member>` under the inputs), each
    member's history going to out_dir/<member>; the engine then finds each member's checkpoints by itself."""
    if session <= 1:
        return None
    return [require_previous_session(f"{run}/{member}", session, previous,
                                     out_dir=Path(out_dir) / member if out_dir is not None else None)
            for member in members]
