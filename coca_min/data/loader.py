"""Training batches without end, epoch after epoch, that a resumed run continues exactly.

Not a part of the paper. train.py draws micro-batches from one of two streams, both with
`next(stream)` -> (images (b, 3, S, S), tokens (b, T)) and `position()` (what a checkpoint keeps):

- `EpochBatches`, over a data set held as files or in memory (`TinyShapes`, `CaptionManifest`,
  `CocoCaptions`): each epoch a new order (the same on every rank, each rank its own slice, as
  `DistributedSampler` deals it), new caption draws and new random crops, all from the seed, the
  epoch number and the item's index. The sampler hands the epoch to the data set with every
  index (`AtEpoch`), so the data-loader workers live across epochs (`persistent_workers`) and
  still draw the new epoch's captions and crops. The position is the number of micro-batches
  drawn since the start, so a resumed run starts partway into its epoch and sees exactly the
  batches it would have, with any number of workers.
- `ShardBatches`, over tar shards (`shards.ShardReader`): the position is, per rank, its epoch
  and `{shard: samples consumed}`. A rank whose shards run out starts its next epoch at once, so
  ranks never wait for each other's data; with shards of unequal sizes they drift apart by part
  of an epoch (its samples are then seen a little more often than others').

`ToDevice` moves either stream's micro-batches to the device and normalises the images there
(they travel as uint8: a quarter of the bytes); on a GPU it copies the next micro-batch from
pinned memory on a side stream while the current one trains.

Left out: mixing several data sets, and samplers weighted by source.
"""

import warnings
from contextlib import nullcontext
from functools import partial

import torch
from torch.utils.data import DataLoader, DistributedSampler

from .datasets import collate, normalize
from .shards import ShardReader, advance, shard_collate


class ResumableSampler(DistributedSampler):
    """DistributedSampler (per-epoch shuffle, one slice per rank, drop_last) that can start
    partway into an epoch, and yields (epoch, index): what `AtEpoch` asks its data set for."""

    skip = 0  # samples of this rank's slice to leave out, once

    def __iter__(self):
        indices = list(super().__iter__())[self.skip :]
        self.skip = 0
        return iter([(self.epoch, i) for i in indices])


class AtEpoch(torch.utils.data.Dataset):
    """A data set whose items are asked for as (epoch, index). A data-loader worker holds its own
    copy of the data set, made when it starts: the epoch comes with each request, so a worker
    that lives across epochs draws the right epoch's caption and crop."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, request):
        epoch, index = request
        self.dataset.set_epoch(epoch)
        return self.dataset[index]

    def __getitems__(self, requests):  # one batch; the tiny set fetches it in one lookup
        self.dataset.set_epoch(requests[0][0])  # a batch never spans two epochs (drop_last)
        indices = [index for _, index in requests]
        if hasattr(self.dataset, "__getitems__"):
            return self.dataset.__getitems__(indices)
        return [self.dataset[i] for i in indices]


def ignore_ctrl_c(worker_id):
    """Data-loader workers leave Ctrl-C to the main process, which saves and exits cleanly."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


class EpochBatches:
    """Micro-batches of `micro_batch` pairs from a map-style data set, starting after `drawn`
    micro-batches (a resumed run's step × accum)."""

    def __init__(self, dataset, micro_batch, rank, world, seed, workers=0, pin_memory=False, drawn=0, pad_multiple=1):
        self.dataset, self.seed, self.micro_batch = dataset, seed, micro_batch
        self.sampler = ResumableSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
        batch = partial(collate, multiple=pad_multiple, context_length=dataset.context_length)
        self.loader = DataLoader(AtEpoch(dataset), batch_size=micro_batch, sampler=self.sampler, collate_fn=batch,
                                 num_workers=workers, drop_last=True, pin_memory=pin_memory, worker_init_fn=ignore_ctrl_c,
                                 persistent_workers=workers > 0, generator=torch.Generator().manual_seed(seed))  # fmt: skip
        if len(self.loader) == 0:
            raise ValueError(f"{len(dataset)} training pairs are fewer than one micro-batch of {micro_batch} per process")
        self.drawn = drawn
        self.epoch, done_in_epoch = divmod(drawn, len(self.loader))
        self._start_epoch(done_in_epoch)

    def _start_epoch(self, skip_batches=0):  # new order; the sampler brings the epoch to the captions and crops
        self.sampler.set_epoch(self.epoch)
        self.sampler.skip = skip_batches * self.micro_batch
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

    def __init__(self, reader: ShardReader, micro_batch, workers=0, pin_memory=False, position=None, pad_multiple=1):
        self.reader = reader
        batch = partial(shard_collate, multiple=pad_multiple, context_length=reader.context_length)
        self.loader = DataLoader(reader, batch_size=micro_batch, collate_fn=batch, num_workers=workers,
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


class ToDevice:
    """The micro-batches of `batches` (EpochBatches or ShardBatches) on `device`, images
    normalised there (`datasets.normalize`: they travel as uint8). On a GPU the copy of micro-batch
    k + 1 is started on a side stream when micro-batch k is handed out, so it overlaps k's
    training (from pinned memory the copy does not wait for the CPU); `position()` is that of
    the micro-batches handed out, not of the one in flight."""

    def __init__(self, batches, device):
        self.batches, self.device = batches, torch.device(device)
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self.ahead = None  # (micro-batch, stream position after it) or the error its loading raised
        self.handed_out = batches.position()

    def _load(self):
        try:
            images, tokens = next(self.batches)
        except (OSError, ValueError) as error:  # raised when this micro-batch is asked for, not before
            return error
        with torch.cuda.stream(self.stream) if self.stream is not None else nullcontext():
            images = normalize(images.to(self.device, non_blocking=True))  # (b, 3, S, S) float32
            tokens = tokens.to(self.device, non_blocking=True)  # (b, T)
        return (images, tokens), self.batches.position()

    def __next__(self):
        loaded = self.ahead if self.ahead is not None else self._load()
        self.ahead = None
        if isinstance(loaded, Exception):
            raise loaded
        (images, tokens), self.handed_out = loaded
        if self.stream is not None:  # this step's work waits for the copy; the next copy starts now
            current = torch.cuda.current_stream(self.device)
            current.wait_stream(self.stream)
            for tensor in (images, tokens):
                tensor.record_stream(current)  # made on the side stream, used on this one
            self.ahead = self._load()
        return images, tokens

    def position(self):
        return self.handed_out


def shard_position(saved_positions, rank, world):
    """This rank's position from a checkpoint's positions (one per rank of the saved run).

    On the same number of ranks: the rank's own, exact. On another number: every rank resumes the
    earliest epoch e of the saved ranks, skipping what the ranks still in e had consumed of each
    shard, and the shards not yet finished are dealt anew to the new ranks. Exact when every
    saved rank was in epoch e. A rank already in e + 1 had finished all of its shards of e, but
    its position holds only what it read of e + 1: so its shards of e are read again, whole, in
    the resumed e, and what it had read of e + 1 is read again in e + 1 (each sample at most
    once more, and only in the shards of ranks that were ahead)."""
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
