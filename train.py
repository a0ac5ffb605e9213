"""Train CoCa, from a laptop CPU to torchrun on many GPUs.

    python train.py --size tiny                                   # the tiny set, a few minutes on a CPU
    python train.py --size small --data pairs.jsonl --images imgs/ --val-data val.jsonl
    torchrun --standalone --nproc-per-node=8 train.py --size base --data coco.json --images train2017/
    torchrun --nproc-per-node=8 train.py --size large --data shards/ --tokenizer tok.json --fsdp --activation-checkpointing
    python train.py --size tiny --resume                          # continue out/tiny exactly

This file reads and checks the arguments and paths, in milliseconds and before torch is
imported, so that a mistake is one line at once, not a traceback after the data has loaded.
The training loop is `coca_min/train/trainer.py`.
"""

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

from coca_min import PRESETS
from coca_min.cli import (
    RUN_SETTINGS,
    HelpWithDefaults,
    Parser,
    device_name,
    file_problem,
    folder_problem,
    given_options,
    output_problem,
    ranged,
)
from coca_min.data.synthetic import shapes

MANIFESTS = (".jsonl", ".csv", ".json")  # a manifest, or COCO caption JSON
MIN_VOCAB = 3 + 256  # the tokenizer's specials and bytes (tokenizer.py)
DEFAULT_MINUTES = 3.75

count = ranged(int, minimum=1)  # 1, 2, …
non_negative_int = ranged(int, minimum=0)
positive = ranged(float, above=0)
non_negative = ranged(float, minimum=0)


