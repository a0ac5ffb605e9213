"""Train CoCa, from a laptop CPU to torchrun on many GPUs.

    python train.py --size tiny                                   # the tiny set, a few minutes on a CPU
    python train.py --size small --data pairs.jsonl --images imgs/ --val-data val.jsonl
    torchrun --standalone --nproc-per-node=8 train.py --size base --data coco.json --images train2017/
    python train.py --size tiny --resume                          # continue out/tiny exactly

One optimizer step uses `--batch-size` pairs in all, split over processes and `--accum`
micro-batches; the contrastive loss sees all of them as negatives (distributed.py).
Outputs in --out: ckpt.pt (atomic), history.json (losses and lr per step, evaluations),
report.json, losses.png, lr.png, metrics.png (and confusion.png on the tiny set).
"""

import argparse
import json
import math
import os
import random
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from coca_min import PRESETS, CoCa, CoCaConfig, shapes
from coca_min import distributed as D
from coca_min.checkpoint import read_checkpoint, save_checkpoint
from coca_min.data import TinyShapes, collate
from coca_min.image_files import CaptionManifest, CocoCaptions
from coca_min.losses import coca_loss
from coca_min.evaluate import TINY_CLASSES, evaluate_captions, evaluate_retrieval, evaluate_tiny_zero_shot, plot_confusion, tiny_report
from coca_min.plots import plot_training
from coca_min.schedule import FakeClock, Schedule, TimeBudget
from coca_min.tokenizer import Tokenizer


class HelpWithDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows each default once: argparse's, unless the help text states its own."""

    def _get_help_string(self, action):
        if action.default is None or "default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=HelpWithDefaults)
    p.add_argument("--size", default="tiny", choices=list(PRESETS), help="model preset")
    p.add_argument("--data", default="tiny", help="'tiny', or a manifest (.jsonl/.csv) or COCO caption .json")
    p.add_argument("--images", help="image folder of --data (and of --val-data)")
    p.add_argument("--val-data", help="manifest or COCO json to evaluate on (real data)")
    p.add_argument("--tokenizer", help="tokenizer .json (real data; default: train one on the captions)")
    p.add_argument("--vocab-size", type=int, default=32000, help="size of a tokenizer trained here")
    p.add_argument("--batch-size", type=int, default=64, help="pairs per optimizer step, over all processes")
    p.add_argument("--accum", type=int, default=1, help="gradient accumulation steps")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (AdamW)")
    p.add_argument("--image-lr-scale", type=float, default=1.0, help="the image encoder's lr / --lr")
    p.add_argument("--min-lr-ratio", type=float, default=0.05, help="final lr / peak lr (cosine decay)")
    p.add_argument("--warmup", type=int, help="warm-up steps (default: 5%% of --steps; 30 with a time budget)")
    p.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay (matrices only)")
    p.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm (0: off)")
    p.add_argument("--caption-weight", type=float, default=2.0, help="λ_cap")
    p.add_argument("--contrastive-weight", type=float, default=1.0, help="λ_con")
    p.add_argument("--steps", type=int, help="optimizer steps (default: as many as --minutes allows)")
    p.add_argument("--minutes", type=float, default=3.75, help="training time budget when --steps is not given (evaluation comes on top)")
    p.add_argument("--eval-every", type=int, default=0,
                   help="evaluate and save every N steps (0: at the quarters of the planned steps)")
    p.add_argument("--eval-images", type=int, help="evaluate on at most N images per split (quick checks)")
    p.add_argument("--out", help="output folder (default: out/SIZE)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/ckpt.pt")
    p.add_argument("--seed", type=int, default=0, help="seed of the model, data order and crops")
    p.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda, cuda:1, …")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"], help="auto: bf16 autocast on GPU, fp32 on CPU")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="torch.compile (default: on GPU only)")
    p.add_argument("--workers", type=int, help="data loader processes (default: 0 on CPU, 4 on GPU)")
    p.add_argument("--threads", type=int, help="CPU threads per process (default: cores / processes)")
    p.add_argument("--nan-at-step", type=int, help=argparse.SUPPRESS)  # tests: make that step's loss NaN
    p.add_argument("--fake-step-seconds", type=float, help=argparse.SUPPRESS)  # tests: every step takes this long
    args = p.parse_args(argv)
    args.out = Path(args.out or f"out/{args.size}")
    return args


