"""Dynamic sparse training: binary weight masks with periodic magnitude pruning and regrowth (SLaK).

Paper: Liu et al., "More ConvNets in the 2020s: Scaling up Kernels Beyond 51x51 using Sparsity", ICLR 2023.
Original code: https://github.com/VITA-Group/SLaK (sparse_core.py, funcs.py), itself built on Dettmers &
Zettlemoyer's sparse-learning library. Same algorithm, with these differences:

- masks, the "ever active" masks, the step counter and the growth generator are part of `state_dict()`, so a
  resumed run continues bit-identically (the original rebuilt masks from zero weights);
- `step()` is called by the training loop after every optimizer step, with or without AMP (the original never
  masked under AMP);
- all random draws come from one CPU `torch.Generator`, so masks are the same on CPU and GPU, on every DDP rank,
  with no communication after construction (the original broadcast every mask at every step);
- pruning and regrowth change exactly ceil(rate * nonzeros) weights per layer, so nonzero counts are conserved
  exactly (the original's random growth was right only in expectation);
- three choices of the released code are options: growth may draw positions pruned in the same update
  (`regrow_pruned`), layers allotted at least `dense_cutoff` density stay dense, and the optimizer moments
  (Adam exp_avg / exp_avg_sq, SGD momentum, ...) of pruned and regrown weights are zeroed or kept
  (`reset_moments`). The released behaviour is `regrow_pruned=True, dense_cutoff=0.99, reset_moments=False`
  (`repro.sparse.official_recipe`); the constructor's defaults are the alternatives.

`apply_to_ema` finishes an EMA update as the released sparse-aware EMA (model_sema.py) does: an EMA entry that
is zero while its weight is active takes the model's value instead of averaging up from zero.
"""
import logging
import math
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn

from ..errors import ReproError
from .allocation import (erk_counts, random_mask, random_subset, select_parameters, smallest_k, snip_counts,
                         snip_scores, uniform_counts)
from .recipes import cosine_prune_rate

logger = logging.getLogger("repro.sparse")

INIT_MODES = ("snip", "erk", "uniform")
GROWTH_MODES = ("random", "gradient")
PRUNE_MODES = ("magnitude",)
_STATE_FORMAT = "repro.sparse/1"
_WRAPPER_ATTRS = ("module", "_orig_mod")  # DistributedDataParallel / DataParallel / EMA wrappers, torch.compile


def _unwrap(module: nn.Module) -> nn.Module:
    """The innermost module whose parameter names carry no wrapper prefix ('module.', '_orig_mod.')."""
    for attr in _WRAPPER_ATTRS:
        inner = getattr(module, attr, None)
        if isinstance(inner, nn.Module):
            names = [n for n, _ in module.named_parameters()]
            if names and all(n.startswith(attr + ".") for n in names):
                return _unwrap(inner)
    return module


def _pack(mask: torch.Tensor) -> torch.Tensor:
    """Bool tensor -> uint8 tensor of packed bits (8 weights per byte)."""
    return torch.from_numpy(np.packbits(mask.detach().reshape(-1).cpu().numpy()))


def _unpack(packed: torch.Tensor, shape) -> torch.Tensor:
    """Inverse of `_pack` for a tensor of `shape` (CPU bool)."""
    numel = math.prod(shape)
    bits = np.unpackbits(packed.cpu().numpy().astype(np.uint8), count=numel).astype(bool)
    return torch.from_numpy(bits).reshape(tuple(shape))


def _as_score(values: torch.Tensor) -> torch.Tensor:
    """Half-precision values as float32 (selection kernels and exact ties); float32/64 unchanged."""
    return values if values.dtype in (torch.float32, torch.float64) else values.float()


def _fill_flat(tensor: torch.Tensor, index: torch.Tensor, value: float) -> None:
    """tensor.reshape(-1)[index] = value, in place, also for non-contiguous (e.g. channels_last) tensors."""
    if index.numel() == 0:
        return
    if tensor.is_contiguous():
        tensor.view(-1)[index] = value
    else:
        where = torch.zeros(tensor.numel(), dtype=torch.bool, device=tensor.device)
        where[index] = True
        tensor.masked_fill_(where.view(tensor.shape), value)


