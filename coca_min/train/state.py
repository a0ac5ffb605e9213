"""What a checkpoint keeps of a training run, and how a run is saved and resumed.

Not a part of the paper. `save` writes OUT/ckpt.pt atomically: the whole weights (gathered
from the shards under FSDP, so that it loads on one device), the optimizer state (whole, or
with `--checkpoint sharded` each rank's shards in OUT/ckpt.shards/step-N/, written with
torch.distributed.checkpoint), the random state and the `RunState`; and history.json and
args.json beside it. `resume` loads them all into a run being set up (trainer.py), and
`read_resumed` reads the checkpoint first, so that a wrong one ends the run in seconds. `plan`
makes a run's learning-rate schedule and time budget, a resumed run's from its state.
"""

import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch

from coca_min.checkpoint import config_of, read_checkpoint, save_checkpoint
from coca_min.schedule import FakeClock, Schedule, TimeBudget

from . import distributed as D
from .report import write_json
from .sharding import gathered_optimizer_state, gathered_weights, load_gathered, load_sharded, save_sharded

SHARDED = "ckpt.shards"  # in --out: the folders of sharded checkpoints (--checkpoint sharded)


@dataclass
class RunState:
    """What a checkpoint keeps of a run, besides weights, optimizer state and random state."""

    step: int = 0
    total_steps: int | None = None  # None: a time budget, not planned yet
    history: list = field(default_factory=list)  # one row per step: loss, contrastive, caption, lr
    evaluations: list = field(default_factory=list)
    budgeted: bool = True  # trained for --minutes, not --steps
    train_seconds: float = 0.0
    lr_progress: float = 0.0  # the cosine's progress (schedule.py)
    warmup: int | None = None
    quarters_done: int = 0  # quarters of the plan evaluated at
    data_positions: list | None = None  # tar shards: each rank's position in its epoch


def save(run, reason, weights=None) -> int:
    """Write OUT/ckpt.pt (atomic; the weights whole, loadable on one device), the sharded state
    (--checkpoint sharded: every rank writes its shards), history.json and args.json. Every rank
    calls it. -> the step saved."""
    args, state = run.args, run.state
    weights = gathered_weights(run.model) if weights is None else weights
    shards, optimizer_state = None, None
    if args.checkpoint == "sharded":  # each rank its shards of the weights and of AdamW's state
        shards = f"{SHARDED}/step-{state.step:08d}"
        save_sharded(args.out / shards, run.model, run.optimizer)
    else:  # the optimizer state whole, on rank 0
        optimizer_state = gathered_optimizer_state(run.model, run.optimizer)
    position = run.batches.position()  # None for EpochBatches: the step says where they are
    if position is not None:  # tar shards: every rank's own place in its epoch
        state.data_positions = D.all_gather_objects(position)
    state.train_seconds, state.lr_progress = run.budget.spent(), run.schedule.progress
    if run.setup.main:
        settings = {k: v for k, v in vars(args).items() if k not in ("given", "changed")}
        rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
        save_checkpoint(run.ckpt_path, run.model, run.tokenizer, weights=weights, optimizer=optimizer_state,
                        shards=shards, rng=rng, args={k: str(v) for k, v in settings.items()}, reason=reason,
                        **asdict(state))  # fmt: skip
        for old in (args.out / SHARDED).glob("step-*"):  # the checkpoint no longer names them
            if shards is None or old.name != Path(shards).name:
                shutil.rmtree(old, ignore_errors=True)
        if shards is None and (args.out / SHARDED).is_dir() and not any((args.out / SHARDED).iterdir()):
            (args.out / SHARDED).rmdir()
        write_json(args.out / "history.json", {"history": state.history, "evaluations": state.evaluations})
        write_json(args.out / "args.json", settings)  # what a --resume continues with (train.py)
    return state.step


def resume(saved, args, setup, model, optimizer, config) -> RunState:
    """Load a checkpoint's weights, optimizer state (gathered or sharded) and random state into
    this run; its RunState. Says what changed and what the resumed run will do."""
    path = args.out / "ckpt.pt"
    refuse_another_config(saved, config, path)  # now with the tokenizer's vocabulary size
    if saved.get("shards"):
        if not (args.out / saved["shards"] / ".metadata").is_file():
            sys.exit(f"error: --resume: {path} keeps its optimizer state in {args.out / saved['shards']}, which is not "
                     "there (with several machines, --out must be a folder they share)")  # fmt: skip
        load_sharded(args.out / saved["shards"], model, optimizer)
    else:
        load_gathered(model, optimizer, saved["model"], saved["optimizer"])
    state = RunState(**{f.name: saved[f.name] for f in fields(RunState) if f.name in saved})
    state.total_steps = args.steps or saved["total_steps"]  # a time budget re-plans it
    state.budgeted = saved.get("budgeted", True) and args.steps is None  # --steps N ends a time budget
    torch.set_rng_state(saved["rng"]["torch"].cpu())
    random.setstate(saved["rng"]["python"])
    changed = getattr(args, "changed", {})  # the run's settings given again with another value (train.py)
    if setup.main and changed:
        said = ", ".join(f"--{k.replace('_', '-')} {getattr(args, k)} (the run used {was})" for k, was in changed.items())
        print(f"note: resuming with {said}: the run goes on, but not as it would have")
    if not state.budgeted and args.steps is None and "minutes" in args.given:
        sys.exit(f"error: --minutes: {path} is a run of a fixed number of steps ({state.total_steps}); "
                 "give --steps N to train it on to N")  # fmt: skip
    if setup.main and state.total_steps is not None and state.step >= state.total_steps:
        print(f"{path} is a finished run ({state.step} steps); evaluating it again (--steps N trains on to N)")
    elif setup.main:
        print(f"resumed {path} at step {state.step} of {state.total_steps or 'a time budget'}")
    return state


def read_resumed(path, preset):
    """The checkpoint to resume, read before the data is: a wrong file, one not written by
    train.py or one of another model size ends the run in seconds, with one line. Its tensors
    stay memory-mapped on the CPU (`read_checkpoint`): `resume` copies to each device what it
    holds, so no GPU ever holds the whole run of a sharded one."""
    try:
        saved = read_checkpoint(path)
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


def plan(args, state):
    """(Schedule, TimeBudget). lr: warm-up over a fixed number of steps, then a cosine over the
    steps planned (coca_min/schedule.py); with a time budget the steps are planned from this session's
    own timed steps."""
    default_warmup = round(0.05 * args.steps) if args.steps else 30  # 5% of the steps; 30 with a time budget
    state.warmup = next(w for w in [args.warmup, state.warmup, default_warmup] if w is not None)  # a resume keeps its own
    schedule = Schedule(args.lr, state.warmup, args.min_lr_ratio, progress=state.lr_progress)
    clock = FakeClock(args.fake_step_seconds) if args.fake_step_seconds else time.monotonic
    budget = TimeBudget(args.minutes * 60 if state.budgeted else None, clock, spent=state.train_seconds)
    return schedule, budget
