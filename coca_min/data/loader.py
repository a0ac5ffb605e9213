"""Training batches without end, epoch after epoch, that a resumed run continues exactly.

Not a part of the paper. train.py draws micro-batches from one of two streams, both with
`next(stream)` -> (images (b, 3, S, S), tokens (b, T)) and `position()` (what a checkpoint keeps):

- `EpochBatches`, over a data set held as files or in memory (`TinyShapes`, `CaptionManifest`,
  `CocoCaptions`): each epoch a new order (the same on every rank, each rank its own slice, as
  `DistributedSampler` deals it), new caption draws and new random crops, all from the seed and
  the epoch number. The position is the number of micro-batches drawn since the start, so a
  resumed run starts partway into its epoch and sees exactly the batches it would have.
- `ShardBatches`, over tar shards (`shards.ShardReader`): the position is, per rank, its epoch
  and `{shard: samples consumed}`. A rank whose shards run out starts its next epoch at once, so
  ranks never wait for each other's data; with shards of unequal sizes they drift apart by part
  of an epoch (its samples are then seen a little more often than others').

Left out: mixing several data sets, and samplers weighted by source.
"""

import warnings

import torch
from torch.utils.data import DataLoader, DistributedSampler

from .datasets import collate
from .shards import ShardReader, advance, shard_collate


class ResumableSampler(DistributedSampler):
    """DistributedSampler (per-epoch shuffle, one slice per rank, drop_last) that can start
    partway into an epoch."""

    skip = 0  # samples of this rank's slice to leave out, once

    def __iter__(self):
        indices = list(super().__iter__())[self.skip :]
        self.skip = 0
        return iter(indices)


def ignore_ctrl_c(worker_id):
    """Data-loader workers leave Ctrl-C to the main process, which saves and exits cleanly."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


class EpochBatches:
    """Micro-batches of `micro_batch` pairs from a map-style data set, starting after `drawn`
    micro-batches (a resumed run's step × accum)."""

    def __init__(self, dataset, micro_batch, rank, world, seed, workers=0, pin_memory=False, drawn=0):
        self.dataset, self.seed, self.micro_batch = dataset, seed, micro_batch
        self.sampler = ResumableSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.generator = torch.Generator()  # seeds the workers' random crops, per epoch
        self.loader = DataLoader(dataset, batch_size=micro_batch, sampler=self.sampler, collate_fn=collate,
                                 num_workers=workers, drop_last=True, pin_memory=pin_memory, generator=self.generator,
                                 worker_init_fn=ignore_ctrl_c)  # fmt: skip
        if len(self.loader) == 0:
            raise ValueError(f"{len(dataset)} training pairs are fewer than one micro-batch of {micro_batch} per process")
        self.drawn = drawn
        self.epoch, done_in_epoch = divmod(drawn, len(self.loader))
        self._start_epoch(done_in_epoch)

    def _start_epoch(self, skip_batches=0):  # new order, new caption draws, new crops
        self.sampler.set_epoch(self.epoch)
        self.sampler.skip = skip_batches * self.micro_batch
        self.dataset.set_epoch(self.epoch)
        self.generator.manual_seed(self.seed * 100_003 + self.epoch)
        self.batches = iter(self.loader)

    def __next__(self):
        try:
            batch = next(self.batches)
        except StopIteration:
            self.epoch += 1
            self._start_epoch()
            batch = next(self.batches)
        self.drawn += 1
        return batch

    def position(self):
        return None  # the step says it: micro-batches drawn = step × accum


class ShardBatches:
    """Micro-batches from tar shards, from `position` (this rank's `{"epoch", "done"}`, or None)."""

    def __init__(self, reader: ShardReader, micro_batch, workers=0, pin_memory=False, position=None):
        self.reader = reader
        self.loader = DataLoader(reader, batch_size=micro_batch, collate_fn=shard_collate, num_workers=workers,
                                 drop_last=True, pin_memory=pin_memory, worker_init_fn=ignore_ctrl_c,
                                 generator=torch.Generator().manual_seed(reader.seed))  # not the global one: a resume draws the same

        self.epoch, self.done = (position["epoch"], dict(position["done"])) if position else (0, {})
        self.reader.set_epoch(self.epoch, self.done)
        self.batches = iter(self.loader)

    def __next__(self):
        for _ in range(2):
            for images, tokens, places in self.batches:
                advance(self.done, places)  # what training consumed: a prefix of each shard
                return images, tokens
            self.epoch, self.done = self.epoch + 1, {}  # this rank's shards are done: its next epoch
            self.reader.set_epoch(self.epoch, self.done)
            self.batches = iter(self.loader)
        raise ValueError(f"this rank's shards gave no micro-batch of {self.loader.batch_size} pairs in a whole epoch "
                         "(warnings above name shards or samples that could not be read): check the shards, or write "
                         "more (or smaller) ones, or use fewer processes or workers")  # fmt: skip

    def position(self):
        return {"epoch": self.epoch, "done": dict(self.done)}


def shard_position(saved_positions, rank, world):
    """This rank's position from a checkpoint's positions (one per rank of the saved run). On
    another number of ranks: the earliest epoch, with what any rank consumed of it (exact when
    every rank was in that epoch; otherwise what ranks ahead had read of the next is read again)."""
    if not saved_positions:
        return None
    if len(saved_positions) == world:
        return saved_positions[rank]
    epoch = min(p["epoch"] for p in saved_positions)
    done = {}
    for p in saved_positions:
        if p["epoch"] == epoch:
            for shard, consumed in p["done"].items():
                done[shard] = max(done.get(shard, 0), consumed)
    if rank == 0:
        warnings.warn(f"resuming on {world} processes a run saved on {len(saved_positions)}: the shards are dealt "
                      f"anew from epoch {epoch}, skipping what was consumed of it")  # fmt: skip
    return {"epoch": epoch, "done": done}
