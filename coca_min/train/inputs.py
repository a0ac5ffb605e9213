"""What a training run learns from: the data sets and the tokenizer (`build_data`), and the
stream of micro-batches on the device (`training_batches`). Not a part of the paper; the data
sets, the batching and the copy to the device are `coca_min/data/`'s, this only picks them
as train.py's arguments say. Called by trainer.py.
"""

import sys
from dataclasses import replace
from pathlib import Path

from coca_min.data.datasets import TinyShapes
from coca_min.data.image_files import CaptionManifest, CocoCaptions
from coca_min.data.loader import EpochBatches, ShardBatches, ToDevice, shard_position
from coca_min.data.shards import ShardReader, all_captions
from coca_min.data.tokenizer import Tokenizer

from . import distributed as D


def build_data(args, config, saved_tokenizer=None):
    """(train set, tokenizer, validation set or None, config with the tokenizer's vocab size).
    The tokenizer: --tokenizer, else a resumed run's own, else one trained on the captions. A
    file or row that cannot be used ends the run with one line (train.py checked the paths)."""
    try:
        if args.data == "tiny":
            train = TinyShapes("train", context_length=config.context_length, train=True, seed=args.seed,
                               recombine=args.recombine)
            val = TinyShapes("val", train.tokenizer, config.context_length, limit=args.eval_images or 256)
            return train, train.tokenizer, val, replace(config, vocab_size=train.tokenizer.vocab_size)
        tokenizer = Tokenizer.load(args.tokenizer) if args.tokenizer else saved_tokenizer  # None: trained below
        sets = {}
        for name, path in [("train", args.data), ("val", args.val_data)]:  # each file in its own format
            if name == "train" and Path(path).is_dir():  # a folder of tar shards, streamed (coca_min/data/shards.py)
                sets[name] = ShardReader(path, tokenizer, config.image_size, config.context_length, seed=args.seed)
                continue
            kind = CocoCaptions if path and path.lower().endswith(".json") else CaptionManifest
            sets[name] = kind(path, args.images, tokenizer, config.image_size, config.context_length,
                              train=name == "train", strict=args.strict, seed=args.seed) if path else None  # fmt: skip
    except (OSError, ValueError) as error:
        sys.exit(f"error: {error}")
    if tokenizer is None:  # trained once, on rank 0; the other ranks receive its merges
        merges = None
        if D.rank() == 0:
            streamed = isinstance(sets["train"], ShardReader)
            captions = all_captions(args.data) if streamed else [c for caps in sets["train"].captions for c in caps]
            merges = Tokenizer.train(captions, args.vocab_size).state()
        tokenizer = Tokenizer.from_state(D.broadcast_object(merges))
        for dataset in filter(None, sets.values()):
            dataset.tokenizer = tokenizer  # read once (and their images checked once), before it existed
    return sets["train"], tokenizer, sets["val"], replace(config, vocab_size=tokenizer.vocab_size)


def training_batches(train_set, args, setup, state):
    """The stream of micro-batches on the device (coca_min/data/loader.py), from where a resumed
    run left off."""
    pad_multiple = 8 if setup.compile else 1  # compiled: a few text lengths, not a new one every batch
    if isinstance(train_set, ShardReader):
        position = shard_position(state.data_positions, setup.rank, setup.world)
        batches = ShardBatches(train_set, setup.micro_batch, setup.workers, setup.on_gpu, position, pad_multiple)
    elif len(train_set) // setup.world // setup.micro_batch < args.accum:
        sys.exit(f"error: {len(train_set)} training pairs are fewer than one batch of {args.batch_size}")
    else:
        batches = EpochBatches(train_set, setup.micro_batch, setup.rank, setup.world, args.seed, setup.workers,
                               pin_memory=setup.on_gpu, drawn=state.step * args.accum, pad_multiple=pad_multiple)  # fmt: skip
    return ToDevice(batches, setup.device)  # pinned uint8 -> the device (a side stream on a GPU), normalised there
