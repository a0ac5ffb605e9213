"""The training run of train.py: set-up, data, model and its wrapping, the loop, evaluations,
checkpoints and the final report. train.py checks the arguments (coca_min/cli.py) and calls
`train(args)`; this file is that function and its helpers.

The step itself, the paper's objective over the global batch with AdamW, is `step.py`. Left
out: the paper's Adafactor with linear decay over 500k steps at batch 65,536 (§4.1), and the
one epoch at 576 px that ends its pretraining.

The file reads from top to bottom: `train`, then the set-up, the model and its wrapping (FSDP2
or DDP, compile, activation checkpointing), the loop, the evaluations and saves. The data sets,
the tokenizer and the stream of batches are inputs.py's; what a run prints and writes besides
its checkpoint, report.py's; saving and resuming, state.py's. Outputs in --out: ckpt.pt (atomic;
with `--checkpoint sharded` also ckpt.shards/, each rank's shards of the weights and AdamW's
state), history.json (losses and lr per step, evaluations), args.json (the arguments, which a
--resume keeps), report.json, losses.png, lr.png, metrics.png (and confusion.png on the tiny set).
"""

import gc
import os
import random
import signal
import sys
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch.nn.parallel import DistributedDataParallel

from coca_min.config import PRESETS
from coca_min.data.tokenizer import Tokenizer
from coca_min.model import CoCa
from coca_min.schedule import Schedule, TimeBudget

from . import distributed as D
from .inputs import build_data, training_batches
from .plots import plot_training
from .report import Progress, evaluate_during_training, final_report
from .sharding import (
    gathered_weights,
    is_sharded,
    materialise,
    set_activation_checkpointing,
    shard_model,
)
from .state import RunState, plan, read_resumed, resume, save
from .step import embeddings, make_optimizer, read_logs, train_step


@dataclass
class Setup:
    """Where and how this process trains."""

    device: torch.device
    rank: int
    world: int
    local_rank: int
    autocast: object  # a torch.autocast context (bf16), or nullcontext (float32)
    compile: bool
    workers: int  # data-loader processes
    micro_batch: int  # pairs per forward pass of this process

    @property
    def main(self):
        return self.rank == 0

    @property
    def on_gpu(self):
        return self.device.type == "cuda"


@dataclass
class Run:
    """One training run in this process: what the steps, evaluations and saves share."""

    args: object
    setup: Setup
    config: object
    tokenizer: Tokenizer
    val_set: object
    model: CoCa  # plain, or sharded in place (--fsdp)
    wrapped: torch.nn.Module  # what the steps call: the model, compiled and/or in DDP
    optimizer: torch.optim.Optimizer
    batches: object  # loader.EpochBatches or loader.ShardBatches
    state: RunState
    schedule: Schedule
    budget: TimeBudget
    ctrl_c: "CtrlC"
    progress: "Progress" = None
    last_saved: int = 0  # the step of the last checkpoint
    embed: object = embeddings  # --accum's first pass (step.forward_backward), compiled with --compile
    unread: list = field(default_factory=list)  # the steps whose scalars are still on the device (step.read_logs)

    @property
    def ckpt_path(self):
        return self.args.out / "ckpt.pt"


def train(args):
    """Train as the checked arguments of train.py say (see its --help)."""
    run = start(args)
    with run.ctrl_c:  # first Ctrl-C: finish the step, save, exit; a second: at once
        args.out.mkdir(parents=True, exist_ok=True)
        run.last_saved = run.state.step if args.resume else save(run, "start")
        training_loop(run)
    weights = gathered_weights(run.model)  # under FSDP every rank gives its shards, rank 0 evaluates
    if run.setup.main:
        final_report(evaluation_model(run, weights), run.tokenizer, run.val_set, args, run.config, run.budget.spent(),
                     run.state.step)  # fmt: skip
    leave(run)


