"""Data-parallel training with torch.distributed: the CoCa loss over the global batch (SPEC §3).

Each process (one per GPU, or several on a CPU with the gloo backend) holds a replica of the
model and a shard of every batch; DistributedDataParallel averages the gradients. Two parts of
the CoCa loss need more than the local shard:

- **Contrastive.** Every image must be contrasted with the texts of *all* ranks. Each rank keeps
  its own rows and gathers all ranks' embeddings as columns, with an all-gather whose backward
  sums the gradient over ranks and returns this rank's slice. Labels are offset by
  rank · B_local. (Gathering without gradient shrinks the gradient by the world size; a
  backward that only slices is wrong; labels from the local batch against the gathered matrix
  point at the wrong columns: the traps of the open versions.)
- **Captioning.** The mean over the global batch's real tokens needs the all-reduced count (of
  every micro-batch of the step, under gradient accumulation).

Because DDP *averages* gradients over W ranks, each rank's loss is scaled so that the average
of the W local losses is the single-process loss of the global batch: the contrastive loss is
a mean over equal local shards already, and the caption loss is W · (local sum) / (global count).

Gradient accumulation (`forward_backward`) keeps the negatives of the whole optimizer step: a
first pass computes the embeddings of every micro-batch without gradient, then each micro-batch
runs again with gradient, its own embeddings in place of their cached rows (open_clip's
`--accum-freq`). Summed over the micro-batches, these gradients are the full batch's gradient.

Every collective goes through the functions below, which check that its tensors live on the
process group's device (`device()`): NCCL takes only CUDA tensors, gloo CPU ones.

FSDP2 sharding and activation checkpointing are in `sharding.py`; the loss here needs no change
for them. Left out: gradient compression, and the sharded evaluation of huge sets (evaluation
runs once, on rank 0).
"""

import os
from contextlib import nullcontext
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .checkpoint import unwrap
from .losses import caption_loss_for_training, coca_loss, contrastive_loss


def setup(device="cuda"):
    """Join the process group if launched by torchrun. -> (rank, world_size, local_rank)."""
    if "RANK" not in os.environ:
        return 0, 1, 0
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    backend = "nccl" if device.startswith("cuda") and torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)  # before the group: NCCL binds to the current device
    dist.init_process_group(backend, timeout=timedelta(minutes=60))  # rank 0 may evaluate long
    return dist.get_rank(), dist.get_world_size(), local_rank


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def device() -> torch.device:
    """Where the tensors of this process's collectives must live: its GPU under NCCL, else the CPU."""
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _on_group_device(*tensors):
    for tensor in tensors:
        if tensor.device != device():
            raise RuntimeError(f"a collective of the {dist.get_backend()} process group was handed a tensor on "
                               f"{tensor.device}; its tensors must live on {device()} (create it with device=D.device())")  # fmt: skip


def all_reduce(tensor, op=dist.ReduceOp.SUM):
    """In place: the sum (or `op`) of `tensor` over all ranks."""
    _on_group_device(tensor)
    dist.all_reduce(tensor, op=op)
    return tensor


def all_gather(parts, tensor):
    """parts[r] <- rank r's `tensor`."""
    _on_group_device(tensor, *parts)
    dist.all_gather(parts, tensor)
    return parts


def all_gather_objects(value) -> list:
    """Every rank's `value` (any picklable object), in rank order; [value] when not distributed."""
    if not is_distributed():
        return [value]
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, value)  # under NCCL, through the current GPU (setup sets it)
    return parts


def broadcast_int(value: int, src=0) -> int:
    """Rank `src`'s value on every rank (e.g. a planned number of steps: every rank must run as
    many steps as rank 0, or the collectives of the extra steps wait forever)."""
    if not is_distributed():
        return int(value)
    tensor = torch.tensor(int(value), device=device())
    dist.broadcast(tensor, src=src)
    return int(tensor.item())


def barrier():
    if is_distributed():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[device().index])
        else:
            dist.barrier()


