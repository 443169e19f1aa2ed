"""Top-1/top-5/loss evaluation, sharded over ranks without padding so every image counts exactly once."""
from __future__ import annotations

import contextlib
from typing import Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from .distributed import DistInfo, sum_across


def eval_loader(dataset, batch_size: int, num_workers: int, dist_info: DistInfo, device_type: str) -> DataLoader:
    """A deterministic loader over this rank's share (rank, rank + world, ...) of `dataset`."""
    indices = range(dist_info.rank, len(dataset), dist_info.world_size)
    return DataLoader(Subset(dataset, list(indices)), batch_size=batch_size, shuffle=False,
                      num_workers=num_workers, pin_memory=device_type == "cuda", drop_last=False)


def autocast_context(device: torch.device, precision: str):
    """torch.autocast for fp16/bf16, a no-op for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def evaluate_model(model: torch.nn.Module, loader: DataLoader, device: torch.device, *, precision: str = "fp32",
                   dist_info: DistInfo = DistInfo(), channels_last: bool = False,
                   class_index_map: Sequence[int] | None = None, progress=None) -> dict:
    """Accuracy (percent) and mean cross-entropy over the loader, summed over ranks.

    `class_index_map` restricts the logits to a class subset (ImageNet-A/-R use 200 of the 1000 classes).
    """
    was_training = model.training
    model.eval()
    # Sums stay on the device (float64: the same arithmetic as adding .item()s on the host), read once at the end.
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # correct1, correct5, loss, n
    index = torch.as_tensor(list(class_index_map), device=device) if class_index_map is not None else None
    for images, targets in loader:
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast_context(device, precision):
            logits = model(images)
        logits = logits.float()
        if index is not None:
            logits = logits[:, index]
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hit = top.eq(targets[:, None])
        sums += torch.stack([hit[:, 0].sum().double(), hit.any(dim=1).sum().double(),
                             F.cross_entropy(logits, targets, reduction="sum").double(),
                             sums.new_full((), float(targets.numel()))])
        if progress is not None:
            progress.update(1)
    correct1, correct5, loss_sum, n = sum_across(sums.tolist(), dist_info, device)
    model.train(was_training)
    if n == 0:
        return {"top1": None, "top5": None, "loss": None, "n": 0}
    return {"top1": 100.0 * correct1 / n, "top5": 100.0 * correct5 / n, "loss": loss_sum / n, "n": int(n)}
