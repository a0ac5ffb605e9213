"""One optimizer step of CoCa training: the forward and backward passes over this process's
micro-batches, then gradient clipping, the learning rate, AdamW and the temperature's cap.

Trains with the paper's objective (eq. 3, `coca_min.model.losses.coca_loss`) over the step's
global batch: every image is contrasted with the texts of every micro-batch of every process,
and the captioning loss is the mean over all of the step's real tokens. Because DDP *averages*
gradients over W ranks, each rank's loss is scaled so that the average of the W local losses is
the single-process loss of the global batch (`coca_loss`'s `step_tokens` and `world_size`).

Gradient accumulation (`forward_backward`) keeps the negatives of the whole optimizer step: a
first pass computes the embeddings of every micro-batch without gradient, then each
micro-batch runs again with gradient, its own embeddings in place of their cached rows
(open_clip's `--accum-freq`). Summed over the micro-batches, these gradients are the full
batch's gradient.

The optimizer is the usual one for small runs, AdamW with weight decay on matrices only (the
paper's Adafactor is left out, see trainer.py).
"""

import math
import sys
import time
from contextlib import nullcontext

import torch

from coca_min.checkpoint import unwrap
from coca_min.model.losses import coca_loss

from . import distributed as D


def make_optimizer(model, args, fused=False):
    """AdamW with weight decay on matrices only (not biases, norms, the scale), and the image
    encoder's own learning rate (`--image-lr-scale` × the schedule's)."""
    groups = []
    for name_is_image, scale in [(True, args.image_lr_scale), (False, 1.0)]:
        params = [p for n, p in model.named_parameters() if n.startswith("image_encoder.") == name_is_image]
        groups += [{"params": [p for p in params if p.dim() >= 2], "weight_decay": args.weight_decay, "lr_scale": scale},
                   {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0, "lr_scale": scale}]  # fmt: skip
    return torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.98), fused=fused)


def train_step(run) -> bool:
    """One optimizer step: forward and backward over this rank's micro-batches (the loss of the
    global batch, `forward_backward`), gradient clipping, the schedule's lr, AdamW, the
    temperature's cap. Its scalars stay on the device until `read_logs` (every --log-every
    steps). -> whether the run stops here (a Ctrl-C, on any rank)."""
    args, state, t0 = run.args, run.state, time.monotonic()
    micro_batches = [list(next_batch(run)) for _ in range(args.accum)]  # on the device, normalised (loader.ToDevice)
    if args.nan_at_step == state.step + 1:
        micro_batches[0][0] = micro_batches[0][0] * float("nan")  # NaN pixels: a NaN loss, for the tests
    losses = forward_backward(run.wrapped, micro_batches, run.config.pad_id, args.caption_weight,
                              args.contrastive_weight, run.setup.autocast, run.embed)  # fmt: skip
    grad_norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), args.grad_clip or float("inf"))
    if hasattr(grad_norm, "full_tensor"):  # FSDP: a DTensor; a collective, not a wait for the device
        grad_norm = grad_norm.full_tensor()
    lr = run.schedule.lr(state.step)
    for group in run.optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"]
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.model.clamp_logit_scale_()  # s = 1/σ <= 100, on the parameter (a clamp in forward has no gradient)
    state.step += 1
    run.unread.append({"step": state.step, "lr": lr, **losses, "grad_norm": grad_norm})
    planned = run.budget.step_done(state.step)  # a time budget's plan (None: no plan yet, or --steps)
    first_plan = planned is not None and state.total_steps is None  # several processes: rank 0's, read at once
    if planned is not None and D.world_size() == 1:  # (several processes: rank 0's plan, in read_logs)
        state.total_steps = planned
    stopping = run.ctrl_c.requested and D.world_size() == 1
    if stopping or first_plan or state.step == state.total_steps or state.step % args.log_every == 0:
        stopping = read_logs(run, planned)
    run.schedule.advance(state.step, state.total_steps)
    run.progress.update(state.step, state.total_steps, pairs_s=args.batch_size / max(time.monotonic() - t0, 1e-9))
    return stopping


def read_logs(run, planned=None) -> bool:
    """Read the scalars of the steps since the last call from the device, in one transfer (and
    one all-reduce: the ranks' mean losses, whether any rank had a Ctrl-C, rank 0's plan of a
    time budget). Reading a GPU tensor makes the CPU wait for the GPU: once per --log-every
    steps, not four times a step. Stops the run at a loss or gradient that is not finite. Every
    rank calls it at the same steps. -> whether the run stops here (a Ctrl-C on some rank)."""
    rows, run.unread, state = run.unread, [], run.state
    keys = ("loss", "contrastive", "caption", "grad_norm")  # (the gradient norm is the same on every rank)
    W = D.world_size()
    on = D.device() if W > 1 else rows[0]["loss"].device if rows else torch.device("cpu")
    plan = planned if planned is not None and D.rank() == 0 else 0.0
    values = torch.stack([row[k].detach().double().reshape(()).to(on) for row in rows for k in keys]
                         + [torch.tensor(float(run.ctrl_c.requested), dtype=torch.float64, device=on),
                            torch.tensor(float(plan), dtype=torch.float64, device=on)])  # fmt: skip
    if W > 1:
        D.all_reduce(values)  # sums: of the losses, of the Ctrl-C flags, of rank 0's plan alone
    values = values.tolist()  # the one wait for the device
    requested, rank0_plan = values[-2:]
    if W > 1 and planned is not None:
        state.total_steps = int(rank0_plan)
    for n, row in enumerate(rows):
        read = dict(zip(keys, values[n * len(keys) : (n + 1) * len(keys)]))
        read = {k: v / W for k, v in read.items()}  # the mean over ranks
        if not math.isfinite(read["loss"]):
            stop(run, f"the loss is {read['loss']} at step {row['step']} (contrastive {read['contrastive']:.4g}, "
                      f"caption {read['caption']:.4g}); nothing since step {run.last_saved} is saved")  # fmt: skip
        if not math.isfinite(read["grad_norm"]):  # a finite loss, an infinite gradient
            stop(run, f"the gradient norm is {read['grad_norm']} at step {row['step']}; "
                      f"nothing since step {run.last_saved} is saved")  # fmt: skip
        state.history.append({"step": row["step"], "lr": row["lr"], **read})
    if rows:
        run.progress.show(loss=read["loss"], con=read["contrastive"], cap=read["caption"], lr=rows[-1]["lr"])
    return requested > 0