class AllGatherWithGrad(torch.autograd.Function):
    """(B, E) on each rank -> (W·B, E), rank r's rows at [r·B, (r+1)·B); gradients flow back."""

    @staticmethod
    def forward(ctx, x):
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        return torch.cat(all_gather(parts, x.contiguous()))

    @staticmethod
    def backward(ctx, grad):
        # every rank's loss used every rank's rows: sum those gradients, keep our own slice
        # BEGIN EXERCISE all_gather_backward
        grad = all_reduce(grad.contiguous())
        B = grad.shape[0] // dist.get_world_size()
        return grad[dist.get_rank() * B : (dist.get_rank() + 1) * B]
        # END EXERCISE


def global_contrastive_loss(image_embedding, text_embedding, logit_scale):
    """Local rows (B, E) against the columns of every rank (W·B, E); mean over local rows."""
    dtype = torch.promote_types(image_embedding.dtype, torch.float32)  # not in bf16
    with torch.autocast(image_embedding.device.type, enabled=False):
        x, y = image_embedding.to(dtype), text_embedding.to(dtype)
        all_x, all_y = AllGatherWithGrad.apply(x), AllGatherWithGrad.apply(y)  # (W·B, E)
        labels = torch.arange(len(x), device=x.device) + rank() * len(x)  # my pairs' global columns
        image_to_text = F.cross_entropy(logit_scale * x @ all_y.T, labels)  # (B, W·B)
        text_to_image = F.cross_entropy(logit_scale * y @ all_x.T, labels)
    return image_to_text + text_to_image  # paper eq. 1: the sum of both directions (losses.py)


def step_token_count(token_batches, pad_id):
    """Real target tokens in one optimizer step: over its micro-batches (gradient accumulation)
    and over all ranks. token_batches: this rank's (B, T) tokens of every micro-batch."""
    n = sum((tokens[:, 1:] != pad_id).sum() for tokens in token_batches)  # tokens[:, 0] is [BOS]
    return all_reduce(n) if is_distributed() else n


def global_coca_loss(outputs, tokens, pad_id, caption_weight=2.0, contrastive_weight=1.0, step_tokens=None):
    """`losses.coca_loss` over the global batch; the plain one when not distributed. step_tokens:
    `step_token_count` of the optimizer step whose caption tokens these are (default: these
    tokens on every rank). The embeddings may hold more rows than `tokens` (`forward_backward`
    passes every micro-batch's)."""
    W = world_size()
    if W == 1 and step_tokens is None:
        return coca_loss(outputs, tokens, pad_id, caption_weight, contrastive_weight)
    targets = tokens[:, 1:]
    n_local = (targets != pad_id).sum()
    if step_tokens is None:
        step_tokens = step_token_count([tokens], pad_id)
    # caption_loss is (local sum) / n_local; DDP averages W ranks, and the micro-batches of a step
    # add up, so W · (local sum) / (step's count) makes the mean over every real token of the step
    local_sum = caption_loss_for_training(outputs["logits"], targets, pad_id) * n_local.clamp(min=1)  # in the loss's dtype
    l_cap = local_sum * W / step_tokens.clamp(min=1)
    contrast = global_contrastive_loss if W > 1 else contrastive_loss
    l_con = contrast(outputs["image_embedding"], outputs["text_embedding"], outputs["logit_scale"])
    return {"loss": contrastive_weight * l_con + caption_weight * l_cap, "contrastive": l_con, "caption": l_cap}


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
            losses = global_coca_loss(outputs, tokens, pad_id, caption_weight, contrastive_weight, step_tokens)
            losses["loss"].backward()
        logged["caption"] += losses["caption"].detach()  # the micro-batches' shares add up
        logged["contrastive"] = losses["contrastive"].detach()  # the same step loss in every pass
    logged["loss"] = contrastive_weight * logged["contrastive"] + caption_weight * logged["caption"]
    return logged


def mean_over_ranks(values: dict) -> dict:
    """Average scalar tensors over ranks (for logging: the global batch's losses)."""
    if world_size() == 1:
        return {k: v.item() for k, v in values.items()}
    stacked = all_reduce(torch.stack([v.detach().double() for v in values.values()]))
    return dict(zip(values, (stacked / world_size()).tolist()))


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()
