"""Running plans on Kaggle: code bundle, baked notebooks, chained sessions, pre-flight, official CLI wrappers.

Workflow (kaggle/README.md walks through it): `repro kaggle bundle` makes the code dataset (a wheel installed
offline in the notebook), `repro kaggle prepare PLAN.yaml` writes one kernel folder per run and session,
`repro kaggle push` sends session 1, then each next session once the previous one completed, `repro kaggle
output` downloads the outputs and `repro kaggle status` summarises the chain.

The plan's `kaggle:` section (every key optional except an owner, which --owner may give instead):

    kaggle:
      owner: your-kaggle-name            # owns the kernels and the datasets
      slug_prefix: repro                 # kernel <owner>/<slug_prefix>-<run>-s<k>
      machine_shape: NvidiaTeslaT4       # NvidiaTeslaT4 (GPU T4 x2) | NvidiaL4X1 | ... | null (CPU)
      enable_gpu: true                   # default: whether machine_shape is a GPU
      code_dataset: repro-lkt-code       # the `repro kaggle bundle` dataset ('slug' or 'owner/slug')
      data_sources: ["{owner}/cifar-100-python"]   # datasets with the data; {owner} is replaced
      kernel_sources: []                 # other notebooks' outputs every session needs (e.g. a teacher)
      model_sources: []                  # owner/model/framework/variation/version
      sessions: 1                        # chained sessions per run (`repro kaggle plan-sessions`)
      time_budget: 11h15m                # training budget per session, under the ~12 h limit
      working_dir: /kaggle/working       # out_dir = <working_dir>/<run name>
      private: true
      docker_image_pinning_type: null    # original | latest; null: original for a chain of sessions
      keywords: []
      parameters: {}                     # notebook parameters set on Kaggle only
      pack: 1                            # 2: pairs of runs side by side in one T4 x2 session, one per GPU
      runs:                              # per-run overrides of the keys above
        some-run-name: {sessions: 3}

Parameter values may refer to folders inside attached inputs as `kaggle-input:<path>` (for example
`distill.teacher=kaggle-input:slak-tiny-cifar100`); the prepared notebook resolves them on Kaggle, where mount
paths vary. Nothing here imports the official `kaggle` module, which authenticates at import time.
"""
from .bundle import build_bundle, verify_bundle
from .inputs import find_in_input, require_previous_cohort, require_previous_session, resolve_input_refs
from .metadata import slugify, validate_dataset_metadata, validate_kernel_metadata
from .preflight import preflight
from .prepare import KaggleSettings, parse_settings, prepare_plan
from .sessions import chain_status, plan_sessions, plan_sessions_from_run

__all__ = ["KaggleSettings", "build_bundle", "chain_status", "find_in_input", "parse_settings", "plan_sessions",
           "plan_sessions_from_run", "preflight", "prepare_plan", "require_previous_cohort", "require_previous_session",
           "resolve_input_refs", "slugify", "validate_dataset_metadata", "validate_kernel_metadata",
           "verify_bundle"]
