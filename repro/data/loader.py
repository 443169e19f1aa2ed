"""Resumable, reproducible loading: a sampler that can restart mid-epoch and per-sample augmentation seeds.

Exact resume needs two things. The order: `ResumableSampler` draws each epoch's permutation from
(seed, epoch) alone, so a restarted process rebuilds it, and `set_start` skips what was already consumed.
The augmentation: random crops, flips, RandAugment and random erasing draw from the global torch, `random`
and numpy generators, whose state inside a worker depends on which samples that worker happened to process
before. So the sampler yields `(index, sample_seed)` pairs, where `sample_seed` is a hash of
(seed, epoch, position in the epoch's order), and `build_loader` wraps the dataset so each `__getitem__`
re-seeds those three generators from it (restoring them afterwards). A sample's augmentation then depends
only on where it sits in the epoch, never on the worker count, the batch it lands in, or a restart.
"""
from __future__ import annotations

import contextlib
import functools
import math
import random
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from ..errors import ReproError

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    # A well-mixed 64-bit integer hash (Steele et al.'s SplitMix64 finaliser): nearby inputs give unrelated seeds.
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (e.g. seed, epoch, position); equal inputs give equal seeds."""
    h = 0
    for p in parts:
        h = _splitmix64(h ^ (int(p) & _MASK64))
    return h >> 1


class ResumableSampler(Sampler):
    """Seeded epoch permutations, split across ranks like DistributedSampler, restartable mid-epoch.

    Yields `(dataset_index, sample_seed)` pairs; wrap the dataset with `build_loader` (or `PerSampleSeeded`)
    to consume them.

    Args:
        dataset_len: number of samples in the dataset.
        seed: run seed; with the epoch it fixes the order and every sample's augmentation seed.
        shuffle: permute each epoch (False: 0, 1, 2, ... for evaluation).
        rank, world_size: this process's share: positions rank, rank + world_size, ... of the epoch's order.
        drop_last: drop the tail so every rank gets the same count (else pad by repeating from the start,
            as DistributedSampler does).
    """

    def __init__(self, dataset_len: int, *, seed: int, shuffle: bool = True, rank: int = 0,
                 world_size: int = 1, drop_last: bool = False):
        if dataset_len <= 0:
            raise ReproError(f"cannot sample from an empty dataset (length {dataset_len}); check the data folder")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ReproError(f"sampler rank {rank} is outside world size {world_size}")
        self.dataset_len = int(dataset_len)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        if drop_last and dataset_len >= world_size:
            self.num_samples = dataset_len // world_size
        else:
            self.num_samples = math.ceil(dataset_len / world_size)
        self.total_size = self.num_samples * world_size
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch to iterate; moving to a different epoch clears the start offset."""
        if int(epoch) != self.epoch:
            self.start = 0
        self.epoch = int(epoch)

    def set_start(self, index: int) -> None:
        """Skip the first `index` samples of this rank's share of the current epoch (mid-epoch resume)."""
        if not 0 <= index <= self.num_samples:
            raise ReproError(f"cannot start at sample {index} of an epoch with {self.num_samples} samples per "
                             "rank; the checkpoint was written for a different dataset or batch size")
        self.start = int(index)

    def epoch_order(self) -> list[int]:
        """The full padded (or truncated) order of this epoch, shared by all ranks."""
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(derive_seed(self.seed, self.epoch))
            order = torch.randperm(self.dataset_len, generator=g).tolist()
        else:
            order = list(range(self.dataset_len))
        if self.total_size > len(order):
            reps = math.ceil((self.total_size - len(order)) / len(order))
            order += (order * reps)[: self.total_size - len(order)]
        return order[: self.total_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self.epoch_order()
        for k in range(self.start, self.num_samples):
            position = self.rank + k * self.world_size
            yield order[position], derive_seed(self.seed, self.epoch, position)

    def __len__(self) -> int:
        return self.num_samples - self.start

    def state_dict(self, samples_done: int | None = None) -> dict[str, Any]:
        """Where this sampler stands: the epoch and the samples consumed in it, counted over all ranks.

        The sampler cannot see how far a DataLoader got (workers prefetch ahead), so pass `samples_done`, the
        samples of this rank's share already trained on this epoch; by default the start offset.
        """
        done = self.start if samples_done is None else int(samples_done)
        return {"seed": self.seed, "epoch": self.epoch, "consumed": done * self.world_size,
                "dataset_len": self.dataset_len, "world_size": self.world_size, "shuffle": self.shuffle}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state_dict()`; a different world size resumes at the same global position."""
        if state["dataset_len"] != self.dataset_len:
            raise ReproError(f"the checkpoint's sampler saw a training set of {state['dataset_len']} samples, "
                             f"this one has {self.dataset_len}; resume with the same data "
                             "(data.name, data.val_fraction and the dataset files)")
        if state["seed"] != self.seed:
            raise ReproError(f"the checkpoint's sampler used seed {state['seed']}, this run uses {self.seed}; "
                             "resume with the same seed")
        self.epoch = int(state["epoch"])
        # Ranks consume positions in lockstep, so the first `consumed` positions of the order are done; with
        # another world size this is exact whenever `consumed` divides evenly, else a few samples repeat.
        self.start = min(int(state["consumed"]) // self.world_size, self.num_samples)


def seed_all(seed: int) -> None:
    """Seed the generators augmentations draw from: torch (CPU), `random` and numpy."""
    # The CPU generator only: torch.manual_seed would also reseed every CUDA device.
    torch.default_generator.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)


@contextlib.contextmanager
def seeded_rngs(seed: int):
    """Seed torch (CPU), `random` and numpy for the block, then restore their previous states."""
    torch_state = torch.default_generator.get_state()
    py_state = random.getstate()
    np_state = np.random.get_state()
    seed_all(seed)
    try:
        yield
    finally:
        torch.default_generator.set_state(torch_state)
        random.setstate(py_state)
        np.random.set_state(np_state)


class PerSampleSeeded(Dataset):
    """Dataset view that takes `(index, sample_seed)` keys and runs each `__getitem__` under that seed.

    Plain integer keys (from ordinary samplers) pass through unseeded, for evaluation. In the main process
    (num_workers=0) the global generators are restored after each sample, so loading never shifts the
    training randomness (dropout, mixup); worker processes only load data and skip the costly restore.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        if isinstance(key, tuple):
            index, seed = key
            if get_worker_info() is not None:
                seed_all(seed)
                return self.dataset[index]
            with seeded_rngs(seed):
                return self.dataset[index]
        return self.dataset[key]


def _seed_worker(seed: int, worker_id: int) -> None:
    # Augmentation is seeded per sample; this only keeps any other randomness in a worker reproducible.
    seed_all(derive_seed(seed, worker_id))


def build_loader(dataset: Dataset, *, batch_size: int, sampler: Sampler, num_workers: int, seed: int,
                 device_type: str = "cpu", drop_last: bool = True,
                 collate_fn: Callable | None = None) -> DataLoader:
    """DataLoader over `dataset` whose augmentation is reproducible from (seed, epoch, position)."""
    if batch_size < 1:
        raise ReproError(f"batch size must be at least 1, found {batch_size}")
    on_gpu = device_type == "cuda"
    # A private generator: otherwise every new iterator draws its base seed from the global torch RNG,
    # shifting the training randomness by however many loaders a (resumed) run happened to create.
    generator = torch.Generator()
    generator.manual_seed(derive_seed(seed, 0x5EED))
    return DataLoader(
        PerSampleSeeded(dataset), batch_size=batch_size, sampler=sampler, num_workers=num_workers,
        collate_fn=collate_fn, pin_memory=on_gpu, drop_last=drop_last, generator=generator,
        worker_init_fn=functools.partial(_seed_worker, seed) if num_workers > 0 else None,
        persistent_workers=on_gpu and num_workers > 0)