def parse_args(argv=None):
    p = Parser(prog="train.py", description=__doc__.split("\n")[0], formatter_class=HelpWithDefaults)
    p.add_argument("--size", default="tiny", choices=list(PRESETS), help="model preset")
    p.add_argument("--data", default="tiny", help="'tiny', a manifest (.jsonl/.csv), COCO caption .json, or a folder of "
                   ".tar shards (python -m coca_min.data.shards)")
    p.add_argument("--images", help="image folder of --data (and of --val-data)")
    p.add_argument("--val-data", help="manifest or COCO json to evaluate on (real data)")
    p.add_argument("--tokenizer", help="tokenizer .json (real data; default: train one on the captions)")
    p.add_argument("--strict", action="store_true", help="real data: stop at a bad row or image instead of skipping it")
    p.add_argument("--vocab-size", type=ranged(int, minimum=MIN_VOCAB), help="size of a tokenizer trained here (default: 32000)")
    p.add_argument("--recombine", action=argparse.BooleanOptionalAction, default=True,
                   help="tiny set: each epoch, move each training image's objects to new cells and give them new "
                   "colours of their seen pairs (never a held-out one), captions to match")  # fmt: skip
    p.add_argument("--batch-size", type=count, default=64, help="pairs per optimizer step, over all processes")
    p.add_argument("--accum", type=count, default=1, help="gradient accumulation steps")
    p.add_argument("--lr", type=positive, default=2e-3, help="peak learning rate (AdamW)")
    p.add_argument("--image-lr-scale", type=non_negative, default=1.0, help="the image encoder's lr / --lr")
    p.add_argument("--min-lr-ratio", type=ranged(float, 0, 1), default=0.05, help="final lr / peak lr (cosine decay)")
    p.add_argument("--warmup", type=non_negative_int, help="warm-up steps (default: 5%% of --steps; 30 with a time budget)")
    p.add_argument("--weight-decay", type=non_negative, default=0.05, help="AdamW weight decay (matrices only)")
    p.add_argument("--grad-clip", type=non_negative, default=1.0, help="max gradient norm (0: off)")
    p.add_argument("--caption-weight", type=non_negative, default=2.0, help="λ_cap")
    p.add_argument("--contrastive-weight", type=non_negative, default=1.0, help="λ_con")
    p.add_argument("--steps", type=count, help="optimizer steps (default: as many as --minutes allows)")
    p.add_argument("--minutes", type=positive, help=f"training time budget instead of --steps (default: {DEFAULT_MINUTES}; "
                   "evaluation comes on top)")  # fmt: skip
    p.add_argument("--eval-every", type=non_negative_int, default=0,
                   help="evaluate and save every N steps (0: at the quarters of the planned steps)")
    p.add_argument("--eval-images", type=count, help="evaluate on at most N images per split (quick checks)")
    p.add_argument("--out", help="output folder (default: out/SIZE)")
    p.add_argument("--resume", nargs="?", const="yes", choices=["yes", "auto"],
                   help="continue from OUT/ckpt.pt; `--resume auto`: if there is one, else start (torchrun --max-restarts)")
    p.add_argument("--overwrite", action="store_true", help="start again in an --out that holds a run")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the model, data order and crops")
    p.add_argument("--device", type=device_name, default="auto", help="auto (cuda if present), cpu, cuda, cuda:1, …")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"], help="auto: bf16 autocast on GPU, fp32 on CPU")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="torch.compile (default: on GPU only)")
    p.add_argument("--workers", type=non_negative_int, help="data loader processes (default: 0 on CPU, 4 on GPU)")
    p.add_argument("--fsdp", action=argparse.BooleanOptionalAction, default=False, help="shard weights, gradients and AdamW state over the processes "
                   "(FSDP2, one unit per transformer block; under torchrun)")
    p.add_argument("--activation-checkpointing", action=argparse.BooleanOptionalAction, default=False,
                   help="recompute each block's activations in the backward pass: less memory, about 1/3 more compute")
    p.add_argument("--checkpoint", choices=["gathered", "sharded"],
                   help="how to save the optimizer state: whole in ckpt.pt, or each process its shards "
                   "(default: sharded with --fsdp)")
    p.add_argument("--threads", type=count, help="CPU threads per process (default: cores / processes)")
    p.add_argument("--log-every", type=count, default=10, help="read the losses from the device every N steps (a wait "
                   "for the GPU each time); a Ctrl-C under torchrun stops at the next of these")  # fmt: skip
    p.add_argument("--nan-at-step", type=count, help=argparse.SUPPRESS)  # tests: make that step's loss NaN
    p.add_argument("--fake-step-seconds", type=positive, help=argparse.SUPPRESS)  # tests: every step takes this long
    args = p.parse_args(argv)
    args.given = given_options(p, sys.argv[1:] if argv is None else argv)
    args.changed = {}  # a resumed run's settings given again with another value: {name: the run's}
    if args.out is not None and not args.out.strip():
        p.error("--out is empty: give a folder (default: out/SIZE)")
    args.out = Path(args.out or f"out/{args.size}")
    if args.resume:  # the run's own settings, unless given again (a change is noted when training starts)
        if problem := take_run_settings(args, args.out / "args.json"):
            p.error(problem)
    problem = check_arguments(args)
    if problem:
        p.error(problem)
    args.minutes = args.minutes or DEFAULT_MINUTES
    args.vocab_size = args.vocab_size or 32000
    args.checkpoint = args.checkpoint or ("sharded" if args.fsdp else "gathered")
    args.resume = args.resume == "yes" or (args.resume == "auto" and (args.out / "ckpt.pt").is_file())
    return args


def take_run_settings(args, path):
    """Set the settings of RUN_SETTINGS that were not given from the run's args.json (which
    train/state.py writes at each save), and note in args.changed those given with another
    value; what is wrong with the file, or None."""
    if not path.is_file():
        return None  # no run there (--resume then says so), or one older than args.json
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        return f"--resume: {path} is not the JSON that train.py writes ({error})"
    for name in RUN_SETTINGS:
        if name not in args.given and name in saved:
            setattr(args, name, saved[name])
        elif name in saved and str(getattr(args, name)) != str(saved[name]):  # noted when training starts
            args.changed[name] = saved[name]
    return None