def build_data(args, config):
    """(train set, tokenizer, validation set or None, config with the tokenizer's vocab size)."""
    if args.data == "tiny":
        if config.image_size != shapes.IMAGE_SIZE:
            sys.exit(f"error: tiny_data images are {shapes.IMAGE_SIZE} px, but --size {args.size} expects {config.image_size} px")
        train = TinyShapes("train", context_length=config.context_length, train=True, seed=args.seed)
        val = TinyShapes("val", train.tokenizer, config.context_length, limit=args.eval_images or 256)
        return train, train.tokenizer, val, replace(config, vocab_size=train.tokenizer.vocab_size)
    if not args.images:
        sys.exit("error: --data needs --images, the folder its image paths are relative to")
    kind = CocoCaptions if args.data.endswith(".json") else CaptionManifest
    make = lambda path, train, tok: kind(path, args.images, tok, config.image_size, config.context_length, train=train, seed=args.seed)
    if args.tokenizer:
        tokenizer = Tokenizer.load(args.tokenizer)
    else:  # every rank trains the same tokenizer from the same captions: no communication needed
        captions = make(args.data, True, Tokenizer()).captions
        tokenizer = Tokenizer.train([c for caps in captions for c in caps], args.vocab_size)
    train = make(args.data, True, tokenizer)
    val = make(args.val_data, False, tokenizer) if args.val_data else None
    return train, tokenizer, val, replace(config, vocab_size=tokenizer.vocab_size)


class ResumableSampler(DistributedSampler):
    """DistributedSampler (per-epoch shuffle, one shard per rank, drop_last) that can start
    partway into an epoch, so that a resumed run sees exactly the batches it would have."""

    skip = 0  # samples of this rank's shard to leave out, once

    def __iter__(self):
        indices = list(super().__iter__())[self.skip :]
        self.skip = 0
        return iter(indices)


@torch.no_grad()
def evaluate_during_training(model, tokenizer, val, args, config):
    """Quick validation figures: loss, retrieval R@1, and on the tiny set zero-shot top-1 and
    greedy-caption object F1 on small subsets."""
    model.eval()
    device = next(model.parameters()).device
    images, tokens = collate([val[i] for i in range(min(len(val), 256))])
    outputs = model(images.to(device), tokens.to(device))
    losses = coca_loss(outputs, tokens.to(device), config.pad_id, args.caption_weight, args.contrastive_weight)
    out = {"val_loss": losses["loss"].item()}
    out.update(evaluate_retrieval(model, val, ks=(1,)))
    if args.data == "tiny":
        classes = TinyShapes("classes", tokenizer, config.context_length, limit=min(args.eval_images or 400, 1000))
        out["zero_shot_top1"] = evaluate_tiny_zero_shot(model, tokenizer, classes)[0]["top1"]
        subset = TinyShapes("val", tokenizer, config.context_length, limit=min(len(val), 128))
        out["caption_object_F1"] = evaluate_captions(model, subset)[0]["object_F1"]
    model.train()
    return out


