"""Benchmark coca_min: training steps, caption decoding, the data loader, or the tokenizer's training.

    python bench.py --size tiny                                        # training steps (a CPU: tiny, small)
    python bench.py --size base --batch-size 128 --dtype bf16 --compile --compare open_clip   # on a GPU
    python bench.py --size base --decode --batch-size 8 --new-tokens 64  # decoding: KV cache vs none
    python bench.py --data shards/ --workers 4 --steps 50              # the data loader (a folder of .tar)
    python bench.py --data train.jsonl --images photos/ --workers 2    # or a .jsonl/.csv manifest, COCO .json
    python bench.py --tokenizer --captions 50000 --merges 1000         # Tokenizer.train (default 500k, 8,000)
    python bench.py --trainer-step --size base --data shards/ --batch-size 128 --workers 8 --compile --dtype bf16

Training (random inputs of the preset's shape: speed, not quality): images/s over --steps steps
after --warmup, synchronized only at the window's ends (CUDA events on a GPU); one step's FLOPs
as torch counts them (FlopCounterMode), beside the formula's (`coca_min/model/flops.py`);
achieved TFLOP/s, MFU against the GPU's dense bf16 peak (PEAK_BF16_TFLOPS or --peak-tflops),
peak memory; and, from a separate pass that synchronizes after each part, the split into
forward (with the loss), backward and optimizer. fp32 on a GPU uses TF32 matmuls, as train.py
does. `--compare open_clip` then times open_clip's CoCa at the same shape (where installed)
after coca_min's model is freed, with its own counted FLOPs. --data: images/s through a
DataLoader of --workers processes, and how many a GPU needs. --tokenizer: Tokenizer.train on
synthetic captions. --trainer-step: train.py's own steps on --data (default: the tiny set),
data loading, the copy to the device and the reads of the logs included, so that what the
model-only figure leaves out shows as the difference. Each mode is a function of MODES,
dispatched by main.
"""

import argparse
import gc
import math
import os
import re
import resource
import sys
import time
from contextlib import nullcontext
from dataclasses import replace
from itertools import count
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from coca_min import CoCa
from coca_min.config import PRESETS
from coca_min.model.flops import training_flops
from coca_min.model.generate import generate
from coca_min.model.losses import coca_loss

# Dense bf16 TFLOP/s (without sparsity), from NVIDIA datasheets (the GeForce cards: NVIDIA's
# Ampere and Ada architecture whitepapers, fp32 accumulation). Matched as whole words of
# torch.cuda.get_device_name, first match wins: "NVIDIA H100 80GB HBM3" is the SXM card.
PEAK_BF16_TFLOPS = [("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200 NVL", 835.0),
                    ("H200", 989.0), ("GH200", 989.0), ("A100", 312.0), ("L40S", 362.0), ("L40", 181.0),
                    ("L4", 121.0), ("RTX 4090", 165.2), ("RTX 3090", 71.0)]  # fmt: skip
