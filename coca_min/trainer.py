"""The training loop of train.py: data, model, optimizer, schedule, the steps, evaluations,
checkpoints and the final report. train.py checks the arguments (coca_min/cli.py) and calls
`train(args)`; this file is that function and its helpers.

Trains with the paper's objective (eq. 3, §3.2): λ_con · L_con + λ_cap · L_cap, with all pairs of a step
as contrastive negatives across processes (distributed.py) and micro-batches. The optimizer is
the usual one for small runs, AdamW with weight decay on matrices only, warm-up then cosine
decay (schedule.py). Left out: the paper's Adafactor with linear decay over 500k steps at batch
65,536 (§4.1), and the one epoch at 576 px that ends its pretraining.

One optimizer step uses `--batch-size` pairs in all, split over processes and `--accum`
micro-batches. Outputs in --out: ckpt.pt (atomic), history.json (losses and lr per step,
evaluations), args.json (the arguments, which a --resume keeps), report.json, losses.png,
lr.png, metrics.png (and confusion.png on the tiny set).
"""

import json
import math
import os
import random
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import replace

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from . import PRESETS, CoCa
from . import distributed as D
from .checkpoint import config_of, read_checkpoint, save_checkpoint
from .cli import RUN_SETTINGS
from .data import TinyShapes, collate
from .evaluate import TINY_CLASSES, evaluate_captions, evaluate_retrieval, evaluate_tiny_zero_shot, plot_confusion, tiny_report
from .image_files import CaptionManifest, CocoCaptions
from .losses import coca_loss
from .plots import plot_training
from .schedule import FakeClock, Schedule, TimeBudget
from .tokenizer import Tokenizer


def build_data(args, config):
    """(train set, tokenizer, validation set or None, config with the tokenizer's vocab size).
    A file or row that cannot be used ends the run with one line (train.py checked the paths)."""
    try:
        if args.data == "tiny":
            train = TinyShapes("train", context_length=config.context_length, train=True, seed=args.seed)
            val = TinyShapes("val", train.tokenizer, config.context_length, limit=args.eval_images or 256)
            return train, train.tokenizer, val, replace(config, vocab_size=train.tokenizer.vocab_size)
        tokenizer = Tokenizer.load(args.tokenizer) if args.tokenizer else None  # None: trained below
        sets = {}
        for name, path in [("train", args.data), ("val", args.val_data)]:  # each file in its own format
            kind = CocoCaptions if path and path.lower().endswith(".json") else CaptionManifest
            sets[name] = kind(path, args.images, tokenizer, config.image_size, config.context_length,
                              train=name == "train", strict=args.strict, seed=args.seed) if path else None  # fmt: skip
    except (OSError, ValueError) as error:
        sys.exit(f"error: {error}")
    if tokenizer is None:  # every rank trains the same tokenizer from the same captions: no communication
        tokenizer = Tokenizer.train([c for caps in sets["train"].captions for c in caps], args.vocab_size)
        for dataset in filter(None, sets.values()):
            dataset.tokenizer = tokenizer  # read once (and their images checked once), before it existed
    return sets["train"], tokenizer, sets["val"], replace(config, vocab_size=tokenizer.vocab_size)