def start(args) -> Run:
    """Everything a run needs before its first step: the device and processes, the data and the
    tokenizer, the model and its optimizer (a resumed run's state loaded into them), the
    schedule, the stream of batches. (bench.py --trainer-step times the steps of such a run.)"""
    setup = set_up(args)
    saved = read_resumed(args.out / "ckpt.pt", PRESETS[args.size]) if args.resume else None  # before the data
    saved_tokenizer = Tokenizer.from_state(saved["tokenizer"]) if saved and saved.get("tokenizer") else None
    train_set, tokenizer, val_set, config = build_data(args, PRESETS[args.size], saved_tokenizer)
    model, optimizer = build_model(args, setup, config)
    if saved is not None:
        state = resume(saved, args, setup, model, optimizer, config)
        del saved  # the checkpoint's memory-mapped tensors: copied where they belong
    else:
        state = RunState(total_steps=args.steps, budgeted=args.steps is None)
    schedule, budget = plan(args, state)
    run = Run(args, setup, config, tokenizer, val_set, model, wrap_for_training(model, setup), optimizer,
              training_batches(train_set, args, setup, state), state, schedule, budget, CtrlC())  # fmt: skip
    if setup.compile and not is_sharded(model):  # --accum's first pass, the encoders without gradient
        run.embed = torch.compile(embeddings)
    return run


def leave(run):
    """Leave the process group, every rank together. DDP's reducer holds the group: freed after
    `destroy_process_group`, its gloo group's destructor waited forever for a thread (seen once
    in CI, rank 1 of 2, after rank 0 had exited)."""
    run.wrapped = None
    gc.collect()  # DDP and its reducer, which may sit in reference cycles
    D.barrier()  # the other ranks wait while rank 0 writes the final report
    D.leave_process_group()