def main(argv=None):
    args = parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    rank, world, local_rank = D.setup(args.device)
    main_process = rank == 0
    device = torch.device(f"cuda:{local_rank}" if args.device == "cuda" and world > 1 else args.device)
    on_gpu = device.type == "cuda"
    if on_gpu:
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    else:
        torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1))))
    dtype = {"auto": torch.bfloat16 if on_gpu else torch.float32, "fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
    compile_model = on_gpu if args.compile is None else args.compile
    workers = (4 if on_gpu else 0) if args.workers is None else args.workers
    if args.batch_size % (world * args.accum):
        sys.exit(f"error: --batch-size {args.batch_size} must be divisible by processes ({world}) × --accum ({args.accum})")
    micro_batch = args.batch_size // (world * args.accum)
    torch.manual_seed(args.seed)
    random.seed(args.seed)

    train_set, tokenizer, val_set, config = build_data(args, PRESETS[args.size])
    model = CoCa(config).to(device)
    groups = []  # weight decay on matrices only (not biases, norms, the scale); own lr for the ViT
    for name_is_image, scale in [(True, args.image_lr_scale), (False, 1.0)]:
        params = [p for n, p in model.named_parameters() if n.startswith("image_encoder.") == name_is_image]
        groups += [{"params": [p for p in params if p.dim() >= 2], "weight_decay": args.weight_decay, "lr_scale": scale},
                   {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0, "lr_scale": scale}]  # fmt: skip
    optimizer = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.98), fused=on_gpu)
    ckpt_path = args.out / "ckpt.pt"
    step, total_steps, history, evaluations = 0, args.steps, [], []
    run = {"budgeted": args.steps is None, "train_seconds": 0.0, "lr_progress": 0.0, "quarters_done": 0, "warmup": None}
    if args.resume:
        if not ckpt_path.is_file():
            sys.exit(f"error: --resume, but there is no checkpoint at {ckpt_path}")
        saved = read_checkpoint(ckpt_path, device)
        differences = CoCaConfig(**saved["config"]).differences(config)
        if differences:
            changes = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in differences.items())
            sys.exit(f"error: {ckpt_path} was made with a different model config ({changes})")
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        step, history, evaluations = saved["step"], saved["history"], saved["evaluations"]
        total_steps = args.steps or saved["total_steps"]  # a time budget re-plans it below
        run.update({key: saved[key] for key in run if key in saved})  # budget, schedule, evaluations
        run["budgeted"] = run["budgeted"] and args.steps is None  # --steps N ends a time budget
        torch.set_rng_state(saved["rng"]["torch"].cpu())
        random.setstate(saved["rng"]["python"])
        if main_process and total_steps is not None and step >= total_steps:
            print(f"{ckpt_path} is a finished run ({step} steps); evaluating it again (--steps N trains on to N)")
        elif main_process:
            print(f"resumed {ckpt_path} at step {step} of {total_steps or 'a time budget'}")

    # lr: warm-up over a fixed number of steps, then a cosine over the steps planned (schedule.py);
    # with a time budget the number of steps is planned from this session's own timed steps
    default_warmup = round(0.05 * args.steps) if args.steps else 30  # 5% of the steps; 30 with a time budget
    warmup = next(w for w in [args.warmup, run["warmup"], default_warmup] if w is not None)  # a resume keeps its own
    schedule = Schedule(args.lr, warmup, args.min_lr_ratio, progress=run["lr_progress"])
    clock = FakeClock(args.fake_step_seconds) if args.fake_step_seconds else time.monotonic
    budget = TimeBudget(args.minutes * 60 if run["budgeted"] else None, clock, spent=run["train_seconds"])
    quarters_done = run["quarters_done"]  # quarters of the plan evaluated at

    def save(reason):
        if main_process:
            rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
            save_checkpoint(ckpt_path, model, tokenizer, optimizer=optimizer.state_dict(), step=step,
                            total_steps=total_steps, history=history, evaluations=evaluations, rng=rng,
                            budgeted=run["budgeted"], train_seconds=budget.spent(), lr_progress=schedule.progress,
                            warmup=warmup, quarters_done=quarters_done, args={k: str(v) for k, v in vars(args).items()},
                            reason=reason)  # fmt: skip
            write_history(args.out / "history.json", history, evaluations)
        return step

    trained = torch.compile(model) if compile_model else model
    if world > 1:
        trained = DistributedDataParallel(trained, device_ids=[local_rank] if on_gpu else None)
    sampler = ResumableSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=args.seed, drop_last=True)
    generator = torch.Generator()  # seeds the workers' random crops, per epoch
    loader = DataLoader(train_set, batch_size=micro_batch, sampler=sampler, collate_fn=collate, num_workers=workers,
                        drop_last=True, pin_memory=on_gpu, generator=generator, worker_init_fn=ignore_ctrl_c)  # fmt: skip
    if len(loader) < args.accum:
        sys.exit(f"error: {len(train_set)} training pairs are fewer than one batch of {args.batch_size}")

    def start_epoch(number, skip_batches=0):  # new order, new caption draws, new crops
        sampler.set_epoch(number)
        sampler.skip = skip_batches * micro_batch
        train_set.set_epoch(number)
        generator.manual_seed(args.seed * 100_003 + number)
        return iter(loader)

    epoch, done_in_epoch = divmod(step * args.accum, len(loader))  # micro-batches run across epochs
    batches = start_epoch(epoch, done_in_epoch)

    def next_batch():
        nonlocal batches, epoch
        try:
            return next(batches)
        except StopIteration:
            epoch += 1
            batches = start_epoch(epoch)
            return next(batches)

    stop_requested = False

    def on_interrupt(signum, frame):  # first Ctrl-C: finish this step, save, exit; second: now
        nonlocal stop_requested
        if stop_requested:
            raise KeyboardInterrupt
        stop_requested = True

    previous_handler = signal.signal(signal.SIGINT, on_interrupt)
    args.out.mkdir(parents=True, exist_ok=True)
    last_saved = save("start") if not args.resume else step
    progress_report = Progress(total_steps, step, f"training CoCa-{args.size}", enabled=main_process)
    budget.not_training()  # the clock starts now, after loading and the first save
    trained.train()
    while total_steps is None or step < total_steps:
        t0 = time.monotonic()
        step_batches = [[t.to(device, non_blocking=True) for t in next_batch()] for _ in range(args.accum)]
        if args.nan_at_step == step + 1:
            step_batches[0][0] = step_batches[0][0] * float("nan")  # NaN pixels: a NaN loss, for the tests
        losses = D.forward_backward(trained, step_batches, config.pad_id, args.caption_weight,
                                    args.contrastive_weight, autocast)  # fmt: skip
        logged = D.mean_over_ranks({**losses, "stop": torch.tensor(float(stop_requested), device=device)})
        if not math.isfinite(logged["loss"]):
            progress_report.close()
            sys.exit(f"stopping: the loss is {logged['loss']} at step {step + 1} (contrastive "
                     f"{logged['contrastive']:.4g}, caption {logged['caption']:.4g}); the model was not "
                     f"updated with it. The last good checkpoint is {ckpt_path} (step {last_saved}).")  # fmt: skip
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip or float("inf")).item()
        if not math.isfinite(grad_norm):  # finite loss, infinite gradient: do not step with it
            progress_report.close()
            sys.exit(f"stopping: the gradient norm is {grad_norm} at step {step + 1}; the model was not updated "
                     f"with it. The last good checkpoint is {ckpt_path} (step {last_saved}).")  # fmt: skip
        lr = schedule.lr(step)
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.clamp_logit_scale_()  # s = 1/σ <= 100, on the parameter (a clamp in forward has no gradient)
        step += 1
        history.append({"step": step, "lr": lr, **{k: logged[k] for k in ("loss", "contrastive", "caption")}})
        planned = budget.step_done(step)
        if planned is not None:  # every rank must run the same number of steps: rank 0's plan
            total_steps = D.broadcast_int(planned)
        schedule.advance(step, total_steps)
        rate = args.batch_size / max(time.monotonic() - t0, 1e-9)
        progress_report.update(step, total_steps, loss=logged["loss"], con=logged["contrastive"],
                               cap=logged["caption"], lr=lr, pairs_s=rate)  # fmt: skip
        # evaluate every --eval-every steps, or at each quarter of the plan (once each: a re-plan
        # moves the quarters still ahead), and at the last step
        stopping, finished = logged["stop"] > 0, step == total_steps
        quarter_due = not args.eval_every and quarters_passed(step, total_steps) > quarters_done
        if stopping or finished or quarter_due or (args.eval_every and step % args.eval_every == 0):
            if main_process and val_set is not None and not stopping:
                figures = evaluate_during_training(model, tokenizer, val_set, args, config)
                evaluations.append({"step": step, **figures})
                progress_report.write(f"step {step} (validation subset): " + ", ".join(f"{k} {v:.3f}" for k, v in figures.items()))
            quarters_done = max(quarters_done, quarters_passed(step, total_steps))
            last_saved = save("interrupted" if stopping else "periodic")
            if main_process:
                plot_training(history, evaluations, args.out)
            D.barrier()
            budget.not_training()  # evaluating and saving is not training time
            if stopping:
                progress_report.close()
                if main_process:
                    print(f"interrupted: saved {ckpt_path} at step {step}; continue with --resume")
                signal.signal(signal.SIGINT, previous_handler)
                D.cleanup()
                return
    progress_report.close()
    signal.signal(signal.SIGINT, previous_handler)
    if main_process:
        final_report(model, tokenizer, val_set, args, config, budget.spent(), step)
    D.cleanup()