def data_problem(args):
    """What is wrong with --data and the flags and paths that go with it: the tiny set, a folder
    of tar shards, or a manifest or COCO json with its image folder; None if nothing."""
    if args.data == "tiny":
        for name in ["images", "val_data", "tokenizer", "vocab_size", "strict"]:
            if name in args.given:
                flag = "--" + name.replace("_", "-")
                return f"{flag} is for --data FILE (a manifest or COCO json), but --data is 'tiny' (the default)"
        if PRESETS[args.size].image_size != shapes.IMAGE_SIZE:
            return (f"--size {args.size} takes {PRESETS[args.size].image_size} px images, but tiny_data's are "
                    f"{shapes.IMAGE_SIZE} px; give --data FILE --images DIR, or --size tiny")  # fmt: skip
    elif "recombine" in args.given:
        return "--recombine is for the tiny set (--data tiny): it redraws tiny_data's scenes"
    elif Path(args.data).is_dir():  # tar shards
        if not any(Path(args.data).glob("*.tar")):
            return f"--data: {args.data} is a folder without .tar shards (write them with python -m coca_min.data.shards)"
        if args.strict:
            return "--strict is for a manifest or COCO json; from shards, a sample that does not decode is skipped and counted"
        if args.val_data and not args.images:
            return "--val-data needs --images DIR, the folder its image paths are relative to"
        if args.val_data and (problem := file_problem(args.val_data, MANIFESTS)):
            return f"--val-data: {problem}"
        if args.tokenizer and (problem := file_problem(args.tokenizer, [".json"])):
            return f"--tokenizer: {problem}"
    else:
        if problem := file_problem(args.data, MANIFESTS):
            return f"--data: {problem} (or 'tiny', the shipped set, or a folder of .tar shards)"
        if not args.images:
            return "--data FILE needs --images DIR, the folder its image paths are relative to"
        for flag, path, check in [("--images", args.images, folder_problem),
                                  ("--val-data", args.val_data, lambda p: file_problem(p, MANIFESTS)),
                                  ("--tokenizer", args.tokenizer, lambda p: file_problem(p, [".json"]))]:  # fmt: skip
            if path and (problem := check(path)):
                return f"{flag}: {problem}"
    return None


def check_arguments(args):
    """What is wrong with these arguments together, or with the paths they name; None if nothing.
    Runs before torch is imported or any data is read."""
    if problem := data_problem(args):
        return problem
    if args.steps is not None and args.minutes is not None:
        return "give --steps (a number of steps) or --minutes (a time budget), not both"
    if args.steps is not None and args.warmup is not None and args.warmup >= args.steps:
        return f"--warmup {args.warmup} must be less than --steps {args.steps}"
    if args.caption_weight == 0 and args.contrastive_weight == 0:
        return "--caption-weight and --contrastive-weight are both 0: nothing would be learned"
    if args.batch_size < 2 and args.contrastive_weight > 0:
        return "--batch-size 1: the contrastive loss needs at least 2 pairs per step (the others are its negatives)"
    world = int(os.environ.get("WORLD_SIZE", 1)) if "RANK" in os.environ else 1  # torchrun sets both
    if args.fsdp and world < 2 and "fsdp" in args.given:
        return "--fsdp shards the model over processes: launch with torchrun --nproc-per-node N (N >= 2)"
    if args.fsdp and world < 2:  # a --resume of a sharded run
        return (f"{args.out} is a run with --fsdp: resume it under torchrun --nproc-per-node N (N >= 2), or give "
                "--no-fsdp to continue it in this one process")  # fmt: skip
    if args.batch_size % (world * args.accum):
        return (f"--batch-size {args.batch_size} must be divisible by processes ({world}) × --accum "
                f"({args.accum}), so that every micro-batch has the same size")  # fmt: skip
    out = args.out
    if problem := output_problem(out):
        return f"--out: {problem}"
    checkpoint = out / "ckpt.pt"
    if args.resume == "yes" and not checkpoint.is_file():
        return f"--resume, but there is no checkpoint at {checkpoint}"
    if not args.resume and checkpoint.exists() and not args.overwrite:
        return f"{out} holds a run ({checkpoint}): continue it with --resume, start again with --overwrite, or give another --out"
    if args.resume and args.overwrite:
        return "give --resume (continue the run in --out) or --overwrite (start again), not both"
    return None


def one_line_warning(message, category, filename, lineno, file=None, line=None):
    """Warnings as `warning: …` on one line, without the source line Python adds."""
    print(f"warning: {message}", file=sys.stderr if file is None else file, flush=True)


def main(argv=None):
    args = parse_args(argv)  # a wrong argument or path ends here, before torch is imported
    from coca_min.train.trainer import train

    try:
        train(args)
    except KeyboardInterrupt:  # a second Ctrl-C (or one while loading): stop now; a saved checkpoint is whole
        checkpoint = args.out / "ckpt.pt"
        saved = f"{checkpoint} is the last checkpoint saved" if checkpoint.is_file() else "nothing was saved"
        print(f"\nstopped at once by Ctrl-C; {saved}", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    warnings.showwarning = one_line_warning
    main()
