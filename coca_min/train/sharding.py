"""Sharding and activation checkpointing, for models whose weights and optimizer state do not
fit one GPU: FSDP2 (`torch.distributed.fsdp.fully_shard`) and recomputation in the backward pass.

Not a part of the paper (it trains with Lingvo on TPUs). `shard_model` makes every transformer
block (`layers.Block`: the ViT's, both decoder halves') a unit of its own and the rest of the
model (patch and token embeddings, poolers, projections, LM head) the root unit. Each rank keeps
1/W of every parameter, of its gradient and so of AdamW's state; a unit's whole weights exist
only while it runs, gathered just before and freed after, forward and backward. Gradients are
averaged over ranks (reduce-scatter), as DDP's are, so the loss of a step (`step.py`) needs no
change. The temperature `log_logit_scale` is one number (a 0-d parameter, which `fully_shard`
cannot shard): it stays whole on every rank, and a hook averages its gradient over ranks.

With activation checkpointing a block keeps only its input for the backward pass and runs its
forward again there: about a third more compute for the blocks, and their activations no longer
held (lesson 10 measures both).

Checkpoints of a sharded model (train.py `--fsdp`) come in two forms, and in both the run's
`ckpt.pt` holds the whole model weights, so that it loads on one device for inference
(`checkpoint.load_checkpoint`) like any other:

- **gathered**: the optimizer state too is gathered into `ckpt.pt` by rank 0, indexed as a plain
  `optimizer.state_dict()` is, so a run with or without `--fsdp`, on any number of ranks, can
  resume it. Rank 0 holds the whole optimizer state on the CPU while it saves.
- **sharded**: every rank writes its own shards of the weights and of AdamW's state into a
  folder with `torch.distributed.checkpoint` (DCP), and nothing is gathered but the weights.
  DCP re-shards on loading, so another number of ranks can resume it too.

Left out: mixed-precision policies of FSDP (bf16 autocast covers the compute), CPU offload,
and hybrid sharding (FSDP within a node, replicas across nodes).
"""

import warnings
from contextlib import contextmanager

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from coca_min.model.layers import Block

from .distributed import all_reduce


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


def is_sharded(model) -> bool:
    """Whether `shard_model` was applied (FSDP2 marks the module)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def parameter_names(model, optimizer) -> list[str]:
    """The name of each of the optimizer's parameters, in its order: index i of a plain
    `optimizer.state_dict()` is the parameter named names[i]."""
    name_of = {id(p): name for name, p in model.named_parameters()}
    return [name_of[id(p)] for group in optimizer.param_groups for p in group["params"]]


def _renamed(state, rename):
    return {"state": {rename[key]: value for key, value in state["state"].items()},
            "param_groups": [{**group, "params": [rename[key] for key in group["params"]]} for group in state["param_groups"]]}  # fmt: skip


def gathered_weights(model):
    """A sharded model's whole weights, on the CPU of rank 0 ({} on the other ranks); None for a
    model that is not sharded (its own `state_dict()` is whole). A collective: every rank calls it."""
    if not is_sharded(model):
        return None
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def gathered_optimizer_state(model, optimizer):
    """The optimizer state, whole on rank 0 (None on the others), indexed as a plain
    `optimizer.state_dict()` is. A collective of a sharded model: every rank calls it."""
    if not is_sharded(model) or not optimizer.state:  # (see save_sharded) no state yet: nothing to gather
        return optimizer.state_dict()
    state = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    index = {name: i for i, name in enumerate(parameter_names(model, optimizer))}
    return _renamed(state, index) if state else None


def load_gathered(model, optimizer, weights, optimizer_state) -> None:
    """Load whole weights and an indexed optimizer state (a plain run's, or gathered_weights' and
    gathered_optimizer_state's) into a model, sharded or not."""
    if not is_sharded(model):
        model.load_state_dict(weights)
    else:
        set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True))
    if not is_sharded(model) or not optimizer_state["state"]:
        optimizer.load_state_dict(optimizer_state)
        return
    by_name = _renamed(optimizer_state, dict(enumerate(parameter_names(model, optimizer))))
    set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))


def save_sharded(folder, model, optimizer) -> None:
    """Every rank writes its shards of the weights and the optimizer state to `folder` (DCP).

    Before the first step AdamW has no state, and none is saved: DCP's state-dict functions would
    make one by a step on zero gradients, and that step would count as AdamW's first (its bias
    correction then makes the real first update 0.74 × what it should be)."""
    saved = {"model": get_model_state_dict(model)}
    if optimizer.state:
        saved["optimizer"] = get_optimizer_state_dict(model, optimizer)
    with _one_process_is_meant():
        dcp.save(saved, checkpoint_id=str(folder), no_dist=not dist.is_initialized())


def load_sharded(folder, model, optimizer) -> None:
    """Read `save_sharded`'s folder into a model, sharded or not, on any number of ranks."""
    keys = dcp.FileSystemReader(str(folder)).read_metadata().state_dict_metadata
    saved = {"model": get_model_state_dict(model)}
    if any(key.startswith("optimizer.") for key in keys):
        saved["optimizer"] = get_optimizer_state_dict(model, optimizer)
    with _one_process_is_meant():
        dcp.load(saved, checkpoint_id=str(folder), no_dist=not dist.is_initialized())  # in place, each rank its shards
    set_model_state_dict(model, saved["model"])
    if "optimizer" in saved:
        set_optimizer_state_dict(model, optimizer, saved["optimizer"])



@contextmanager
def _one_process_is_meant():
    """DCP warns that it works in one process even when told to (no_dist): quiet that."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield
