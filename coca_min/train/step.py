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


def train_step(run) -> dict:
    """One optimizer step: forward and backward over this rank's micro-batches (the loss of the
    global batch, `forward_backward`), gradient clipping, the schedule's lr, AdamW, the temperature's
    cap. -> the losses, averaged over ranks, and "stop" (a Ctrl-C on some rank)."""
    args, state, t0 = run.args, run.state, time.monotonic()
    micro_batches = [[t.to(run.setup.device, non_blocking=True) for t in next_batch(run)] for _ in range(args.accum)]
    if args.nan_at_step == state.step + 1:
        micro_batches[0][0] = micro_batches[0][0] * float("nan")  # NaN pixels: a NaN loss, for the tests
    losses = forward_backward(run.wrapped, micro_batches, run.config.pad_id, args.caption_weight,
                                args.contrastive_weight, run.setup.autocast)  # fmt: skip
    logged = D.mean_over_ranks({**losses, "stop": torch.tensor(float(run.ctrl_c.requested), device=run.setup.device)})
    if not math.isfinite(logged["loss"]):
        stop(run, f"the loss is {logged['loss']} at step {state.step + 1} (contrastive {logged['contrastive']:.4g}, "
                  f"caption {logged['caption']:.4g}); the model was not updated with it")  # fmt: skip
    grad_norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), args.grad_clip or float("inf"))
    grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)  # FSDP: a DTensor
    if not math.isfinite(grad_norm):  # finite loss, infinite gradient: do not step with it
        stop(run, f"the gradient norm is {grad_norm} at step {state.step + 1}; the model was not updated with it")
    lr = run.schedule.lr(state.step)
    for group in run.optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"]
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.model.clamp_logit_scale_()  # s = 1/σ <= 100, on the parameter (a clamp in forward has no gradient)
    state.step += 1
    state.history.append({"step": state.step, "lr": lr, **{k: logged[k] for k in ("loss", "contrastive", "caption")}})
    planned = run.budget.step_done(state.step)
    if planned is not None:  # every rank must run the same number of steps: rank 0's plan
        state.total_steps = D.broadcast_int(planned)
    run.schedule.advance(state.step, state.total_steps)
    run.progress.update(state.step, state.total_steps, loss=logged["loss"], con=logged["contrastive"],
                        cap=logged["caption"], lr=lr, pairs_s=args.batch_size / max(time.monotonic() - t0, 1e-9))  # fmt: skip
    return logged


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


def forward_backward(model, batches, pad_id, caption_weight=2.0, contrastive_weight=1.0, autocast=nullcontext()):
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
            cached = [(plain.encode_image(images)[0], plain.encode_text(tokens)[0]) for images, tokens in batches]
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


