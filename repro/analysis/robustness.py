"""Robustness of a trained model: corruption accuracy, the mean Corruption Error and robustness.json.

Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and Perturbations"
(ICLR 2019). With err = 100 - top-1 (percent) of a model on corruption c at severity s,

    CE_c = sum_s err(model, c, s) / sum_s err(baseline, c, s)        mCE = mean_c CE_c

over the 15 benchmark corruptions (the 4 extra ones are reported, never averaged in), shown in percent of the
baseline's errors: 100 is as robust as the baseline, lower is better. The relative mCE subtracts each model's
clean error first (sum_s (err(c, s) - err_clean)), where the clean error is known. ImageNet-C papers use
AlexNet as the baseline; here the baseline is any run (`baseline`), evaluated on the same images, and
robustness.json names it. Without a baseline there is no mCE, and the file says so.

    record = run_robustness("runs/student", baseline="runs/student-alone")   # writes runs/student/robustness.json
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Mapping

from ..errors import ReproError

log = logging.getLogger("repro.analysis")

ROBUSTNESS_JSON = "robustness.json"
FORMAT = 1
# What must agree between a model's and its baseline's corruption scores for their errors to be compared.
_SAME_BENCHMARK = ("benchmark", "source", "seed", "generator_version", "split_sha256")


def _main_corruptions() -> tuple[str, ...]:
    from ..data.corruptions import CORRUPTIONS

    return CORRUPTIONS


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def summarize_corruptions(scores: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """Per-corruption top-1 (mean over severities, and by severity), per-severity top-1 and the mean corruption
    accuracy over the benchmark corruptions evaluated, from {corruption: {severity: {'top1', 'n', ...}}}."""
    main = _main_corruptions()
    per_corruption = {}
    for c, by_severity in scores.items():
        top1 = {s: r["top1"] for s, r in sorted(by_severity.items())}
        per_corruption[c] = {"top1": _mean(top1.values()), "by_severity": top1,
                             "images": sum(int(r.get("n") or 0) for r in by_severity.values())}
    evaluated = [c for c in main if c in per_corruption]
    severities = sorted({s for c in evaluated for s in scores[c]}, key=int)
    extra = [c for c in per_corruption if c not in main]
    return {
        "per_corruption": per_corruption,
        "per_severity": {s: _mean(per_corruption[c]["by_severity"].get(s) for c in evaluated) for s in severities},
        "mean_corruption_accuracy": _mean(per_corruption[c]["top1"] for c in evaluated),
        "corruptions_in_mean": evaluated,
        "missing_from_mean": [c for c in main if c not in per_corruption],
        "extra_mean_accuracy": _mean(per_corruption[c]["top1"] for c in extra),
    }


def _error_sums(scores, baseline, c: str, clean: float | None, clean_base: float | None):
    """(sum of model errors, sum of baseline errors, and both less their clean errors) over the severities
    of corruption c that both evaluated on the same number of images."""
    model_err = base_err = model_rel = base_rel = 0.0
    common = [s for s in scores[c] if s in baseline[c] and scores[c][s].get("n") == baseline[c][s].get("n")]
    for s in common:
        e, b = 100.0 - scores[c][s]["top1"], 100.0 - baseline[c][s]["top1"]
        model_err, base_err = model_err + e, base_err + b
        if clean is not None and clean_base is not None:
            model_rel, base_rel = model_rel + e - (100.0 - clean), base_rel + b - (100.0 - clean_base)
    return common, model_err, base_err, model_rel, base_rel


def corruption_errors(scores: Mapping, baseline: Mapping, *, clean: float | None = None,
                      clean_baseline: float | None = None) -> dict[str, Any]:
    """CE per corruption and mCE (percent of the baseline's errors) over the benchmark corruptions both score
    sets hold, with the relative versions when both clean accuracies are given; None where undefined (a
    baseline without errors)."""
    ce, rel = {}, {}
    for c in _main_corruptions():
        if c not in scores or c not in baseline:
            continue
        common, err, base, err_rel, base_rel = _error_sums(scores, baseline, c, clean, clean_baseline)
        if not common:
            continue
        ce[c] = 100.0 * err / base if base > 0 else None
        if clean is not None and clean_baseline is not None:
            rel[c] = 100.0 * err_rel / base_rel if base_rel > 0 else None
    defined = [v for v in ce.values() if v is not None]
    return {"ce": ce, "mce": sum(defined) / len(defined) if defined and len(defined) == len(ce) else None,
            "relative_ce": rel or None,
            "relative_mce": (sum(rel.values()) / len(rel)) if rel and None not in rel.values() else None,
            "corruptions": list(ce)}


def benchmark_mismatch(model: Mapping[str, Any], baseline: Mapping[str, Any]) -> str | None:
    """Why a model's and a baseline's corruption records cannot be compared (other images), or None."""
    keys = _SAME_BENCHMARK + (("limit",) if model.get("benchmark") == "ImageNet-C" else ())
    for key in keys:
        if model.get(key) != baseline.get(key):
            return f"{key} {model.get(key)!r} for the model, {baseline.get(key)!r} for the baseline"
    return None


def robustness_record(raw: Mapping[str, Any], baseline: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The robustness.json record of raw scores (`repro.train.evaluate_robustness`), with the mCE against a
    baseline's raw scores or record when given."""
    from .. import __version__
    from ..train.checkpoint import checkpoint_step

    step = checkpoint_step(Path(raw["file"]))
    record = {"format": FORMAT, **{k: raw[k] for k in ("model", "weights", "checkpoint", "file", "deploy",
                                                        "dataset", "img_size")},
              # The step tells a robustness.json from weights the run has since replaced.
              "step": step if step >= 0 else None,
              "sets": {name: dict(r) for name, r in raw.get("sets", {}).items()}, "corruption": None,
              "version": __version__}
    bench = raw.get("corruption")
    if bench is None:
        return record
    summary = summarize_corruptions(bench["scores"])
    clean = (bench.get("clean") or {}).get("top1")
    corruption = {k: bench.get(k) for k in ("benchmark", "source", "folder", "seed", "generator_version",
                                            "split_sha256", "images_per_severity", "limit", "severities",
                                            "unavailable")}
    corruption.update(clean_top1=clean, **summary, scores=bench["scores"])
    corruption["mce"] = _mce_entry(bench, clean, baseline)
    record["corruption"] = corruption
    return record


def _mce_entry(bench: Mapping, clean: float | None, baseline: Mapping | None) -> dict[str, Any]:
    if baseline is None:
        return {"baseline": None, "mce": None, "relative_mce": None,
                "note": "no baseline given, so no mCE: pass --baseline RUN (a run scored on the same images)"}
    base_bench = baseline.get("corruption")
    if not base_bench:
        raise ReproError(f"the baseline {baseline.get('checkpoint')} has no corruption scores; score it on the "
                         f"same {bench.get('benchmark')} images")
    why = benchmark_mismatch(bench, base_bench)
    if why:
        raise ReproError(f"the baseline {baseline.get('checkpoint')} was scored on other corruption images ({why}); "
                         "score both with the same --corruption-source, --corruption-seed and --limit")
    base_clean = base_bench.get("clean_top1", (base_bench.get("clean") or {}).get("top1"))
    errors = corruption_errors(bench["scores"], base_bench["scores"], clean=clean, clean_baseline=base_clean)
    who = {k: baseline.get(k) for k in ("model", "checkpoint", "file", "weights")}
    note = ("CE_c = sum over severities of the model's top-1 errors / the baseline's, in percent; mCE = mean over "
            f"{len(errors['corruptions'])} of the 15 benchmark corruptions")
    missing = [c for c in _main_corruptions() if c not in errors["corruptions"]]
    if missing:
        note += f" (not scored for both: {', '.join(missing)}; not comparable with a 15-corruption mCE)"
    return {"baseline": who, **errors, "note": note}


def read_robustness(path: str | Path) -> dict[str, Any]:
    """A robustness.json record (or the one in a run folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / ROBUSTNESS_JSON
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise ReproError(f"{path} does not exist; score the run first with `repro eval --robustness`") from None
    except json.JSONDecodeError as exc:
        raise ReproError(f"{path} is not valid JSON ({exc}); score the run again with `repro eval "
                         "--robustness`") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ReproError(f"{path} is not a robustness.json of format {FORMAT}; score the run again")
    return record


def _output_folder(source: Path, out_dir: str | Path | None) -> Path:
    """--out, else the run folder of which `source` is the last state; checked writable before any work."""
    from ..paths import ensure_writable_dir
    from ..train.checkpoint import run_of

    if out_dir is not None:
        return ensure_writable_dir(out_dir, "the robustness folder (--out)")
    run_dir, last = run_of(source)
    if run_dir is None or not last:
        what = (f"an earlier checkpoint of the run {run_dir}" if run_dir is not None
                else "not a run folder of this package, nor its newest checkpoint")
        raise ReproError(f"{source} is {what}, so robustness.json has no run folder to go to; pass --out DIR")
    return ensure_writable_dir(run_dir, "the run folder")


def _baseline_scores(baseline: str | Path, raw: Mapping[str, Any], options: dict) -> dict[str, Any]:
    """The baseline's record: its robustness.json when that holds the same corruption images, else it is scored
    now with the same options (and the record saved in its run folder when it has none yet)."""
    from ..train import evaluate_robustness
    from ..train.checkpoint import atomic_write_text, run_of

    path = Path(baseline)
    if path.suffix == ".json":
        return read_robustness(path)  # used as it is; a file of other images is refused when compared
    if (path / ROBUSTNESS_JSON).is_file():
        record = read_robustness(path)
        if _covers(record.get("corruption"), raw.get("corruption") or {}):
            return record
        log.info("%s holds scores of other corruption images; scoring the baseline again", path / ROBUSTNESS_JSON)
    if not path.exists():
        raise ReproError(f"baseline not found: {path}; pass a run folder, a checkpoint or a robustness.json")
    bench = raw.get("corruption") or {}
    corruptions = list(bench.get("scores", {})) or options.get("corruptions")
    base_raw = evaluate_robustness(path, **{**options, "corruptions": corruptions})
    record = robustness_record(base_raw)
    run_dir, last = run_of(path)
    if run_dir is not None and last and not (run_dir / ROBUSTNESS_JSON).exists():
        try:
            atomic_write_text(run_dir / ROBUSTNESS_JSON, json.dumps(_finite(record), indent=2) + "\n")
        except OSError:
            pass  # a read-only baseline (e.g. attached on Kaggle) is simply not saved
    return record


def _covers(base: Mapping[str, Any] | None, bench: Mapping[str, Any]) -> bool:
    """True when a baseline's corruption record holds every corruption and severity of `bench`, on the same
    images (same benchmark and number of images)."""
    if not base or benchmark_mismatch(bench, base):
        return False
    have = base.get("scores", {})
    return all(s in have.get(c, {}) and have[c][s].get("n") == r.get("n")
               for c, by_severity in bench.get("scores", {}).items() for s, r in by_severity.items())


def _finite(obj):
    """NaN and infinities as null, so the file is strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def run_robustness(source: str | Path, *, baseline: str | Path | None = None, out_dir: str | Path | None = None,
                   model_name: str | None = None, **options) -> dict[str, Any]:
    """Score a run folder, a checkpoint of this package or a released file on every robustness set found
    (`repro.train.evaluate_robustness` options: data_overrides, corruptions, severities, limit, seed,
    corruption_source, cache_dir, frost_folder, device, use_ema, batch_size, precision, deploy, progress),
    compute the mCE against
    `baseline` when given, and write robustness.json into `out_dir` (default: the run folder). Returns the
    record with the written path under 'file_written'."""
    from ..train import evaluate_robustness
    from ..train.checkpoint import atomic_write_text

    source = Path(source)
    out = _output_folder(source, out_dir)
    raw = evaluate_robustness(source, model_name=model_name, **options)
    base_record = None
    if baseline is not None:
        if raw.get("corruption") is None:
            log.warning("no corruption benchmark was scored, so the baseline %s is not used (mCE needs "
                        "corruption scores)", baseline)
        else:
            base_options = {k: v for k, v in options.items() if k != "use_ema"}
            base_record = _baseline_scores(baseline, raw, base_options)
    record = _finite(robustness_record(raw, base_record))
    path = out / ROBUSTNESS_JSON
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    return {**record, "file_written": str(path)}