CPU_SIZES = ("tiny", "small")  # a paper-size training step on a CPU would take minutes
DATA_TARGET = 1500.0  # base on an H100 at 40% MFU is 1,533 images/s (lesson 10): --target-images-per-s


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--decode", action="store_true", help="time greedy decoding with and without the cache")
    mode.add_argument("--data", metavar="FOLDER_OR_MANIFEST", help="time the data loader on this data")
    mode.add_argument("--tokenizer", action="store_true", help="time Tokenizer.train on synthetic captions")
    p.add_argument("--trainer-step", action="store_true", help="time train.py's own steps (on --data, or the tiny set)")
    p.add_argument("--log-every", type=int, default=10, help="--trainer-step: train.py's --log-every")
    p.add_argument("--size", default=None, choices=list(PRESETS), help="default: tiny (base for --data)")
    p.add_argument("--batch-size", type=int, default=None, help="default: 32 (8 decoding)")
    p.add_argument("--steps", type=int, default=10, help="timed training steps (--data: batches)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="bf16: autocast")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--peak-tflops", type=float, help="the device's peak, for MFU (default: from the GPU's name)")
    p.add_argument("--compare", choices=["open_clip"], help="also time open_clip's CoCa at the same shape")
    p.add_argument("--new-tokens", type=int, default=64, help="tokens each caption decodes (--decode)")
    p.add_argument("--repeats", type=int, default=3, help="decoding runs of each kind; the median is reported")
    p.add_argument("--images", help="--data: the folder a manifest's or COCO file's image paths are relative to")
    p.add_argument("--workers", type=int, default=0, help="--data: DataLoader worker processes (0: in-process)")
    p.add_argument("--target-images-per-s", type=float, default=DATA_TARGET, help="--data: a GPU's appetite")
    p.add_argument("--captions", type=int, default=500_000, help="--tokenizer: synthetic captions")
    p.add_argument("--words", type=int, default=30_000, help="--tokenizer: distinct words in them")
    p.add_argument("--merges", type=int, default=8_000, help="--tokenizer: merges to learn")
    args = p.parse_args(argv)
    for name in ["steps", "new_tokens", "repeats", "captions", "words", "merges", "batch_size"]:
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.workers < 0 or args.warmup < 0:
        p.error("--workers and --warmup must be at least 0")
    if args.data and not Path(args.data).is_dir() and not args.images:
        p.error("--data with a manifest or COCO .json needs --images (the folder its paths are relative to)")
    if args.trainer_step and (args.decode or args.tokenizer):
        p.error("--trainer-step times training steps: not with --decode or --tokenizer")
    args.mode = ("trainer-step" if args.trainer_step else "decode" if args.decode else "data" if args.data
                 else "tokenizer" if args.tokenizer else "train")  # fmt: skip
    args.size = args.size or ("base" if args.data and not args.trainer_step else "tiny")
    args.batch_size = args.batch_size or (8 if args.decode else 32)
    return args


# ---------------------------------------------------------------- training
def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_loss(called, step_loss, batch, args, device):
    """The loss of a forward pass, under bf16 autocast with --dtype bf16."""
    with torch.autocast(device.type, dtype=torch.bfloat16) if args.dtype == "bf16" else nullcontext():
        return step_loss(called, *batch)


def synthetic_batch(config, batch_size, device, generator):
    """Random images and full-length texts ([BOS] w… [EOS], no padding: the most work)."""
    images = torch.randn(batch_size, 3, config.image_size, config.image_size, generator=generator).to(device)
    tokens = torch.randint(3, config.vocab_size, (batch_size, config.context_length), generator=generator)
    tokens[:, 0], tokens[:, -1] = config.bos_id, config.eos_id
    return images, tokens.to(device)


def coca_min_model(config, device):
    """-> (model, step_loss(called model, images, tokens) -> loss). No closure holds the model."""

    def step_loss(called, images, tokens):
        return coca_loss(called(images, tokens), tokens, config.pad_id)["loss"]

    return CoCa(config).to(device), step_loss


def open_clip_model(config, device):
    """open_clip's CoCa at the same shape (its own text tower: a separate causal encoder)."""
    import open_clip

    # the same keys as open_clip's own coca_ViT-B-32.json, at this preset's shape
    vision = {"image_size": config.image_size, "patch_size": config.patch_size, "width": config.vision_width,
              "layers": config.vision_layers, "head_width": config.vision_width // config.vision_heads,
              "mlp_ratio": config.vision_mlp / config.vision_width, "attentional_pool": True,
              "attn_pooler_queries": config.n_caption_queries, "attn_pooler_heads": config.pooler_heads,
              "output_tokens": True}  # fmt: skip
    text = {"context_length": config.context_length, "vocab_size": config.vocab_size, "width": config.text_width,
            "heads": config.text_heads, "layers": config.n_uni, "mlp_ratio": config.text_mlp / config.text_width,
            "embed_cls": True, "output_tokens": True}  # fmt: skip
    multimodal = {"context_length": config.context_length, "vocab_size": config.vocab_size, "width": config.text_width,
                  "heads": config.text_heads, "layers": config.n_multi, "attn_pooler_heads": config.pooler_heads,
                  "mlp_ratio": config.text_mlp / config.text_width}  # fmt: skip

    def step_loss(called, images, tokens):
        out = called(images, tokens)  # logits (B, T-1, V) of labels (B, T-1), features (B, E)
        sim = out["logit_scale"] * out["image_features"] @ out["text_features"].T  # (B, B)
        target = torch.arange(len(sim), device=sim.device)
        contrastive = F.cross_entropy(sim, target) + F.cross_entropy(sim.T, target)
        return contrastive + 2 * F.cross_entropy(out["logits"].permute(0, 2, 1), out["labels"])

    return open_clip.CoCa(config.embed_dim, multimodal, text, vision).to(device), step_loss