def make_optimizer(model, args, fused=False):
    """AdamW with weight decay on matrices only (not biases, norms, the scale), and the image
    encoder's own learning rate (`--image-lr-scale` × the schedule's)."""
    groups = []
    for name_is_image, scale in [(True, args.image_lr_scale), (False, 1.0)]:
        params = [p for n, p in model.named_parameters() if n.startswith("image_encoder.") == name_is_image]
        groups += [{"params": [p for p in params if p.dim() >= 2], "weight_decay": args.weight_decay, "lr_scale": scale},
                   {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0, "lr_scale": scale}]  # fmt: skip
    return torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.98), fused=fused)


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
    """Quick validation figures: loss, retrieval R@1, and on the tiny set, on small subsets,
    zero-shot top-1 (also on the held-out colour-shape pairs alone, and colour and shape
    accuracy on their own) and the greedy captions' object F1 on `val` and on `test_comp`
    (images with held-out pairs): what a run learns first, and what it does not."""
    model.eval()
    device = next(model.parameters()).device
    images, tokens = collate([val[i] for i in range(min(len(val), 256))])
    outputs = model(images.to(device), tokens.to(device))
    losses = coca_loss(outputs, tokens.to(device), config.pad_id, args.caption_weight, args.contrastive_weight)
    out = {"val_loss": losses["loss"].item()}
    out.update(evaluate_retrieval(model, val, ks=(1,)))
    if args.data == "tiny":
        classes = TinyShapes("classes", tokenizer, config.context_length, limit=min(args.eval_images or 400, 1000))
        zero_shot = evaluate_tiny_zero_shot(model, tokenizer, classes)[0]
        out["zero_shot_top1"] = zero_shot["top1"]
        out["zero_shot_top1_held_out"] = zero_shot["top1_held_out"]
        out["zero_shot_colour"] = zero_shot["colour_accuracy"]
        out["zero_shot_shape"] = zero_shot["shape_accuracy"]
        subset = TinyShapes("val", tokenizer, config.context_length, limit=min(len(val), 128))
        out["caption_object_F1"] = evaluate_captions(model, subset)[0]["object_F1"]
        held_out = TinyShapes("test_comp", tokenizer, config.context_length, limit=min(args.eval_images or 128, 128))
        out["caption_object_F1_comp"] = evaluate_captions(model, held_out)[0]["object_F1"]
    model.train()
    return out


def train(args):
    """Train as the checked arguments of train.py say (see its --help)."""
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit(f"error: --device {args.device}, but torch sees no CUDA GPU (torch {torch.__version__}); use --device cpu")
    rank, world, local_rank = D.setup(args.device)
    main_process = rank == 0
    device = torch.device(f"cuda:{local_rank}" if args.device == "cuda" and world > 1 else args.device)
    on_gpu = device.type == "cuda"
    if on_gpu:
        if device.index is not None and device.index >= torch.cuda.device_count():
            sys.exit(f"error: --device {device}, but torch sees {torch.cuda.device_count()} GPU(s)")
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    else:
        torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1))))
    dtype = {"auto": torch.bfloat16 if on_gpu else torch.float32, "fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
    compile_model = on_gpu if args.compile is None else args.compile
    workers = (4 if on_gpu else 0) if args.workers is None else args.workers
    micro_batch = args.batch_size // (world * args.accum)  # train.py checked that it divides
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    ckpt_path = args.out / "ckpt.pt"
    saved = read_resumed(ckpt_path, device, PRESETS[args.size]) if args.resume else None  # before the data

    train_set, tokenizer, val_set, config = build_data(args, PRESETS[args.size])
    model = CoCa(config).to(device)
    optimizer = make_optimizer(model, args, fused=on_gpu)
    step, total_steps, history, evaluations = 0, args.steps, [], []
    run = {"budgeted": args.steps is None, "train_seconds": 0.0, "lr_progress": 0.0, "quarters_done": 0, "warmup": None}
    if saved is not None:
        refuse_another_config(saved, config, ckpt_path)  # now with the tokenizer's vocabulary size
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        step, history, evaluations = saved["step"], saved["history"], saved["evaluations"]
        total_steps = args.steps or saved["total_steps"]  # a time budget re-plans it below
        run.update({key: saved[key] for key in run if key in saved})  # budget, schedule, evaluations
        run["budgeted"] = run["budgeted"] and args.steps is None  # --steps N ends a time budget
        torch.set_rng_state(saved["rng"]["torch"].cpu())
        random.setstate(saved["rng"]["python"])
        run_args = saved.get("args", {})  # as strings; the settings not given again are these (train.py)
        changed = [k for k in RUN_SETTINGS if k in args.given and k in run_args and str(getattr(args, k)) != run_args[k]]
        if main_process and changed:
            said = ", ".join(f"--{k.replace('_', '-')} {getattr(args, k)} (the run used {run_args[k]})" for k in changed)
            print(f"note: resuming with {said}: the run goes on, but not as it would have")
        if not run["budgeted"] and args.steps is None and "minutes" in args.given:
            sys.exit(f"error: --minutes: {ckpt_path} is a run of a fixed number of steps ({total_steps}); "
                     "give --steps N to train it on to N")  # fmt: skip
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

    settings = {k: v for k, v in vars(args).items() if k != "given"}

    def save(reason):
        if main_process:
            rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
            save_checkpoint(ckpt_path, model, tokenizer, optimizer=optimizer.state_dict(), step=step,
                            total_steps=total_steps, history=history, evaluations=evaluations, rng=rng,
                            budgeted=run["budgeted"], train_seconds=budget.spent(), lr_progress=schedule.progress,
                            warmup=warmup, quarters_done=quarters_done, args={k: str(v) for k, v in settings.items()},
                            reason=reason)  # fmt: skip
            write_json(args.out / "history.json", {"history": history, "evaluations": evaluations})
            write_json(args.out / "args.json", settings)  # what a --resume continues with (train.py)
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
            try:
                return next(batches)
            except StopIteration:
                epoch += 1
                batches = start_epoch(epoch)
                return next(batches)
        except (OSError, ValueError) as error:  # --strict: an image that broke after the check
            progress_report.close()
            last_line = str(error).strip().splitlines()[-1]  # a loader worker's error ends with the original one,
            last_line = last_line.removeprefix(f"{type(error).__name__}: ")  # as "OSError: could not decode …"
            sys.exit(f"stopping: {last_line}. The last good checkpoint is {ckpt_path} (step {last_saved}).")

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
                sys.exit(130)  # 128 + SIGINT: `train.py && next` does not go on after a Ctrl-C
    progress_report.close()
    signal.signal(signal.SIGINT, previous_handler)
    if main_process:
        final_report(model, tokenizer, val_set, args, config, budget.spent(), step)
    D.cleanup()


def read_resumed(path, device, preset):
    """The checkpoint to resume, read before the data is: a wrong file, one not written by
    train.py or one of another model size ends the run in seconds, with one line."""
    try:
        saved = read_checkpoint(path, device)
    except (OSError, ValueError) as error:
        sys.exit(f"error: --resume: {error}")
    missing = [key for key in ("optimizer", "step", "total_steps", "history", "evaluations", "rng") if key not in saved]
    if missing:
        sys.exit(f"error: --resume: {path} holds a model but not a training run (no {', '.join(missing)})")
    refuse_another_config(saved, replace(preset, vocab_size=config_of(saved, path).vocab_size), path)
    return saved


def refuse_another_config(saved, config, path):
    differences = config_of(saved, path).differences(config)
    if differences:
        changes = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in differences.items())
        sys.exit(f"error: {path} was made with a different model config ({changes})")