def set_up(args) -> Setup:
    """The device, the process group (under torchrun), threads, precision and seeds."""
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit(f"error: --device {args.device}, but torch sees no CUDA GPU (torch {torch.__version__}); use --device cpu")
    rank, world, local_rank = D.join_process_group(args.device)
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
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    return Setup(device, rank, world, local_rank, autocast, compile=on_gpu if args.compile is None else args.compile,
                 workers=(4 if on_gpu else 0) if args.workers is None else args.workers,
                 micro_batch=args.batch_size // (world * args.accum))  # fmt: skip  (train.py checked that it divides)


def build_model(args, setup, config):
    """(CoCa on its device, AdamW): sharded with FSDP2 (--fsdp) and recomputing its blocks'
    activations (--activation-checkpointing) as asked; the optimizer is made after sharding, on
    the shards. Sharded, the model is built on the meta device, sharded (its blocks compiled
    first with --compile, their parameters gathered in bf16 in a bf16 run), and then each rank's
    shards are allocated and initialised: no process ever holds the whole model."""
    if not args.fsdp:
        model = CoCa(config).to(setup.device)
        set_activation_checkpointing(model, args.activation_checkpointing)
        return model, make_optimizer(model, args, fused=setup.on_gpu)
    with torch.device("meta"):
        model = CoCa(config)
    bf16 = isinstance(setup.autocast, torch.autocast) and setup.autocast.fast_dtype == torch.bfloat16
    shard_model(model, args.activation_checkpointing, compile=setup.compile, param_dtype=torch.bfloat16 if bf16 else None)
    materialise(model, setup.device)
    return model, make_optimizer(model, args, fused=setup.on_gpu)


def wrap_for_training(model, setup):
    """What the steps call. With several processes, DDP (unless FSDP2 shards the model: it
    averages the gradients itself), its gradients views of the all-reduce buckets (no copy).
    --compile compiles the DDP-wrapped model, not the model inside DDP: dynamo's DDPOptimizer
    then splits the graph at the buckets, so each bucket's all-reduce overlaps the rest of the
    backward pass (compiled inside DDP, the backward is one graph, and every all-reduce waits
    for all of it). A sharded model's blocks were compiled by `shard_model`."""
    if is_sharded(model):
        return model
    wrapped = model
    if setup.world > 1:
        wrapped = DistributedDataParallel(model, device_ids=[setup.local_rank] if setup.on_gpu else None,
                                          gradient_as_bucket_view=True)  # fmt: skip
    return torch.compile(wrapped) if setup.compile else wrapped


def training_loop(run):
    """Steps until the plan is done; evaluations and saves at every --eval-every steps (or the
    plan's quarters), at the last step, and after a Ctrl-C, which then ends the run."""
    run.progress = Progress(run.state.total_steps, run.state.step, f"training CoCa-{run.args.size}", enabled=run.setup.main)
    run.budget.not_training()  # the clock starts now, after loading and the first save
    run.wrapped.train()
    while run.state.total_steps is None or run.state.step < run.state.total_steps:
        stopping = train_step(run)  # a Ctrl-C on any rank: every rank stops at this step
        if stopping or evaluation_due(run):
            evaluate_and_save(run, stopping)
        if stopping:
            run.progress.close()
            if run.setup.main:
                print(f"interrupted: saved {run.ckpt_path} at step {run.state.step}; continue with --resume")
            leave(run)
            sys.exit(130)  # 128 + SIGINT: `train.py && next` does not go on after a Ctrl-C
    run.progress.close()


def evaluation_due(run) -> bool:
    """Every --eval-every steps, or at each quarter of the plan (once each: a re-plan moves the
    quarters still ahead), and at the last step."""
    args, step, total = run.args, run.state.step, run.state.total_steps
    quarter_due = not args.eval_every and quarters_passed(step, total) > run.state.quarters_done
    return step == total or quarter_due or bool(args.eval_every and step % args.eval_every == 0)


def evaluate_and_save(run, stopping):
    """Evaluate on the validation subset (rank 0; not after a Ctrl-C), save, plot. Every rank
    calls it; the time it takes is not training time."""
    read_logs(run)  # the steps' losses, checked (finite) before anything is saved
    weights = gathered_weights(run.model)  # FSDP: whole weights on rank 0, to evaluate and save
    if run.setup.main and run.val_set is not None and not stopping:
        model = evaluation_model(run, weights)
        figures = evaluate_during_training(model, run.tokenizer, run.val_set, run.args, run.config)
        run.state.evaluations.append({"step": run.state.step, **figures})
        run.progress.write(f"step {run.state.step} (validation subset): " + ", ".join(f"{k} {v:.3f}" for k, v in figures.items()))
    run.state.quarters_done = max(run.state.quarters_done, quarters_passed(run.state.step, run.state.total_steps))
    run.last_saved = save(run, "interrupted" if stopping else "periodic", weights)
    if run.setup.main:
        plot_training(run.state.history, run.state.evaluations, run.args.out)
    D.barrier()
    run.budget.not_training()


def evaluation_model(run, weights):
    """The model rank 0 evaluates: the model itself, or a whole copy of a sharded one (whose
    forward pass needs every rank)."""
    if weights is None:
        return run.model
    copy = CoCa(run.config).to(run.setup.device)
    copy.load_state_dict(weights)
    return copy


class CtrlC:
    """While in use: the first Ctrl-C sets `requested` (the loop finishes its step, saves and
    exits); a second raises KeyboardInterrupt at once."""

    requested = False

    def _on_signal(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        self.previous = signal.signal(signal.SIGINT, self._on_signal)
        return self

    def __exit__(self, *exception):
        signal.signal(signal.SIGINT, self.previous)


def quarters_passed(step, total_steps):
    """How many of the quarters T/4, T/2, 3T/4 of the planned steps T lie at or before `step`
    (none before there is a plan)."""
    return 0 if total_steps is None else sum(k * total_steps // 4 <= step for k in (1, 2, 3))
