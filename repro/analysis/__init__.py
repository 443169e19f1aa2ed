"""Analyses of trained models beyond accuracy: the effective receptive field (`repro erf`) and robustness to
corruptions and distribution shift (`repro eval --robustness`).

    from repro.analysis.erf import effective_receptive_field, area_ratios
    erf_map = effective_receptive_field(model, images)      # (H, W) mean relu input-gradient map
    area_ratios(erf_map)                                    # {0.2: r, 0.3: r, 0.5: r, 0.99: r}

    from repro.analysis.robustness import run_robustness
    run_robustness("runs/student", baseline="runs/student-alone")   # robustness.json: corruption top-1, mCE
"""
from .erf import (THRESHOLDS, ERFResult, accumulate_erf, area_ratios, default_erf_size, effective_receptive_field,
                  erf_heatmap, normalized_erf, plot_erf, run_erf, square_sides)
from .robustness import (ROBUSTNESS_JSON, corruption_errors, read_robustness, robustness_record, run_robustness,
                         summarize_corruptions)

__all__ = ["THRESHOLDS", "ERFResult", "accumulate_erf", "area_ratios", "default_erf_size",
           "effective_receptive_field", "erf_heatmap", "normalized_erf", "plot_erf", "run_erf", "square_sides",
           "ROBUSTNESS_JSON", "corruption_errors", "read_robustness", "robustness_record", "run_robustness",
           "summarize_corruptions"]
