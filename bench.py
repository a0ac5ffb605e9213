"""Benchmark CoCa: training steps, or caption decoding, of a preset on synthetic data.

    python bench.py --size tiny                                   # training steps, on the CPU
    python bench.py --size base --batch-size 128 --compile --dtype bf16 --steps 20   # on a GPU
    python bench.py --size base --decode --batch-size 8 --new-tokens 64              # KV cache vs none

Training prints images/s, tokens/s, the model FLOPs per image (`coca_min/model/flops.py`: the
formula, from the config), MFU against the device's peak (the table below, or --peak-tflops),
the peak memory and the step time split into forward (with the loss), backward and optimizer.
The first --warmup steps (compilation, allocator) are not timed. `--compare open_clip` times
open_clip's CoCa at the same shape in the same run, where open_clip is installed (it is not a
dependency). Decoding prints tokens/s with and without the key/value cache, for the same
tokens. The inputs are random: the numbers are speed, not quality.
"""

import argparse
import resource
import sys
import time
from contextlib import nullcontext
from dataclasses import replace

import torch
import torch.nn.functional as F

from coca_min import CoCa
from coca_min.config import PRESETS
from coca_min.model.flops import training_flops
from coca_min.model.generate import generate
from coca_min.model.losses import coca_loss

# dense bf16 TFLOP/s of common GPUs (the vendors' figures, without sparsity)
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "L4": 121.0,
               "RTX 4090": 165.2, "RTX 3090": 71.0, "V100": 125.0}  # fmt: skip
CPU_SIZES = ("tiny", "small")  # a paper-size training step on a CPU would take minutes


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="tiny", choices=list(PRESETS))
    p.add_argument("--batch-size", type=int, default=None, help="default: 32 (training), 8 (decoding)")
    p.add_argument("--steps", type=int, default=10, help="timed training steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="bf16: autocast")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--peak-tflops", type=float, help="the device's peak, for MFU (default: from the GPU's name)")
    p.add_argument("--compare", choices=["open_clip"], help="also time open_clip's CoCa at the same shape")
    p.add_argument("--decode", action="store_true", help="time greedy decoding with and without the cache")
    p.add_argument("--new-tokens", type=int, default=64, help="tokens each caption decodes (--decode)")
    p.add_argument("--repeats", type=int, default=3, help="decoding runs of each kind; the median is reported")
    args = p.parse_args(argv)
    for name in ["steps", "new_tokens", "repeats"]:
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.batch_size is not None and args.batch_size < 1:
        p.error("--batch-size must be at least 1")
    args.batch_size = args.batch_size or (8 if args.decode else 32)
    return args


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_batch(config, batch_size, device, generator):
    """Random images and full-length texts ([BOS] w… [EOS], no padding: the most work)."""
    images = torch.randn(batch_size, 3, config.image_size, config.image_size, generator=generator).to(device)
    tokens = torch.randint(3, config.vocab_size, (batch_size, config.context_length), generator=generator)
    tokens[:, 0], tokens[:, -1] = config.bos_id, config.eos_id
    return images, tokens.to(device)


def time_training(model, step_loss, parameters, batch, args, device):
    """Mean seconds of forward (and loss), backward and optimizer over the timed steps."""
    optimizer = torch.optim.AdamW(parameters, lr=1e-4, fused=device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.dtype == "bf16" else nullcontext()
    totals = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0}
    for step in range(args.warmup + args.steps):
        synchronize(device)
        start = time.perf_counter()
        with autocast:
            loss = step_loss(model, *batch)
        synchronize(device)
        forward_done = time.perf_counter()
        loss.backward()
        synchronize(device)
        backward_done = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        if step >= args.warmup:
            totals["forward"] += forward_done - start
            totals["backward"] += backward_done - forward_done
            totals["optimizer"] += time.perf_counter() - backward_done
    return {part: seconds / args.steps for part, seconds in totals.items()}


