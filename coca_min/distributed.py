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
a mean over equal local shards already, and the caption loss is W · (local sum) / (global count)
(W · A · (local sum) / (the step's count) with A micro-batches of gradient accumulation).

Left out: FSDP / model sharding, gradient compression, and the sharded evaluation of huge sets
(evaluation runs once, on rank 0).
"""

import os
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .losses import caption_loss, coca_loss, contrastive_loss


def setup(device="cuda"):
    """Join the process group if launched by torchrun. -> (rank, world_size, local_rank)."""
    if "RANK" not in os.environ:
        return 0, 1, 0
    backend = "nccl" if device.startswith("cuda") and torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, timeout=timedelta(minutes=60))  # rank 0 may evaluate long
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


class AllGatherWithGrad(torch.autograd.Function):
    """(B, E) on each rank -> (W·B, E), rank r's rows at [r·B, (r+1)·B); gradients flow back."""

    @staticmethod
    def forward(ctx, x):
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        # every rank's loss used every rank's rows: sum those gradients, keep our own slice
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        B = grad.shape[0] // dist.get_world_size()
        return grad[dist.get_rank() * B : (dist.get_rank() + 1) * B]


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
    if is_distributed():
        dist.all_reduce(n)
    return n


def global_coca_loss(outputs, tokens, pad_id, caption_weight=2.0, contrastive_weight=1.0, step_tokens=None,
                     micro_batches=1):
    """`losses.coca_loss` over the global batch; the plain one when not distributed and not
    accumulating. step_tokens: `step_token_count` of the optimizer step that this is one of
    `micro_batches` micro-batches of (default: this micro-batch on every rank)."""
    W = world_size()
    if W == 1 and micro_batches == 1:
        return coca_loss(outputs, tokens, pad_id, caption_weight, contrastive_weight)
    targets = tokens[:, 1:]
    n_local = (targets != pad_id).sum()
    if step_tokens is None:
        step_tokens = step_token_count([tokens], pad_id)
    # caption_loss is (local sum) / n_local. DDP averages W ranks and train.py averages the
    # micro-batches, so W · micro_batches · (local sum) / (step's count) averages to the mean
    # over every real token of the optimizer step
    local_sum = caption_loss(outputs["logits"], targets, pad_id) * n_local.clamp(min=1)  # in the loss's dtype
    l_cap = local_sum * (W * micro_batches) / step_tokens.clamp(min=1)
    contrast = global_contrastive_loss if W > 1 else contrastive_loss  # within the micro-batch
    l_con = contrast(outputs["image_embedding"], outputs["text_embedding"], outputs["logit_scale"])
    return {"loss": contrastive_weight * l_con + caption_weight * l_cap, "contrastive": l_con, "caption": l_cap}


def mean_over_ranks(values: dict) -> dict:
    """Average scalar tensors over ranks (for logging: the global batch's losses)."""
    if world_size() == 1:
        return {k: v.item() for k, v in values.items()}
    stacked = torch.stack([v.detach().double() for v in values.values()])
    dist.all_reduce(stacked)
    return dict(zip(values, (stacked / world_size()).tolist()))


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()