def count_step_flops(model, step_loss, batch, args, device) -> int:
    """FLOPs of one training step (forward and backward), as FlopCounterMode counts them: its
    matrix products, under the plain attention kernel (the counter has no formula for the CPU's
    fused one, so it would miss attention there; the products are the same)."""
    with sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter:
        forward_loss(model, step_loss, batch, args, device).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def time_window(step, n_steps, device) -> float:
    """Seconds of n_steps steps back to back, synchronized only at the ends (CUDA events on a GPU)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        synchronize(device)
        start.record()
        for _ in range(n_steps):
            step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3  # ms -> s
    start_s = time.perf_counter()
    for _ in range(n_steps):
        step()
    return time.perf_counter() - start_s


def time_split(called, step_loss, optimizer, batch, args, device) -> dict:
    """Mean seconds of forward (with the loss), backward and optimizer, synchronizing after each:
    the syncs cost time of their own, so this pass is not the headline."""
    seconds = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0}

    def timed(part, work):
        synchronize(device)
        start_s = time.perf_counter()
        result = work()
        synchronize(device)
        seconds[part] += (time.perf_counter() - start_s) / args.steps
        return result

    for _ in range(args.steps):
        loss = timed("forward", lambda: forward_loss(called, step_loss, batch, args, device))
        timed("backward", loss.backward)
        timed("optimizer", lambda: (optimizer.step(), optimizer.zero_grad(set_to_none=True)))
    return seconds


def measure(build, config, batch, args, device) -> dict:
    """Build one model, count its step's FLOPs, time it. Returns numbers only: the model, its
    optimizer and compiled wrapper are garbage once this returns (`free` collects them)."""
    model, step_loss = build(config, device)
    flops_per_step = count_step_flops(model, step_loss, batch, args, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)  # the count's plain attention is not the run's
    called = torch.compile(model) if args.compile else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")

    def step():
        forward_loss(called, step_loss, batch, args, device).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(args.warmup):  # compilation, the allocator, AdamW's state
        step()
    window_s = time_window(step, args.steps, device)
    split_s = time_split(called, step_loss, optimizer, batch, args, device)
    return {"step_s": window_s / args.steps, "flops_per_step": flops_per_step, "split_s": split_s,
            "peak_memory": peak_memory(device)}  # fmt: skip


def free(args, device):
    """Drop what a finished measurement left: compiled code, cycles, the allocator's cache, peak stats."""
    if args.compile:
        torch._dynamo.reset()  # compiled code holds guards on the model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB allocated by torch (this model's run)"
    rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return f"{rss_gib:.2f} GiB resident (the process's peak so far: on a CPU it cannot be reset)"


def peak_tflops(device_name: str):
    """The dense bf16 TFLOP/s of the first PEAK_BF16_TFLOPS entry that names this GPU, or None."""
    for gpu, tflops in PEAK_BF16_TFLOPS:
        if re.search(rf"(?<!\w){re.escape(gpu)}(?!\w)", device_name):
            return tflops
    return None


def mfu_text(achieved_tflops, args, device) -> str:
    if args.peak_tflops:
        peak, source = args.peak_tflops, "given"
    else:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
        peak, source = peak_tflops(name), f"{name}, dense bf16"
    if not peak:
        return "MFU: no peak known (--peak-tflops)"
    return f"MFU {achieved_tflops / peak:.1%} of {peak:g} TFLOP/s ({source})"


