"""The DataLoaders of training and evaluation, set up to keep a GPU fed.

Training has one DataLoader for the whole run: its workers persist across epochs (an ImageNet epoch would
otherwise start by forking and warming N processes), each keeps ``prefetch_factor`` batches ready, batches
are pinned on GPU hosts so the copies to the device are non-blocking. Worker count and prefetch are runtime
settings (``bench.runtime``); the data order and the augmentations do not depend on them.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from bench.runtime import Runtime

#: the seed of sample slot p of epoch e of a run seeded s: spread by a 64-bit odd constant (splitmix's)
_GOLDEN = 0x9E3779B97F4A7C15


class EpochBatches(Sampler[list[Any]]):
    """The batches of the current epoch (``set_epoch``): a permutation seeded by (seed, epoch) cut into global
    batches, of which this rank takes the contiguous slice ``[rank * b, (rank + 1) * b)``; the ranks' slices of
    a step make up the single-process batch of that step.

    The permutation is the one ``DataLoader(shuffle=True, generator=torch.Generator().manual_seed(seed *
    100_003 + epoch))`` draws (one int64 for its worker seed first, then ``randperm``), as the harness drew it
    before the loader persisted across epochs, so earlier runs keep their data order.

    ``repeats`` > 1 is DeiT's repeated augmentation (``RASampler``): the epoch keeps its length but holds the
    first ceil(n / repeats) images of the permutation, each ``repeats`` times, and the copies of an image are
    dealt to different ranks within one global batch (strided, as RASampler's ``indices[rank::world]``), so each
    device sees its own augmentation of the image.

    ``sample_seeds``: items are ``(index, seed)`` with a seed per slot of the epoch (its global position), which
    a dataset with a random transform draws its augmentation from: the same for any worker count or world size.
    """

    def __init__(
        self,
        n: int,
        global_batch: int,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        repeats: int = 1,
        sample_seeds: bool = False,
    ):
        self.n, self.global_batch, self.seed, self.rank, self.world = n, global_batch, seed, rank, world
        self.local_batch = global_batch // world
        self.repeats, self.sample_seeds = repeats, sample_seeds
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        # drop_last when there is at least one full batch, else one short batch (world of one only)
        return self.n // self.global_batch if self.n >= self.global_batch else 1

    def __iter__(self) -> Iterator[list[Any]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        torch.empty((), dtype=torch.int64).random_(generator=g)  # the draw DataLoader made for its workers
        perm = torch.randperm(self.n, generator=g)
        if self.repeats > 1:
            perm = perm[: math.ceil(self.n / self.repeats)].repeat_interleave(self.repeats)[: self.n]
        perm = perm.tolist()
        base = (self.seed * 1_000_003 + self.epoch) * _GOLDEN
        lo = self.rank * self.local_batch
        for i in range(len(self)):
            start = i * self.global_batch
            slots = list(range(start, min(start + self.global_batch, self.n)))
            if self.world > 1:  # repeated copies are strided across ranks, as RASampler; otherwise contiguous
                slots = slots[self.rank :: self.world] if self.repeats > 1 else slots[lo : lo + self.local_batch]
            if self.sample_seeds:
                yield [(perm[p], (base + p * _GOLDEN) % 2**63) for p in slots]
            else:
                yield [perm[p] for p in slots]


def seed_sample(seed: int) -> None:
    """Seed the streams timm's transforms draw from (torch's CPU generator, numpy, Python) for one sample. Not
    ``torch.manual_seed``: that would also reset the CUDA generators drop path draws from."""
    torch.random.default_generator.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


class SeededItems(Dataset):
    """A training dataset whose items are ``(index, seed)``: the transform of each sample draws its random numbers
    from streams seeded for it, so an image's augmentation depends on the run's seed, the epoch and its slot in
    the epoch, never on how many loader workers there are, which one decodes it, or whether the run resumed."""

    def __init__(self, ds: Dataset):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)  # type: ignore[arg-type]

    def __getitem__(self, item: tuple[int, int]) -> Any:
        index, seed = item
        if torch.utils.data.get_worker_info() is not None:  # a worker's streams serve nothing else
            seed_sample(seed)
            return self.ds[index]
        # in the training process the streams also drive Mixup, drop path and the methods: put them back
        saved = torch.random.get_rng_state(), np.random.get_state(), random.getstate()
        try:
            seed_sample(seed)
            return self.ds[index]
        finally:
            torch.random.set_rng_state(saved[0])
            np.random.set_state(saved[1])
            random.setstate(saved[2])


def _unwrapped(ds: Dataset) -> Dataset:
    while isinstance(ds, torch.utils.data.Subset):
        ds = ds.dataset
    return ds


def random_transform(ds: Dataset) -> bool:
    """Whether a dataset's items are random (a training augmentation); unknown datasets are taken to be."""
    ds = _unwrapped(ds)
    return not isinstance(ds, torch.utils.data.TensorDataset) and bool(getattr(ds, "random_transform", True))


def in_memory(ds: Dataset) -> bool:
    """Whether the images are already decoded in memory (nothing for a worker to do)."""
    ds = _unwrapped(ds)
    return getattr(ds, "images", None) is not None or isinstance(ds, torch.utils.data.TensorDataset)


def _worker_options(ds: Dataset, runtime: Runtime, persistent: bool) -> dict[str, Any]:
    workers = runtime.loader_workers(in_memory(ds))
    options: dict[str, Any] = {"num_workers": workers, "pin_memory": torch.cuda.is_available()}
    if workers:
        options.update(prefetch_factor=runtime.prefetch_factor, persistent_workers=persistent)
    return options


def train_loader(ds: Dataset, sampler: EpochBatches, runtime: Runtime) -> DataLoader:
    """One loader for every epoch of a run (call ``sampler.set_epoch`` before each)."""
    # a private generator: the loader's worker-seed draw must not consume the training process's torch RNG
    return DataLoader(
        SeededItems(ds) if sampler.sample_seeds else ds,
        batch_sampler=sampler,
        generator=torch.Generator().manual_seed(sampler.seed),
        **_worker_options(ds, runtime, persistent=True),
    )


def eval_loader(ds: Dataset, batch_size: int, runtime: Runtime) -> DataLoader:
    return DataLoader(ds, batch_size=batch_size, shuffle=False, **_worker_options(ds, runtime, persistent=False))
