"""Which weights are sparse, and how many of each layer's weights start active (SNIP, ERK, uniform).

SNIP: Lee et al., "SNIP: Single-shot Network Pruning based on Connection Sensitivity", ICLR 2019.
ERK: Evci et al., "Rigging the Lottery: Making All Tickets Winners" (RigL), ICML 2020.
The allocation follows the SLaK code (https://github.com/VITA-Group/SLaK, sparse_core.py), which turns SNIP
scores or the Erdos-Renyi-Kernel formula into per-layer densities; here densities become exact integer counts,
so the overall density is exactly the one asked for rather than right only in expectation.
"""
import math
import re
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ReproError

LAYER_CHOICES = ("all", "large_kernel")


def select_parameters(model: nn.Module, layers: str) -> List[Tuple[str, nn.Parameter]]:
    """Return the (name, parameter) pairs chosen by `layers`: 'all', 'large_kernel' or a regular expression."""
    if not isinstance(layers, str) or not layers:
        raise ReproError(f"layers must be 'all', 'large_kernel' or a regular expression over parameter names; "
                         f"found {layers!r}.")
    named = list(model.named_parameters())
    if layers == "all":
        chosen = [(n, p) for n, p in named if p.dim() in (2, 4)]
    elif layers == "large_kernel":
        chosen = [(n, p) for n, p in named if "large_kernel" in n and p.dim() == 4]
    else:
        try:
            pattern = re.compile(layers)
        except re.error as err:
            raise ReproError(f"layers={layers!r} is neither 'all', 'large_kernel' nor a valid regular expression "
                             f"({err}); fix the pattern or use one of {LAYER_CHOICES}.") from None
        # Biases and norm scales (1-D) are never masked, whatever the pattern.
        chosen = [(n, p) for n, p in named if p.dim() >= 2 and pattern.search(n)]
    if not chosen:
        sample = ", ".join([n for n, p in named if p.dim() >= 2][:6]) or "none"
        raise ReproError(
            f"layers={layers!r} selects no weight of this {type(model).__name__}: expected 'all' (every 2-D and "
            f"4-D weight), 'large_kernel' (4-D weights whose names contain 'large_kernel') or a regular "
            f"expression matched with re.search on names of weights with 2 or more dimensions (first such "
            f"names: {sample}). Choose a pattern that matches at least one of them.")
    return chosen


def apportion(ideal: Sequence[float], caps: Sequence[int], total: int) -> List[int]:
    """Integer counts close to `ideal`, each in [0, cap], summing exactly to `total` (largest remainder)."""
    total = max(0, min(int(total), int(sum(caps))))
    counts = [min(int(cap), max(0, math.floor(x))) for x, cap in zip(ideal, caps)]
    rest = total - sum(counts)
    # Largest fractional parts first; equal parts go to the earlier layer, so the result is deterministic.
    order = sorted(range(len(counts)), key=lambda i: (-(ideal[i] - math.floor(ideal[i])), i))
    while rest > 0:
        moved = False
        for i in order:
            if rest > 0 and counts[i] < caps[i]:
                counts[i] += 1
                rest -= 1
                moved = True
        if not moved:
            break
    for i in reversed(order):
        if rest >= 0:
            break
        take = min(counts[i], -rest)
        counts[i] -= take
        rest += take
    return counts


def uniform_counts(numels: Sequence[int], density: float) -> List[int]:
    """Every layer keeps round(density * numel) weights."""
    return [min(n, math.floor(density * n + 0.5)) for n in numels]


def erk_counts(shapes: Sequence[Tuple[int, ...]], density: float, power_scale: float = 1.0) -> List[int]:
    """Erdos-Renyi-Kernel counts: density proportional to sum(shape) / prod(shape), capped at 1, overall exact.

    Layers whose ERK density would exceed 1 are made dense and the others rescaled (the official loop), then
    the densities are rounded to counts whose sum is exactly round(density * total).
    """
    numels = [math.prod(s) for s in shapes]
    raw = [(sum(s) / math.prod(s)) ** power_scale for s in shapes]
    dense = set()
    epsilon = 0.0
    while True:
        rhs, divisor = 0.0, 0.0
        for i, n in enumerate(numels):
            if i in dense:
                rhs -= n * (1.0 - density)
            else:
                rhs += n * density
                divisor += raw[i] * n
        if divisor == 0:
            break
        epsilon = rhs / divisor
        max_raw = max(raw[i] for i in range(len(raw)) if i not in dense)
        if max_raw * epsilon > 1.0:
            dense.update(i for i in range(len(raw)) if i not in dense and raw[i] == max_raw)
            continue
        break
    ideal = [float(n) if i in dense else epsilon * raw[i] * n for i, n in enumerate(numels)]
    return apportion(ideal, numels, math.floor(density * sum(numels) + 0.5))


