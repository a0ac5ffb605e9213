"""torch.distributed for data-parallel training: the process group, its collectives, and the
all-gather with gradient that lets the contrastive loss see the global batch (SPEC §3).

Each process (one per GPU, or several on a CPU with the gloo backend) holds a replica of the
model and a shard of every batch. `gather_with_grad` collects every rank's embeddings as the
columns of the contrastive logits, with an all-gather whose backward sums the gradient over
ranks and returns this rank's slice. (Gathering without gradient shrinks the gradient by the
world size; a backward that only slices is wrong; labels from the local batch against the
gathered matrix point at the wrong columns: the traps of the open versions.) The loss itself is
`coca_min.model.losses.coca_loss`; how a step calls it, `step.py`.

Every collective goes through the functions below, which check that its tensors live on the
process group's device (`device()`): NCCL takes only CUDA tensors, gloo CPU ones.

FSDP2 sharding and activation checkpointing are in `sharding.py`. Left out: gradient
compression, and the sharded evaluation of huge sets (evaluation runs once, on rank 0).
"""

import os
from datetime import timedelta

import torch
import torch.distributed as dist


def join_process_group(device="cuda"):
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
    dist.all_gather_object(parts, value)  # under NCCL, through the current GPU (join_process_group sets it)
    return parts


def broadcast_object(value, src=0):
    """Rank `src`'s `value` (any picklable object) on every rank; `value` itself when not distributed."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src)  # under NCCL, through the current GPU
    return box[0]


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


def gather_with_grad(x):
    """(B, E) on each rank -> (W·B, E), rank r's rows at [r·B, (r+1)·B), with gradient: the
    `gather` of `coca_min.model.losses.contrastive_loss`."""
    return AllGatherWithGrad.apply(x)


def leave_process_group() -> None:
    if is_distributed():
        dist.destroy_process_group()