def train_report(label, result, args, config, device) -> list[str]:
    step_s, B = result["step_s"], args.batch_size
    images_per_s = B / step_s
    counted_per_image, formula_per_image = result["flops_per_step"] / B, training_flops(config, B)
    achieved = result["flops_per_step"] / step_s / 1e12
    timer = "CUDA events" if device.type == "cuda" else "perf_counter"
    ratio = f"counted / formula {counted_per_image / formula_per_image:.3f}"
    formula = f"the formula {formula_per_image / 1e9:.3f} ({ratio})" if label == "coca_min" else (
        f"coca_min's formula at this shape {formula_per_image / 1e9:.3f}: not this model's")  # fmt: skip
    parts = ", ".join(f"{part} {s * 1e3:.1f}" for part, s in result["split_s"].items())
    return [(f"{label}: {images_per_s:,.1f} images/s | {images_per_s * config.context_length:,.0f} tokens/s | "
             f"{step_s * 1e3:.1f} ms a step ({args.steps} steps back to back, {timer})"),
            f"  training FLOPs per image: counted {counted_per_image / 1e9:.3f} GFLOP (FlopCounterMode), {formula}",
            f"  {achieved:.3f} TFLOP/s achieved (counted FLOPs) | {mfu_text(achieved, args, device)}",
            f"  peak memory {result['peak_memory']}",
            f"  split, from a separate pass that synchronizes after each part: {parts} ms"]  # fmt: skip


def bench_training(args, config, device):
    batch = synthetic_batch(config, args.batch_size, device, torch.Generator().manual_seed(0))
    ours = measure(coca_min_model, config, batch, args, device)
    print("\n".join(train_report("coca_min", ours, args, config, device)))
    free(args, device)  # coca_min's model is gone before open_clip's is built
    if args.compare == "open_clip":
        try:
            theirs = measure(open_clip_model, config, batch, args, device)
        except ImportError:
            print("open_clip: not installed (pip install open_clip_torch to compare; it is not a dependency)")
            return
        print("\n".join(train_report("open_clip", theirs, args, config, device)))
        free(args, device)
        print(f"coca_min / open_clip: {theirs['step_s'] / ours['step_s']:.2f}x the images/s")


