"""The published SLaK sparse-training settings and the prune-rate schedule.

Source: https://github.com/VITA-Group/SLaK (README training commands, sparse_core.py, funcs.py).
"""
import math

from ..errors import ReproError

# Model-name prefixes -> (update_frequency, prune_rate) from the released training commands.
_SCHEDULES = {
    "slak_tiny": (2000, 0.5),
    "slak_micro": (2000, 0.5),
    "slak_small": (100, 0.3),
    "slak_base": (100, 0.3),
    "slak_large": (100, 0.3),
}


def official_recipe(model_name: str) -> dict:
    """DynamicSparsity keyword arguments of the released SLaK recipe (without total_steps, seed, init_batch).

    SLaK-T (and the small slak_micro): u = 2000, rate 0.5; SLaK-S/B/L: u = 100, rate 0.3; all: 40% sparsity,
    SNIP init, magnitude pruning, random growth, cosine decay of the rate to 0.005. Two details follow the
    released code rather than the paper's wording: positions pruned in an update can be drawn again by the
    random growth (and then simply stay active, `regrow_pruned=True`), and layers whose initial density
    reaches 0.99 are left dense (`dense_cutoff=0.99`). The optimizer moments of pruned and regrown weights
    are kept (`reset_moments=False`), as AdamW's are in the released code.
    """
    key = str(model_name).lower()
    for prefix, (update_frequency, prune_rate) in _SCHEDULES.items():
        if key.startswith(prefix):
            return dict(sparsity=0.4, init="snip", update_frequency=update_frequency, prune_rate=prune_rate,
                        growth="random", prune="magnitude", layers="all", min_prune_rate=0.005,
                        regrow_pruned=True, dense_cutoff=0.99, reset_moments=False)
    raise ReproError(f"No published sparse recipe for model {model_name!r}: expected a name starting with one of "
                     f"{sorted(_SCHEDULES)}. Pass the DynamicSparsity arguments yourself for other models.")


def cosine_prune_rate(step: int, prune_rate: float, min_prune_rate: float, total_steps: int) -> float:
    """Prune rate after `step` optimizer steps: min + (initial - min) * (1 + cos(pi * step / total_steps)) / 2.

    The official CosineDecay wraps torch's CosineAnnealingLR(T_max=total_steps, eta_min=0.005) and steps it
    once per optimizer step before reading the rate, so an update at step s uses the value after s scheduler
    steps (this closed form). Past total_steps the rate stays at its minimum (the torch scheduler would start
    to rise again, which the official runs never reach).
    """
    t = min(max(int(step), 0), int(total_steps))
    return min_prune_rate + (prune_rate - min_prune_rate) * (1.0 + math.cos(math.pi * t / total_steps)) / 2.0
