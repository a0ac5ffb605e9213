"""Sharding and activation checkpointing, for models whose weights and optimizer state do not
fit one GPU: FSDP2 (`torch.distributed.fsdp.fully_shard`) and recomputation in the backward pass.

Not a part of the paper (it trains with Lingvo on TPUs). `shard_model` makes every transformer
block (`layers.Block`: the ViT's, both decoder halves') a unit of its own and the rest of the
model (patch and token embeddings, poolers, projections, LM head) the root unit. Each rank keeps
1/W of every parameter, of its gradient and so of AdamW's state; a unit's whole weights exist
only while it runs, gathered just before and freed after, forward and backward. Gradients are
averaged over ranks (reduce-scatter), as DDP's are, so the loss of `distributed.py` needs no
change. The temperature `log_logit_scale` is one number (a 0-d parameter, which `fully_shard`
cannot shard): it stays whole on every rank, and a hook averages its gradient over ranks.

With activation checkpointing a block keeps only its input for the backward pass and runs its
forward again there: about a third more compute for the blocks, and their activations no longer
held (lesson 10 measures both).

Left out: mixed-precision policies of FSDP (bf16 autocast covers the compute), CPU offload,
and hybrid sharding (FSDP within a node, replicas across nodes).
"""

import torch
import torch.distributed as dist

from .distributed import all_reduce
from .layers import Block


def set_activation_checkpointing(model: torch.nn.Module, enabled: bool = True) -> None:
    """Recompute every transformer block's activations in the backward pass (training only)."""
    for module in model.modules():
        if isinstance(module, Block):
            module.activation_checkpointing = enabled


def shard_model(model, activation_checkpointing=False):
    """FSDP2 over the default process group: one unit per block, then the root. In place;
    build the optimizer afterwards, on the sharded parameters. -> the model."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    set_activation_checkpointing(model, activation_checkpointing)
    for module in model.modules():
        if isinstance(module, Block):
            fully_shard(module)
    fully_shard(model, ignored_params={model.log_logit_scale})
    for method in ["encode_image", "encode_text"]:  # called directly (gradient accumulation's first pass)
        register_fsdp_forward_method(model, method)

    def average_over_ranks(parameter):  # after each backward: DDP's average, for the one number
        all_reduce(parameter.grad).div_(dist.get_world_size())

    model.log_logit_scale.register_post_accumulate_grad_hook(average_over_ranks)
    return model


def full_state_dict(model) -> dict:
    """Every parameter and buffer whole (gathered from the shards), on every rank: a state dict
    that `CoCa.load_state_dict` takes on one device."""
    from torch.distributed.tensor import DTensor

    return {name: (v.full_tensor() if isinstance(v, DTensor) else v).detach().clone() for name, v in model.state_dict().items()}
