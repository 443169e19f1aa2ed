"""Sparse training of weights: SLaK's dynamic sparsity (binary masks, periodic prune-and-regrow).

Typical loop::

    sparsity = DynamicSparsity(model, optimizer, **official_recipe("slak_tiny"), total_steps=steps, seed=0,
                               init_batch=next(iter(loader)))
    for x, y in loader:
        loss = criterion(model(x), y); loss.backward()
        optimizer.step(); sparsity.step(); optimizer.zero_grad()
        ema.update(model); sparsity.apply_to_ema(ema.module)

Works on any nn.Module; checkpoint `sparsity.state_dict()` with the model and optimizer.
"""
from .allocation import erk_counts, select_parameters, snip_counts, uniform_counts
from .dynamic import GROWTH_MODES, INIT_MODES, PRUNE_MODES, DynamicSparsity
from .recipes import cosine_prune_rate, official_recipe

__all__ = [
    "DynamicSparsity", "official_recipe", "cosine_prune_rate", "select_parameters", "erk_counts", "snip_counts",
    "uniform_counts", "INIT_MODES", "GROWTH_MODES", "PRUNE_MODES",
]