def _set_flat(tensor: torch.Tensor, index: torch.Tensor, values: torch.Tensor) -> None:
    """tensor.reshape(-1)[index] = values, in place, also for non-contiguous (e.g. channels_last) tensors."""
    if index.numel() == 0:
        return
    if tensor.is_contiguous():
        tensor.view(-1)[index] = values
    else:
        tensor[torch.unravel_index(index, tensor.shape)] = values


def _check_number(name: str, value, low: float, high: float, low_open: bool = False, high_open: bool = False):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ReproError(f"{name} must be a number in {interval}; found {value!r}.")


def _check_choice(name: str, value, choices) -> str:
    key = value.lower() if isinstance(value, str) else value
    if key not in choices:
        raise ReproError(f"Unknown {name} {value!r}: expected one of {list(choices)}.")
    return key


class DynamicSparsity:
    """Keeps chosen weights of a model sparse and periodically moves the sparsity pattern (prune and regrow).

    Call `step()` right after every `optimizer.step()` (also after `scaler.step(optimizer)` under AMP, whether
    or not the scaler skipped the step) and before `optimizer.zero_grad()`. Weights outside the masks are then
    exactly zero. Every `update_frequency` steps each layer prunes its ceil(rate * nonzeros) smallest-magnitude
    active weights and regrows exactly as many at inactive positions (weights starting at zero). A model EMA
    is kept sparse by calling `apply_to_ema(ema)` after each of its updates.

    Args:
        model: the network (a DistributedDataParallel / DataParallel / torch.compile wrapper is looked through;
            mask names are the inner module's parameter names).
        optimizer: the optimizer updating the model; with `reset_moments`, moments of pruned and regrown
            weights are zeroed in its state (any state tensor shaped like the weight). May be None.
        sparsity: fraction of zeros over the masked tensors, in [0, 1); 0 makes the object a no-op.
        init: 'snip' (per-layer densities from the global top-k of |w * dL/dw| on `init_batch`, then random
            masks with those counts, as released), 'erk' (Erdos-Renyi-Kernel) or 'uniform'.
        update_frequency: optimizer steps between prune-and-regrow updates; None keeps the masks fixed.
        prune_rate: initial fraction of each layer's active weights replaced per update, cosine-decayed to
            `min_prune_rate` over `total_steps` (see `cosine_prune_rate`).
        growth: 'random' (uniform among inactive positions) or 'gradient' (largest |grad| among them).
        total_steps: optimizer steps of the whole run (the decay length).
        seed: seeds the generator behind every random draw (initial masks and random growth).
        prune: 'magnitude'.
        layers: 'all' (every 2-D and 4-D weight: convs, Linear layers, head), 'large_kernel' (4-D weights whose
            names contain 'large_kernel': LoRA1, LoRA2, small_conv, lkb_origin convs) or a regular expression
            searched in parameter names (weights with 2+ dims). The released code's --only-L flag corresponds to
            the pattern r'large_kernel\\.LoRA'.
        init_batch: (images, targets) for SNIP; under torch.distributed the per-layer counts of rank 0 are
            broadcast once, so ranks may hold different batches.
        loss_fn: loss(outputs, targets) for SNIP; default cross-entropy.
        min_prune_rate: the rate's floor at the end of the decay (0.005 in the released code).
        regrow_pruned: False excludes positions pruned in the same update from growth whenever enough other
            inactive positions exist (each update then really moves weights); True draws among all inactive
            positions as the released code does, where a pruned weight drawn again just stays active.
        dense_cutoff: layers whose initial density reaches this value stay dense and get no mask (1.0: only
            fully dense layers; the released code used 0.99).
        erk_power_scale: exponent of the ERK raw density (1.0 is standard ERK).
        reset_moments: True zeroes the optimizer moments of pruned and regrown weights at each update, so a
            regrown weight starts from a fresh optimizer state (with AdamW its first steps are then several
            times the normal size: bias correction uses the global step count); False keeps them, as the
            released code does with AdamW (its SGD path zeroes momentum of masked weights at every step).
    """

    def __init__(self, model: nn.Module, optimizer: Optional[torch.optim.Optimizer], *, sparsity: float,
                 init: str = "snip", update_frequency: Optional[int], prune_rate: float, growth: str = "random",
                 total_steps: int, seed: int, prune: str = "magnitude", layers: str = "all",
                 init_batch: Optional[Tuple[torch.Tensor, torch.Tensor]] = None, loss_fn: Optional[Callable] = None,
                 min_prune_rate: float = 0.005, regrow_pruned: bool = False, dense_cutoff: float = 1.0,
                 erk_power_scale: float = 1.0, reset_moments: bool = True):
        if not isinstance(model, nn.Module):
            raise ReproError(f"model must be a torch.nn.Module; found {type(model).__name__}.")
        _check_number("sparsity", sparsity, 0.0, 1.0, high_open=True)
        self.init = _check_choice("init", init, INIT_MODES)
        self.growth = _check_choice("growth", growth, GROWTH_MODES)
        self.prune = _check_choice("prune", prune, PRUNE_MODES)
        if update_frequency is not None and (not isinstance(update_frequency, int) or isinstance(
                update_frequency, bool) or update_frequency < 1):
            raise ReproError(f"update_frequency must be a positive integer (optimizer steps between updates) or "
                             f"None for fixed masks; found {update_frequency!r}.")
        _check_number("prune_rate", prune_rate, 0.0, 1.0, low_open=True)
        _check_number("min_prune_rate", min_prune_rate, 0.0, prune_rate)
        if not isinstance(total_steps, int) or isinstance(total_steps, bool) or total_steps < 1:
            raise ReproError(f"total_steps must be a positive integer (optimizer steps of the run); "
                             f"found {total_steps!r}.")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ReproError(f"seed must be an integer; found {seed!r}.")
        _check_number("dense_cutoff", dense_cutoff, 0.0, 1.0, low_open=True)
        _check_number("erk_power_scale", erk_power_scale, 0.0, math.inf, high_open=True)
        if not isinstance(reset_moments, bool):
            raise ReproError(f"reset_moments must be True or False; found {reset_moments!r}.")
        if optimizer is not None and not hasattr(optimizer, "state"):
            raise ReproError(f"optimizer must be a torch.optim.Optimizer (or None); found {type(optimizer).__name__}.")

        self.model = _unwrap(model)
        self.optimizer = optimizer
        self.sparsity = float(sparsity)
        self.update_frequency = update_frequency
        self.prune_rate = float(prune_rate)
        self.min_prune_rate = float(min_prune_rate)
        self.total_steps = total_steps
        self.seed = seed
        self.layers = layers
        self.regrow_pruned = bool(regrow_pruned)
        self.dense_cutoff = float(dense_cutoff)
        self.erk_power_scale = float(erk_power_scale)
        self.reset_moments = reset_moments
        self.last_update: Optional[dict] = None
        self._step = 0
        self._updates = 0
        self._generator = torch.Generator().manual_seed(seed)
        self._params: Dict[str, nn.Parameter] = {}
        self._masks: Dict[str, torch.Tensor] = {}
        self._ever: Dict[str, torch.Tensor] = {}
        self._nnz: Dict[str, int] = {}
        self._ever_count: Dict[str, int] = {}
        # Active positions whose EMA entry is zero and must take the model's value (see apply_to_ema); regrowth
        # is recorded only once an EMA is kept, so runs without one carry nothing.
        self._ema_pending: Dict[str, torch.Tensor] = {}
        self._ema_kept = False
        self._multipliers: Dict[Tuple[str, torch.device, torch.dtype], torch.Tensor] = {}
        self._groups: Optional[list] = None
        if self.sparsity == 0.0:
            return
        if self.init == "snip" and init_batch is None:
            raise ReproError("init='snip' needs init_batch=(images, targets), one training batch to score the "
                             "weights with; pass it, or use init='erk' / 'uniform'.")
        self._initialise(select_parameters(self.model, layers), init_batch, loss_fn)

    # ----------------------------------------------------------------------------------------------- setup
    def _initialise(self, chosen: List[Tuple[str, nn.Parameter]], init_batch, loss_fn) -> None:
        density = 1.0 - self.sparsity
        numels = [p.numel() for _, p in chosen]
        if self.init == "uniform":
            counts = uniform_counts(numels, density)
        elif self.init == "erk":
            counts = erk_counts([tuple(p.shape) for _, p in chosen], density, self.erk_power_scale)
        else:
            scores = snip_scores(self.model, [p for _, p in chosen], init_batch, loss_fn)
            counts = snip_counts(scores, math.floor(density * sum(numels) + 0.5))
            del scores
            counts = self._agree_across_ranks(counts, chosen[0][1].device)
        left_dense = []
        for (name, param), count in zip(chosen, counts):
            if count >= self.dense_cutoff * param.numel():
                left_dense.append(name)
                continue
            if count == 0:
                logger.warning("Layer %s starts with no active weight (density 0).", name)
            self._params[name] = param
            self._masks[name] = random_mask(param.shape, count, self._generator, param.device)
            self._ever[name] = self._masks[name].clone()
            self._nnz[name] = count
            self._ever_count[name] = count
            # An EMA copied from the model holds zeros where an active weight starts at exactly zero.
            zero_active = self._masks[name] & (param.detach() == 0)
            if bool(zero_active.any()):
                self._ema_pending[name] = zero_active
        if left_dense:
            logger.info("Left dense (initial density >= %g): %s", self.dense_cutoff, ", ".join(left_dense))
        if not self._masks:
            logger.warning("Every selected layer came out dense at sparsity %g; nothing is masked.", self.sparsity)
        self._apply_masks()
        selected = sum(numels)
        active = sum(self._nnz.values()) + sum(p.numel() for name, p in chosen if name not in self._masks)
        logger.info("Sparse init '%s': density %.4f over the %d selected tensors (target %.4f); %d of them masked, "
                    "at density %.4f, the other %d left dense.", self.init, active / selected, len(chosen),
                    density, len(self._masks), self.density(), len(chosen) - len(self._masks))

    @staticmethod
    def _agree_across_ranks(counts: List[int], device: torch.device) -> List[int]:
        """Take rank 0's SNIP counts on every rank (ranks score different batches); one broadcast at init."""
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return counts
        where = device if dist.get_backend() == "nccl" else torch.device("cpu")
        shared = torch.tensor(counts, dtype=torch.int64, device=where)
        dist.broadcast(shared, src=0)
        return [int(c) for c in shared.cpu().tolist()]

    # ------------------------------------------------------------------------------------------- masking
    def _multiplier(self, name: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The mask as a tensor of the weight's dtype: multiplying by it is several times faster than by bools."""
        key = (name, device, dtype)
        mult = self._multipliers.get(key)
        if mult is None:
            mult = self._masks[name].to(device=device, dtype=dtype)
            self._multipliers[key] = mult
        return mult

    def _masks_changed(self) -> None:
        self._multipliers.clear()
        self._groups = None

    def _mask_groups(self) -> list:
        """[(weights, multipliers)] grouped by device and dtype for torch._foreach_mul_; rebuilt if a weight moved."""
        groups = self._groups
        if groups is not None:
            for params, mults in groups:
                for p, m in zip(params, mults):
                    if p.device != m.device or p.dtype != m.dtype:
                        groups = None
                        break
                if groups is None:
                    break
        if groups is None:
            self._multipliers.clear()
            by_kind: Dict[tuple, Tuple[list, list]] = {}
            for name, p in self._params.items():
                if self._masks[name].device != p.device:  # the model was moved after construction
                    self._masks[name] = self._masks[name].to(p.device)
                    self._ever[name] = self._ever[name].to(p.device)
                params, mults = by_kind.setdefault((p.device, p.dtype), ([], []))
                params.append(p)
                mults.append(self._multiplier(name, p.device, p.dtype))
            groups = list(by_kind.values())
            self._groups = groups
        return groups

    def _apply_masks(self) -> None:
        with torch.no_grad():
            for params, mults in self._mask_groups():
                torch._foreach_mul_(params, mults)

    def _copy_targets(self, module: nn.Module, caller: str) -> List[Tuple[str, torch.Tensor]]:
        """(mask name, tensor) for every masked parameter of `module`, a copy of the masked model."""
        inner = _unwrap(module)
        named = dict(inner.named_parameters())
        targets, missing = [], []
        for name, mask in self._masks.items():
            t = named.get(name, named.get("module." + name))
            if t is None:
                missing.append(name)
            elif tuple(t.shape) != tuple(mask.shape):
                raise ReproError(f"{caller}: parameter {name} has shape {tuple(t.shape)} in {type(module).__name__} "
                                 f"but its mask has shape {tuple(mask.shape)}; pass a copy of the masked model.")
            else:
                targets.append((name, t))
        if missing:
            raise ReproError(f"{caller}: {type(module).__name__} lacks {len(missing)} masked parameters "
                             f"(first: {', '.join(missing[:5])}); pass a copy of the masked model (e.g. its EMA).")
        return targets

    def apply_to(self, module: nn.Module) -> None:
        """Zero the weights of `module` (e.g. an EMA copy) outside the masks; names may carry a 'module.' prefix."""
        if not self._masks:
            return
        self._mask_copy(self._copy_targets(module, "apply_to"))

    def apply_to_ema(self, ema: nn.Module) -> None:
        """Finish an EMA update under sparsity as the released code does (call it right after `ema.update`).

        Entries outside the masks become zero (as `apply_to`), and the EMA entry of a weight that became
        active since the last call takes the model's current value, where averaging would start it from
        zero (released model_sema.py: an EMA entry that is 0 while its mask is 1 copies the model). A regrown
        weight is still zero in the model at the update step, so it copies the model at the first call where
        the model's value is non-zero. Keeps one EMA in step; names may carry a 'module.' prefix.
        """
        if not self._masks:
            return
        self._ema_kept = True
        targets = self._copy_targets(ema, "apply_to_ema")
        with torch.no_grad():
            for name, t in targets:
                pending = self._ema_pending.get(name)
                if pending is None:
                    continue
                source = self._params[name].detach()
                if pending.device != source.device:  # the model was moved after construction
                    pending = self._ema_pending[name] = pending.to(source.device)
                where = torch.nonzero(pending.view(-1)).squeeze(1)
                model_values = source.reshape(-1)[where]
                _set_flat(t, where.to(t.device), model_values.to(device=t.device, dtype=t.dtype))
                # A model value of exactly zero leaves the EMA entry at zero: it copies again next time.
                _fill_flat(pending, where[model_values != 0], False)
                if not bool(pending.any()):
                    del self._ema_pending[name]
        self._mask_copy(targets)

    def _mask_copy(self, targets: List[Tuple[str, torch.Tensor]]) -> None:
        """Multiply each (name, tensor) of a model copy by that name's mask, grouped for torch._foreach_mul_."""
        by_kind: Dict[tuple, Tuple[list, list]] = {}
        for name, t in targets:
            params, mults = by_kind.setdefault((t.device, t.dtype), ([], []))
            params.append(t)
            mults.append(self._multiplier(name, t.device, t.dtype))
        with torch.no_grad():
            for params, mults in by_kind.values():
                torch._foreach_mul_(params, mults)

    # ---------------------------------------------------------------------------------------------- steps
    def prune_rate_at(self, step: int) -> float:
        """Fraction of active weights replaced by an update after `step` optimizer steps (cosine decay)."""
        return cosine_prune_rate(step, self.prune_rate, self.min_prune_rate, self.total_steps)

    @property
    def steps(self) -> int:
        """Optimizer steps seen so far."""
        return self._step

    def step(self) -> Optional[dict]:
        """Re-apply the masks after an optimizer step; every `update_frequency` steps prune and regrow.

        Returns the update's log (also kept in `last_update`) on update steps, else None.
        """
        if not self._masks:
            self._step += 1
            return None
        self._apply_masks()
        self._step += 1
        if self.update_frequency is not None and self._step % self.update_frequency == 0:
            return self._update()
        return None

    def _grow(self, name: str, param: nn.Parameter, eligible: torch.Tensor, count: int) -> torch.Tensor:
        """Flat indices of `count` positions among `eligible` to activate."""
        if self.growth == "random":
            return random_subset(torch.nonzero(eligible).squeeze(1), count, self._generator)
        if param.grad is None:
            raise ReproError(f"growth='gradient' needs the gradient of {name}, but it is None: call "
                             f"DynamicSparsity.step() right after optimizer.step() and before optimizer.zero_grad(), "
                             f"or use growth='random'.")
        score = _as_score(param.grad.detach().reshape(-1)).abs().nan_to_num_(nan=0.0)
        return smallest_k(torch.where(eligible, score.neg_(), math.inf), count)

    def _update(self) -> dict:
        rate = self.prune_rate_at(self._step)
        layers = {}
        with torch.no_grad():
            for name, param in self._params.items():
                nnz, numel = self._nnz[name], param.numel()
                count = math.ceil(rate * nnz)
                moved = reactivated = 0
                if count > 0:
                    mask = self._masks[name].view(-1)
                    score = torch.where(mask, _as_score(param.detach().reshape(-1)).abs(), math.inf)
                    pruned = smallest_k(score, count)
                    del score
                    new = mask.clone()
                    new[pruned] = False
                    # Positions pruned just now are candidates only if asked for or if too few others remain.
                    eligible = ~new if self.regrow_pruned or numel - nnz < count else ~mask
                    grown = self._grow(name, param, eligible, count)
                    del eligible
                    new[grown] = True
                    # A position both pruned and regrown simply stays active (as in the released code).
                    really_grown = grown[~mask[grown]]
                    really_pruned = pruned[~new[pruned]]
                    reactivated = count - really_grown.numel()
                    moved = count
                    self._move(name, param, new, really_pruned, really_grown)
                layers[name] = {
                    "density": nnz / numel,
                    "pruned": moved,
                    "regrown": moved,
                    "reactivated": reactivated,
                    "ever_active": self._ever_count[name] / numel,
                }
        self._updates += 1
        total = sum(p.numel() for p in self._params.values())
        log = {
            "step": self._step,
            "update": self._updates,
            "prune_rate": rate,
            "density": self.density(),
            "pruned": sum(v["pruned"] for v in layers.values()),
            "regrown": sum(v["regrown"] for v in layers.values()),
            "ever_active": sum(self._ever_count.values()) / total,
            "layers": layers,
        }
        self.last_update = log
        logger.info("Sparse update %d at step %d: rate %.4f, moved %d weights, density %.4f, ever active %.4f.",
                    self._updates, self._step, rate, log["pruned"], log["density"], log["ever_active"])
        for name, info in layers.items():
            logger.debug("  %s: density %.4f, pruned %d, regrown %d (%d re-drawn), ever active %.4f", name,
                         info["density"], info["pruned"], info["regrown"], info["reactivated"], info["ever_active"])
        return log

    def _move(self, name: str, param: nn.Parameter, new: torch.Tensor, pruned: torch.Tensor,
              grown: torch.Tensor) -> None:
        """Install the new mask, touching only the moved positions: weights, moments, ever-active, multipliers."""
        self._masks[name] = new.view(param.shape)
        _fill_flat(param.detach(), pruned, 0)  # regrown weights are already zero: masks are applied every step
        if self.optimizer is not None and self.reset_moments:
            moved = torch.cat([pruned, grown])
            for value in self.optimizer.state.get(param, {}).values():
                if torch.is_tensor(value) and value.shape == param.shape:
                    _fill_flat(value, moved.to(value.device), 0)
        ever = self._ever[name].view(-1)
        self._ever_count[name] += int(torch.count_nonzero(~ever[grown]))
        ever[grown] = True
        pending = self._ema_pending.get(name)
        if (grown.numel() and self._ema_kept) or pending is not None:
            if pending is None:
                pending = self._ema_pending[name] = torch.zeros(param.shape, dtype=torch.bool, device=new.device)
            elif pending.device != new.device:
                pending = self._ema_pending[name] = pending.to(new.device)
            flat = pending.view(-1)
            flat[pruned] = False
            flat[grown] = True
        for (mult_name, _, _), mult in self._multipliers.items():
            if mult_name == name:
                _fill_flat(mult, pruned.to(mult.device), 0)
                _fill_flat(mult, grown.to(mult.device), 1)

    # ----------------------------------------------------------------------------------------- reporting
    @property
    def masks(self) -> Dict[str, torch.Tensor]:
        """Parameter name -> bool mask (True = active), on the parameter's device."""
        return dict(self._masks)

    def density(self) -> float:
        """Overall fraction of active weights in the masked tensors (1.0 when nothing is masked)."""
        total = sum(p.numel() for p in self._params.values())
        return sum(self._nnz.values()) / total if total else 1.0

    def layer_density(self) -> Dict[str, float]:
        """Parameter name -> fraction of active weights."""
        return {name: self._nnz[name] / p.numel() for name, p in self._params.items()}

    def ever_active(self) -> Dict[str, float]:
        """Parameter name -> fraction of weights that have been active at some point of the run."""
        return {name: self._ever_count[name] / e.numel() for name, e in self._ever.items()}

    # ------------------------------------------------------------------------------------ checkpointing
    def _config(self) -> dict:
        return dict(sparsity=self.sparsity, init=self.init, update_frequency=self.update_frequency,
                    prune_rate=self.prune_rate, min_prune_rate=self.min_prune_rate, growth=self.growth,
                    prune=self.prune, total_steps=self.total_steps, seed=self.seed, layers=self.layers,
                    regrow_pruned=self.regrow_pruned, dense_cutoff=self.dense_cutoff,
                    reset_moments=self.reset_moments)

    def state_dict(self) -> dict:
        """Everything needed to resume: packed masks, ever-active and EMA-pending masks, step, update count,
        generator state."""
        return {
            "format": _STATE_FORMAT,
            "names": list(self._masks),
            "shapes": {n: list(m.shape) for n, m in self._masks.items()},
            "masks": {n: _pack(m) for n, m in self._masks.items()},
            "ever_active": {n: _pack(e) for n, e in self._ever.items()},
            "ema_pending": {n: _pack(e) for n, e in self._ema_pending.items()},
            "ema_kept": self._ema_kept,
            "step": self._step,
            "updates": self._updates,
            "prune_rate": self.prune_rate_at(self._step),
            "generator": self._generator.get_state(),
            "config": self._config(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore masks, step and generator from `state_dict()` output, and re-apply the masks to the model."""
        if not isinstance(state, dict) or state.get("format") != _STATE_FORMAT:
            found = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise ReproError(f"Not a DynamicSparsity state: expected format {_STATE_FORMAT!r}, found {found!r}.")
        mine = {n: list(m.shape) for n, m in self._masks.items()}
        theirs = {n: list(s) for n, s in state["shapes"].items()}
        problems = [f"missing from the checkpoint: {n}" for n in mine if n not in theirs]
        problems += [f"not masked here: {n}" for n in theirs if n not in mine]
        problems += [f"{n}: shape {theirs[n]} in the checkpoint, {mine[n]} here" for n in mine
                     if n in theirs and theirs[n] != mine[n]]
        if problems:
            raise ReproError("The sparsity state does not fit this model's masks (same model, sparsity, init and "
                             "layers are needed):\n  " + "\n  ".join(problems[:20])
                             + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""))
        saved = dict(state.get("config", {}))
        saved.setdefault("reset_moments", True)  # states written before the option existed zeroed moments
        differences = {k: (v, saved.get(k)) for k, v in self._config().items() if saved.get(k) != v}
        if differences:
            logger.warning("Resuming sparsity with settings that differ from the checkpoint (here, saved): %s",
                           differences)
        for name, param in self._params.items():
            self._masks[name] = _unpack(state["masks"][name], theirs[name]).to(param.device)
            self._ever[name] = _unpack(state["ever_active"][name], theirs[name]).to(param.device)
            self._nnz[name] = int(torch.count_nonzero(self._masks[name]))
            self._ever_count[name] = int(torch.count_nonzero(self._ever[name]))
        # States written before EMA tracking existed carry none: nothing is pending.
        self._ema_pending = {name: _unpack(packed, theirs[name]).to(self._params[name].device)
                             for name, packed in state.get("ema_pending", {}).items()}
        self._ema_kept = bool(state.get("ema_kept", False))
        self._step = int(state["step"])
        self._updates = int(state["updates"])
        self._generator.set_state(state["generator"].cpu().to(torch.uint8))
        self._masks_changed()
        self._apply_masks()