def quarters_passed(step, total_steps):
    """How many of the quarters T/4, T/2, 3T/4 of the planned steps T lie at or before `step`
    (none before there is a plan)."""
    return 0 if total_steps is None else sum(k * total_steps // 4 <= step for k in (1, 2, 3))


def write_history(path, history, evaluations):
    """history.json: one row per step (loss, contrastive, caption, lr) and the evaluations, for
    plotting a run without loading the checkpoint."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps({"history": history, "evaluations": evaluations}) + "\n")
    os.replace(temporary, path)


class Progress:
    """Training progress: a tqdm bar in a terminal; elsewhere (a file, a CI log), where a bar
    leaves thousands of carriage-return fragments, one plain line every `every` seconds and at
    the last step."""

    def __init__(self, total, initial, desc, enabled=True, every=10.0):
        self.tty, self.enabled, self.every, self.desc = sys.stderr.isatty(), enabled, every, desc
        self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True) if enabled and self.tty else None
        self.last_line = time.monotonic()

    def update(self, step, total, **figures):
        text = {k: f"{v:.3f}" if k != "lr" else f"{v:.2e}" for k, v in figures.items()}
        text["pairs_s"] = f"{figures['pairs_s']:.0f}"
        if self.bar is not None:
            self.bar.total = total
            self.bar.set_postfix(text, refresh=False)
            self.bar.update(1)
        elif self.enabled and (time.monotonic() - self.last_line >= self.every or step == total):
            self.last_line = time.monotonic()
            print(f"{self.desc}: step {step}/{total or '?'}  " + "  ".join(f"{k} {v}" for k, v in text.items()),
                  file=sys.stderr, flush=True)  # fmt: skip

    def write(self, line):
        if self.bar is not None:
            self.bar.write(line)
        elif self.enabled:
            print(line, file=sys.stderr, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def ignore_ctrl_c(worker_id):
    """Data-loader workers leave Ctrl-C to the main process, which saves and exits cleanly."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def final_report(model, tokenizer, val_set, args, config, train_seconds, step):
    """Evaluate on the test splits (tiny) or the validation set (real data); print a table and
    write report.json (and the zero-shot confusion matrix for the tiny set)."""
    model.eval()
    t0 = time.monotonic()
    if args.data == "tiny":
        report, (scores, labels) = tiny_report(model, tokenizer, limit=args.eval_images)
        plot_confusion(scores, labels, TINY_CLASSES, args.out / "confusion.png")
    elif val_set is not None:
        report = {"val": {**evaluate_retrieval(model, val_set), **evaluate_captions(model, val_set)[0]}}
    else:
        report = {}
    report["run"] = {"steps": step, "train_seconds": round(train_seconds, 1), "eval_seconds": round(time.monotonic() - t0, 1),
                     "parameters": sum(p.numel() for p in model.parameters()), "size": args.size}  # fmt: skip
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    what = ("whole test splits; zero-shot on `classes`; hard negatives on 500 test images" if args.data == "tiny"
            else f"{args.val_data}" if val_set is not None else "no evaluation set")  # fmt: skip
    print(f"\nfinal report ({what}):")
    print(f"{'':<24}" + "".join(f"{split:>13}" for split in report if split != "run"))
    rows = sorted({k for split, r in report.items() if split != "run" for k, v in r.items() if isinstance(v, float)})
    for key in rows:
        print(f"{key:<24}" + "".join(f"{r[key]:>13.3f}" if key in r else f"{'':>13}" for s, r in report.items() if s != "run"))
    for split in ("test", "test_comp"):
        for example in report.get(split, {}).get("examples", [])[:3]:
            print(f"[{split}] {example['generated']!r}  (reference: {example['reference']!r})")
    print(f"trained {step} steps in {train_seconds:.0f} s, evaluated in {report['run']['eval_seconds']:.0f} s -> {args.out}/")


if __name__ == "__main__":
    main()
