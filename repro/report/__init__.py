"""Tables and figures regenerated from run folders (summary.json, metrics.jsonl) and the published numbers.

`build_report(run_dirs, out_dir)` writes everything; the pieces (`load_runs`, `runs_table`,
`paper_vs_reproduction`, `distillation_grid`, `training_curves`, ...) are usable on their own in notebooks.
"""
from .build import build_report, run_curves, run_overview, write_csv
from .erf import erf_heatmaps, erf_markdown, erf_table
from .figures import teacher_student_bars, training_curves
from .labels import method_label, model_label
from .published import load_published, published_files
from .robustness import robustness_markdown, robustness_table
from .runs import Run, drop_duplicates, find_run_dirs, load_runs, read_run
from .tables import distillation_grid, group_runs, paper_vs_reproduction, runs_table, score

__all__ = ["build_report", "run_curves", "run_overview", "write_csv", "teacher_student_bars", "training_curves",
           "method_label", "model_label", "load_published", "published_files", "Run", "drop_duplicates",
           "find_run_dirs", "load_runs", "read_run", "distillation_grid", "group_runs", "paper_vs_reproduction",
           "runs_table", "score", "erf_table", "erf_markdown", "erf_heatmaps", "robustness_table",
           "robustness_markdown"]