def next_batch(run):
    """The next micro-batch; an image that broke after the check (--strict) ends the run in one line."""
    try:
        return next(run.batches)
    except (OSError, ValueError) as error:
        last_line = str(error).strip().splitlines()[-1]  # a loader worker's error ends with the original one,
        stop(run, last_line.removeprefix(f"{type(error).__name__}: "))  # as "OSError: could not decode …"


def stop(run, why):
    run.progress.close()
    sys.exit(f"stopping: {why}. The last good checkpoint is {run.ckpt_path} (step {run.last_saved}).")


def step_token_count(token_batches, pad_id):
    """Real target tokens in one optimizer step: over its micro-batches (gradient accumulation)
    and over all ranks. token_batches: this rank's (B, T) tokens of every micro-batch."""
    n = sum((tokens[:, 1:] != pad_id).sum() for tokens in token_batches)  # tokens[:, 0] is [BOS]
    return D.all_reduce(n) if D.is_distributed() else n


def embeddings(model, images, tokens):
    """The contrastive embeddings (b, E) of one micro-batch's images and texts: what the first
    pass of gradient accumulation keeps (trainer.py compiles it with --compile)."""
    return model.encode_image(images)[0], model.encode_text(tokens)[0]


def forward_backward(model, batches, pad_id, caption_weight=2.0, contrastive_weight=1.0, autocast=nullcontext(),
                     embed=embeddings):  # fmt: skip
    """Forward and backward passes of one optimizer step over this rank's micro-batches
    [(images (b, 3, S, S), tokens (b, T)), …]; the gradients accumulate in the parameters (a DDP
    model syncs them on the last micro-batch). The loss is the CoCa loss of the step's global
    batch: every image against the texts of every micro-batch of every rank, and the token mean
    over all of their captions. Returns this rank's {"loss", "contrastive", "caption"} (detached).

    With A > 1 micro-batches, the first pass embeds them all without gradient (no graphs kept):
    (A·b, E) images and texts. Pass j then runs micro-batch j with gradient and puts its own
    embeddings in place of rows j·b … (j+1)·b. Through the encoders, the step loss L depends on
    micro-batch j only through those rows, and the scale s enters each pass whole (so only the
    last pass lets its gradient through): the A backward passes add up to exactly ∇L. A
    micro-batches cost one more forward of the two encoders, and see all A·b·W negatives."""
    plain = unwrap(model)  # the CoCa inside DDP / torch.compile: its encoders for the first pass
    step_tokens = step_token_count([tokens for _, tokens in batches], pad_id)
    W = D.world_size()  # the contrastive loss sees every rank's pairs; one process has them all
    over_processes = dict(gather=D.gather_with_grad if W > 1 else None, rank=D.rank(), world_size=W)
    if len(batches) > 1:
        with torch.no_grad(), autocast:
            cached = [embed(plain, images, tokens) for images, tokens in batches]
    logged = {"loss": 0.0, "contrastive": 0.0, "caption": 0.0}
    for j, (images, tokens) in enumerate(batches):
        last = j == len(batches) - 1
        if hasattr(model, "set_requires_gradient_sync"):  # FSDP2: reduce-scatter on the last micro-batch only
            model.set_requires_gradient_sync(last)
        with model.no_sync() if hasattr(model, "no_sync") and not last else nullcontext():
            with autocast:
                outputs = model(images, tokens)
            if len(batches) > 1:  # this micro-batch's rows live, the others from the first pass
                for key, column in [("image_embedding", 0), ("text_embedding", 1)]:
                    rows = [outputs[key] if k == j else c[column].to(outputs[key].dtype) for k, c in enumerate(cached)]
                    outputs[key] = torch.cat(rows)  # (A·b, E)
                if not last:  # the scale s enters every pass whole: its gradient is taken once
                    outputs["logit_scale"] = outputs["logit_scale"].detach()
            losses = coca_loss(outputs, tokens, pad_id, caption_weight, contrastive_weight, step_tokens=step_tokens, **over_processes)
            losses["loss"].backward()
        logged["caption"] += losses["caption"].detach()  # the micro-batches' shares add up
        logged["contrastive"] = losses["contrastive"].detach()  # the same step loss in every pass
    logged["loss"] = contrastive_weight * logged["contrastive"] + caption_weight * logged["caption"]
    return logged