def snip_scores(model: nn.Module, params: Sequence[nn.Parameter], batch, loss_fn: Optional[Callable] = None
                ) -> List[torch.Tensor]:
    """|w * dL/dw| for each of `params` on one batch; the model's weights, grads, buffers, modes and RNG are kept.

    As in the official code the batch runs in train mode; BatchNorm running statistics are restored afterwards,
    gradients are taken with autograd.grad (so `.grad` and any DDP hooks are untouched), and the global RNG
    (dropout, drop path) is forked.
    """
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise ReproError(f"init_batch must be a pair (images, targets) for SNIP; found {type(batch).__name__}.")
    loss_fn = F.cross_entropy if loss_fn is None else loss_fn
    device = params[0].device
    x, y = (t.to(device) if torch.is_tensor(t) else t for t in batch)
    saved_buffers = [(b, b.detach().clone()) for b in model.buffers()]
    saved_modes = [(m, m.training) for m in model.modules()]
    cuda_devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    wanted = [p for p in params if p.requires_grad]
    try:
        with torch.random.fork_rng(devices=cuda_devices), torch.enable_grad():
            model.train()
            loss = loss_fn(model(x), y)
            if not (torch.is_tensor(loss) and loss.numel() == 1):
                raise ReproError(f"loss_fn must return a scalar tensor for SNIP; found {type(loss).__name__} "
                                 f"with shape {getattr(loss, 'shape', None)}.")
            grads = torch.autograd.grad(loss, wanted, allow_unused=True) if wanted else []
    finally:
        for module, mode in saved_modes:
            module.training = mode
        with torch.no_grad():
            for buf, saved in saved_buffers:
                buf.copy_(saved)
    by_param = {id(p): g for p, g in zip(wanted, grads)}
    scores = []
    for p in params:
        g = by_param.get(id(p))
        if g is None:  # frozen or unused weight: no evidence that it matters
            scores.append(torch.zeros(p.shape, dtype=torch.float32, device=p.device))
        else:
            scores.append((p.detach().float() * g.float()).abs().nan_to_num_(nan=0.0))
    return scores


def snip_counts(scores: Sequence[torch.Tensor], total: int) -> List[int]:
    """Per-layer counts of the global top-`total` scores; ties at the threshold are shared in proportion."""
    numels = [s.numel() for s in scores]
    if total >= sum(numels):
        return list(numels)
    if total <= 0:
        return [0] * len(scores)
    flat = torch.cat([s.reshape(-1).to(scores[0].device) for s in scores])
    threshold = kth_smallest(flat.neg_(), total).neg()
    del flat
    greater = [int(torch.count_nonzero(s > threshold)) for s in scores]
    ties = [int(torch.count_nonzero(s == threshold)) for s in scores]
    need = total - sum(greater)
    tie_total = sum(ties)
    share = apportion([need * t / tie_total for t in ties], ties, need) if tie_total else [0] * len(scores)
    return [g + s for g, s in zip(greater, share)]


def kth_smallest(values: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th smallest entry (1-based) of a 1-D tensor, as a 0-d tensor."""
    if values.is_cuda:  # one large slice: topk's multi-block radix select beats kthvalue's single block
        return torch.topk(values, k, largest=False, sorted=False).values.max()
    return torch.kthvalue(values, k).values


def smallest_k(score: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k smallest entries of a 1-D tensor; ties go to the lowest indices (device independent)."""
    n = score.numel()
    if k <= 0:
        return torch.empty(0, dtype=torch.long, device=score.device)
    if k >= n:
        return torch.arange(n, device=score.device)
    threshold = kth_smallest(score, k)
    below = torch.nonzero(score < threshold).squeeze(1)
    ties = torch.nonzero(score == threshold).squeeze(1)[: k - below.numel()]
    return torch.cat([below, ties])


def random_subset(candidates: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """`k` entries of the 1-D tensor `candidates` drawn uniformly without replacement.

    Every candidate gets a float64 key from the CPU `generator` and the k smallest keys win: the same subset on
    any device, and several times cheaper than a full random permutation.
    """
    if k >= candidates.numel():
        return candidates
    keys = torch.rand(candidates.numel(), generator=generator, dtype=torch.float64).to(candidates.device)
    return candidates[smallest_k(keys, k)]


def random_mask(shape, count: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """A bool tensor of `shape` on `device` with exactly `count` True entries drawn from `generator`."""
    numel = math.prod(shape)
    mask = torch.zeros(numel, dtype=torch.bool, device=device)
    if count > 0:
        mask[random_subset(torch.arange(numel, device=device), count, generator)] = True
    return mask.reshape(tuple(shape))