def coca_min_model(config, args, device):
    model = CoCa(config).to(device)
    compiled = torch.compile(model) if args.compile else model

    def step_loss(_, images, tokens):
        return coca_loss(compiled(images, tokens), tokens, config.pad_id)["loss"]

    return model, step_loss


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
    model = open_clip.CoCa(config.embed_dim, multimodal, text, vision).to(device)

    def step_loss(m, images, tokens):
        out = m(images, tokens)
        logits, labels = out["logits"], out["labels"]
        image, text, scale = out["image_features"], out["text_features"], out["logit_scale"]
        sim = scale * image @ text.T
        target = torch.arange(len(sim), device=sim.device)
        contrastive = F.cross_entropy(sim, target) + F.cross_entropy(sim.T, target)
        return contrastive + 2 * F.cross_entropy(logits.permute(0, 2, 1), labels)

    return model, step_loss


def peak_memory(device):
    if device.type == "cuda":
        return f"peak memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB (allocated by torch)"
    return f"peak memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (the process's resident peak)"


def device_peak(device, given):
    if given:
        return given, "given"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for gpu, tflops in PEAK_TFLOPS.items():
            if gpu in name:
                return tflops, f"{name}, bf16 dense"
    return None, None


def train_report(label, seconds, args, config, device):
    step = sum(seconds.values())
    images_per_s = args.batch_size / step
    per_image = training_flops(config, args.batch_size)
    achieved = per_image * images_per_s / 1e12
    peak, source = device_peak(device, args.peak_tflops)
    parts = ", ".join(f"{part} {s * 1e3:.1f}" for part, s in seconds.items())
    lines = [f"{label}: step {step * 1e3:.1f} ms ({parts} ms) | {images_per_s:,.1f} images/s | "
             f"{images_per_s * config.context_length:,.0f} tokens/s"]  # fmt: skip
    mfu = f" | MFU {achieved / peak:.1%} of {peak:g} TFLOP/s ({source})" if peak else " | MFU: no peak known (--peak-tflops)"
    lines.append(f"  model FLOPs per image {per_image / 1e9:.3f} GFLOP (training) | {achieved:.3f} TFLOP/s{mfu}")
    return images_per_s, lines


def bench_training(config, args, device):
    generator = torch.Generator().manual_seed(0)
    batch = synthetic_batch(config, args.batch_size, device, generator)
    model, step_loss = coca_min_model(config, args, device)
    seconds = time_training(model, step_loss, model.parameters(), batch, args, device)
    ours, lines = train_report("coca_min", seconds, args, config, device)
    print("\n".join(lines))
    print(f"  {peak_memory(device)}")
    if args.compare == "open_clip":
        try:
            other, other_loss = open_clip_model(config, device)
        except ImportError:
            print("open_clip: not installed (pip install open_clip_torch to compare; it is not a dependency)")
            return
        del model
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        trained = torch.compile(other) if args.compile else other
        seconds = time_training(trained, other_loss, other.parameters(), batch, args, device)
        theirs, lines = train_report("open_clip", seconds, args, config, device)
        print("\n".join(lines))
        print(f"  {peak_memory(device)}")
        print(f"coca_min / open_clip: {ours / theirs:.2f}x the images/s")


@torch.inference_mode()
def bench_decoding(config, args, device):
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


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda, but torch sees no GPU")
    config = PRESETS[args.size]
    if device.type == "cpu" and not args.decode and args.size not in CPU_SIZES:
        sys.exit(f"error: a {args.size} training step on a CPU takes minutes; on a CPU bench.py trains "
                 f"{' and '.join(CPU_SIZES)} (decoding, --decode, runs any size)")  # fmt: skip
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"coca_min bench | {args.size} | {name} | torch {torch.__version__} | batch {args.batch_size} | "
          f"{args.dtype}{' | compiled' if args.compile else ''}")  # fmt: skip
    if args.decode:
        bench_decoding(config, args, device)
    else:
        bench_training(config, args, device)


if __name__ == "__main__":
    main()