# ---------------------------------------------------------------- decoding
@torch.inference_mode()
def bench_decoding(args, config, device):
    """Greedy decoding of --new-tokens tokens for a batch, with and without the cache."""
    config = replace(config, context_length=max(config.context_length, args.new_tokens + 1))
    model = CoCa(config).to(device).eval()
    images, _ = synthetic_batch(config, args.batch_size, device, torch.Generator().manual_seed(0))
    results = {}
    for use_cache in [True, False]:
        generate(model, images[:1], max_new=2, use_cache=use_cache)  # warm-up
        times = []
        for _ in range(args.repeats):  # the median of a few: one short run is at the mercy of the machine
            synchronize(device)
            start = time.perf_counter()
            tokens, _ = generate(model, images, max_new=args.new_tokens, min_new=args.new_tokens, use_cache=use_cache)
            synchronize(device)
            times.append(time.perf_counter() - start)
        results[use_cache] = (tokens, sorted(times)[len(times) // 2])
    (cached, cached_s), (uncached, uncached_s) = results[True], results[False]
    same = torch.equal(cached, uncached)
    n = args.batch_size * args.new_tokens
    print(f"decoding {args.new_tokens} new tokens, batch {args.batch_size} (median of {args.repeats}): "
          f"cached {n / cached_s:,.1f} tokens/s ({cached_s:.2f} s), uncached {n / uncached_s:,.1f} tokens/s ({uncached_s:.2f} s): "
          f"{uncached_s / cached_s:.1f}x faster with the cache; same tokens: {same}")  # fmt: skip
    if not same:
        sys.exit("error: cached and uncached decoding gave different tokens")


# ---------------------------------------------------------------- the data loader
def data_set(args, config):
    """(the --data set, train=True: random crops, with a byte-level tokenizer (no merges), its collate)."""
    from coca_min.data.datasets import collate
    from coca_min.data.image_files import CaptionManifest, CocoCaptions
    from coca_min.data.shards import ShardReader, shard_collate
    from coca_min.data.tokenizer import Tokenizer

    source, shape = Path(args.data), (Tokenizer(), config.image_size, config.context_length)
    if source.is_dir():
        return ShardReader(source, *shape, train=True), shard_collate
    if source.suffix.lower() not in (".json", ".jsonl", ".csv"):
        sys.exit(f"error: --data takes a folder of .tar shards, a .jsonl/.csv manifest or COCO .json, not {source}")
    kind = CocoCaptions if source.suffix.lower() == ".json" else CaptionManifest
    return kind(source, args.images, *shape, train=True), collate


def endless(dataset, loader):
    """The loader's batches, epoch after epoch."""
    for epoch in count():
        dataset.set_epoch(epoch)
        n = 0
        for n, batch in enumerate(loader, 1):
            yield batch
        if n == 0:
            sys.exit(f"error: the --data set ({type(dataset).__name__}) gave no batch in a whole epoch")


def bench_data(args, config):
    """Images/s of --steps batches from the loader's start (its workers' start-up counts)."""
    dataset, collate_fn = data_set(args, config)
    shuffle = not isinstance(dataset, torch.utils.data.IterableDataset)  # shards: shuffled by the reader
    loader = torch.utils.data.DataLoader(dataset, args.batch_size, shuffle=shuffle, collate_fn=collate_fn, drop_last=True,
                                         num_workers=args.workers, generator=torch.Generator().manual_seed(0))  # fmt: skip  (as training: whole batches)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # in-process as in a worker (DataLoader gives each one thread)
    try:
        start_s = time.perf_counter()
        batches = endless(dataset, loader)
        n_images = len(next(batches)[0])  # images (B, 3, S, S), whatever their dtype
        first_s = time.perf_counter() - start_s
        for _ in range(args.steps - 1):
            n_images += len(next(batches)[0])
        seconds = time.perf_counter() - start_s
        batches.close()  # stops the workers
    finally:
        torch.set_num_threads(threads)
    images_per_s = n_images / seconds
    per_worker = images_per_s / max(args.workers, 1)
    who = f"{args.workers} worker{'s' * (args.workers > 1)}" if args.workers else "in-process, 1 thread"
    print(f"data: {images_per_s:,.1f} images/s ({who}) | {per_worker:,.1f} images/s per worker | {n_images} images "
          f"in {args.steps} batches, {seconds:.2f} s (the first after {first_s:.2f} s: start-up counts)")  # fmt: skip
    target = args.target_images_per_s
    what = " (base, batch 128)" if target == DATA_TARGET else ""
    print(f"a GPU at {target:,.0f} images/s{what} needs about {math.ceil(target / per_worker)} workers of this machine"
          f" (decoding to {config.image_size} px, --size {args.size})")  # fmt: skip
    if target == DATA_TARGET and args.size != "base":
        print(f"  (1,500 images/s is base's rate, at {PRESETS['base'].image_size} px: measure with --size base)")


# ---------------------------------------------------------------- the tokenizer
def synthetic_captions(n_captions, n_words, seed=0) -> list[str]:
    """n_captions captions of 8-15 words, drawn from n_words distinct made-up lowercase words of
    3-10 letters at Zipf-like frequencies (the r-th word ∝ 1/r); each word is in at least one."""
    rng = np.random.default_rng(seed)
    words = {}  # a dict: distinct, in the order drawn (a word's rank in frequency: random)
    while len(words) < n_words:
        lengths = rng.integers(3, 11, n_words)
        letters = (rng.integers(0, 26, (n_words, 10)) + ord("a")).astype(np.uint8)
        words.update(dict.fromkeys(bytes(row[:n]).decode() for row, n in zip(letters, lengths)))
    words = np.array(list(words)[:n_words], dtype=object)
    lengths = rng.integers(8, 16, n_captions)  # words per caption
    if lengths.sum() < n_words:
        raise ValueError(f"{n_captions} captions of 8-15 words cannot hold {n_words} distinct words")
    zipf = 1 / np.arange(1, n_words + 1)
    drawn = np.concatenate([np.arange(n_words), rng.choice(n_words, lengths.sum() - n_words, p=zipf / zipf.sum())])
    rng.shuffle(drawn)
    flat, ends = words[drawn].tolist(), np.cumsum(lengths).tolist()
    return [" ".join(flat[end - n : end]) for end, n in zip(ends, lengths.tolist())]


def bench_tokenizer(args, config=None):
    from coca_min.data.tokenizer import BYTE_OFFSET, Tokenizer

    try:
        captions = synthetic_captions(args.captions, args.words)
    except ValueError as error:
        sys.exit(f"error: {error}")
    distinct = len({word for caption in captions for word in caption.split()})
    start_s = time.perf_counter()
    tokenizer = Tokenizer.train(captions, vocab_size=BYTE_OFFSET + 256 + args.merges)
    seconds = time.perf_counter() - start_s
    learned = len(tokenizer.merges)
    print(f"tokenizer: {len(captions):,} captions, {distinct:,} distinct words, {learned:,} merges learned "
          f"(of {args.merges:,}) in {seconds:.2f} s: {seconds * 1e3 / max(learned, 1):.2f} ms per merge")  # fmt: skip


# ---------------------------------------------------------------- the trainer's own step
def bench_trainer_step(args, config, device):
    """train.py's steps as a run takes them (coca_min/train/step.py): micro-batches from the
    data loader, copied to the device and normalised there, the loss of the global batch,
    clipping, AdamW, and a read of the losses every --log-every steps. Evaluations and saves
    are left out. The window of --steps steps starts and ends with a read (nothing queued)."""
    import tempfile

    import train
    from coca_min.train.report import Progress
    from coca_min.train.step import read_logs, train_step
    from coca_min.train.trainer import leave, start

    with tempfile.TemporaryDirectory() as out:
        argv = ["--size", args.size, "--batch-size", args.batch_size, "--steps", args.warmup + args.steps, "--out", out,
                "--device", device, "--dtype", args.dtype, "--compile" if args.compile else "--no-compile",
                "--workers", args.workers, "--log-every", args.log_every]  # fmt: skip
        if args.data:
            argv += ["--data", args.data] + (["--images", args.images] if args.images else [])
        run = start(train.parse_args([str(a) for a in argv]))
        run.progress = Progress(None, 0, "", enabled=False)
        for _ in range(args.warmup):
            train_step(run)
        read_logs(run)  # the device has done all it was given: the window starts empty
        started = time.perf_counter()
        for _ in range(args.steps):
            train_step(run)
        read_logs(run)
        seconds = time.perf_counter() - started
        leave(run)
    images_per_s = args.steps * args.batch_size / seconds
    print(f"trainer step: {seconds / args.steps * 1e3:.1f} ms | {images_per_s:,.1f} images/s over {args.steps} steps "
          f"(data: {args.data or 'the tiny set'}, {args.workers} workers; losses read every {args.log_every} steps)")  # fmt: skip
    print("  the model's step alone: the same command without --trainer-step (random inputs already on the device)")
    return images_per_s


# ---------------------------------------------------------------- main
MODES = {"train": bench_training, "decode": bench_decoding, "data": bench_data, "tokenizer": bench_tokenizer,
         "trainer-step": bench_trainer_step}  # fmt: skip


def model_device(args):
    """The device of a training or decoding run, with its header line printed."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda, but torch sees no GPU")
    if device.type == "cpu" and args.mode in ("train", "trainer-step") and args.size not in CPU_SIZES:
        sys.exit(f"error: a {args.size} training step on a CPU takes minutes; on a CPU bench.py trains "
                 f"{' and '.join(CPU_SIZES)} (decoding, --decode, runs any size)")  # fmt: skip
    precision = args.dtype
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # as train.py's set_up
        precision += " (TF32 matmuls)" if args.dtype == "fp32" else ""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"coca_min bench | {args.size} | {name} | torch {torch.__version__} | batch {args.batch_size} | "
          f"{precision}{' | compiled' if args.compile else ''}")  # fmt: skip
    return device


def main(argv=None):
    args = parse_args(argv)
    config = PRESETS[args.size]
    if args.mode in ("train", "decode", "trainer-step"):
        MODES[args.mode](args, config, model_device(args))
        return
    what = f"{args.data} | {args.size}, {config.image_size} px | batch {args.batch_size}" if args.data else "Tokenizer"
    print(f"coca_min bench | {args.mode} | {what} | {os.cpu_count()} CPUs | torch {torch.__version__}")
    MODES[args.mode](args, config)


if __name__ == "__main__":
    main()