def quarters_passed(step, total_steps):
    """How many of the quarters T/4, T/2, 3T/4 of the planned steps T lie at or before `step`
    (none before there is a plan)."""
    return 0 if total_steps is None else sum(k * total_steps // 4 <= step for k in (1, 2, 3))


def write_json(path, data):
    """Written to a temporary file, then renamed: never half a file. history.json holds one row
    per step (loss, contrastive, caption, lr) and the evaluations, to plot a run without loading
    the checkpoint; args.json the run's arguments."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, default=str) + "\n")  # default: Path -> str
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
    n = args.eval_images
    what = ((f"the first {n} images of each split (--eval-images)" if n else
             "whole test splits; zero-shot on `classes`; hard negatives on 500 test images") if args.data == "tiny"
            else f"{args.val_data}" if val_set is not None else None)  # fmt: skip
    if what is None:
        print("\nno final report: there is no evaluation set (give --val-data FILE)")
    else:
        print(f"\nfinal report ({what}):")
        print(f"{'':<24}" + "".join(f"{split:>13}" for split in report if split != "run"))
    rows = sorted({k for split, r in report.items() if split != "run" for k, v in r.items() if isinstance(v, float)})
    for key in rows:
        print(f"{key:<24}" + "".join(f"{r[key]:>13.3f}" if key in r else f"{'':>13}" for s, r in report.items() if s != "run"))
    for split in ("test", "test_comp"):
        for example in report.get(split, {}).get("examples", [])[:3]:
            print(f"[{split}] {example['generated']!r}  (reference: {example['reference']!r})")
    print(f"trained {step} steps in {train_seconds:.0f} s, evaluated in {report['run']['eval_seconds']:.0f} s -> {args.out}/")

