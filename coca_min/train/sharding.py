"""Sharding and activation checkpointing, for models whose weights and optimizer state do not
fit one GPU: FSDP2 (`torch.distributed.fsdp.fully_shard`) and recomputation in the backward pass.

Not a part of the paper (it trains with Lingvo on TPUs). `shard_model` makes every transformer
block (`layers.Block`: the ViT's, both decoder halves') a unit of its own and the rest of the
model (patch and token embeddings, poolers, projections, LM head) the root unit. Each rank keeps
1/W of every parameter, of its gradient and so of AdamW's state; a unit's whole weights exist
only while it runs, gathered just before and freed after, forward and backward. Gradients are
averaged over ranks (reduce-scatter), as DDP's are, so the loss of a step (`step.py`) needs no
change. The temperature `log_logit_scale`, one number of shape (1,), is sharded like the rest
(rank 0 holds it, the others an empty shard). As torchtitan does it:

- **bf16** (`param_dtype=torch.bfloat16`, a run in bf16): FSDP2's mixed precision in the blocks.
  Their parameters are all-gathered in bf16 and computed with in bf16 (half the traffic of the
  all-gathers), their gradients reduce-scattered in fp32; the sharded weights, which AdamW
  updates, and AdamW's state stay fp32. The root unit keeps its parameters in fp32: it is
  gathered once a step, and in bf16 the temperature t = log s would move in steps of 1/32 near
  t = log 100, s = e^t in steps of 3 % (at the cap, 98.9 for 100). bf16 autocast still runs the
  root's matrix products in bf16.
- **compile**: each block compiled on its own (`nn.Module.compile`) before it is sharded, and
  the model not compiled whole: the all-gathers and reduce-scatters stay outside the compiled
  code, and the blocks of one kind reuse one compiled graph (the tiny model's 8 blocks, of 3
  kinds: 4 graphs).
- **the meta device**: `trainer.build_model` builds the model on the meta device (no memory),
  shards it, and only then allocates each rank's shards (`materialise`) and initialises them
  (`CoCa.reset_parameters`): no process ever holds the whole model.

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

Left out: CPU offload, and hybrid sharding (FSDP within a node, replicas across nodes).
Checkpoints of coca_min before the temperature had shape (1,) (it was 0-d) load and resume
(`upgrade_state_dict`, `_upgrade_optimizer_state`, `load_sharded`).
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
from torch.distributed.tensor import DTensor, distribute_tensor

from coca_min.model.coca import upgrade_state_dict
from coca_min.model.layers import Block


def set_activation_checkpointing(model: torch.nn.Module, enabled: bool = True) -> None:
    """Recompute every transformer block's activations in the backward pass (training only)."""
    for module in model.modules():
        if isinstance(module, Block):
            module.activation_checkpointing = enabled


def shard_model(model, activation_checkpointing=False, compile=False, param_dtype=None):
    """FSDP2 over the default process group: one unit per block, then the root. In place;
    build the optimizer afterwards, on the sharded parameters. -> the model.

    compile: compile each block (`nn.Module.compile`) before sharding it; do not compile the
    sharded model whole (trainer.wrap_for_training does not). param_dtype: None (fp32) or
    torch.bfloat16: the blocks' parameters all-gathered and computed with in bf16, their
    gradients reduce-scattered in fp32, the sharded weights and AdamW's state fp32 (FSDP2's
    `MixedPrecisionPolicy`); the root's parameters stay fp32 (the module docstring says why).
    A model built on the meta device is sharded first, then `materialise`d."""
    from torch.distributed.fsdp import (
        MixedPrecisionPolicy,
        fully_shard,
        register_fsdp_forward_method,
    )

    set_activation_checkpointing(model, activation_checkpointing)
    in_blocks = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype else None)
    for module in model.modules():
        if isinstance(module, Block):
            if compile:
                module.compile()  # in place: the module, its names and its parameters stay as they are
            fully_shard(module, mp_policy=in_blocks)
    fully_shard(model)  # the root: fp32
    for method in ["encode_image", "encode_text"]:  # called directly (gradient accumulation's first pass)
        register_fsdp_forward_method(model, method)
    return model


def materialise(model, device):
    """A model built on the meta device and sharded (`shard_model`): each rank's shards allocated
    on `device` and initialised by the model's own `reset_parameters`, in place. -> the model.

    On GPUs DTensor's random operations draw each shard as its part of one random tensor of the
    whole shape (the ranks start from the same seed). On CPUs they draw each rank's shard from
    that rank's own generator, which starts from the same seed on every rank: there the shards
    are drawn from the run's seed + the rank, so that they are not copies of one another."""
    model.to_empty(device=device)
    if torch.device(device).type != "cpu" or not dist.is_initialized():
        model.reset_parameters()
        return model
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():  # (the run's own random stream goes on)
        warnings.filterwarnings("ignore", message="DTensor random operators may not have complete support")
        torch.manual_seed(torch.initial_seed() + dist.get_rank())
        model.reset_parameters()
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
    weights = upgrade_state_dict(dict(weights))  # an older coca_min's 0-d temperature: (1,)
    optimizer_state = _upgrade_optimizer_state(optimizer_state, optimizer)
    if not is_sharded(model):
        model.load_state_dict(weights)
    else:
        set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True))
    if not is_sharded(model) or not optimizer_state["state"]:
        optimizer.load_state_dict(optimizer_state)
        return
    by_name = _renamed(optimizer_state, dict(enumerate(parameter_names(model, optimizer))))
    set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))


def _upgrade_optimizer_state(optimizer_state, optimizer):
    """An indexed optimizer state with AdamW's moments of a parameter that an older coca_min kept
    0-d (the temperature) given the parameter's shape (1,); AdamW's 0-d step counts stay 0-d."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = {index: {key: value.reshape(params[index].shape)
                     if key != "step" and isinstance(value, torch.Tensor) and value.dim() == 0 and params[index].dim() == 1
                     else value for key, value in moments.items()}
             for index, moments in optimizer_state["state"].items()}  # fmt: skip
    return {**optimizer_state, "state": state}


def save_sharded(folder, model, optimizer) -> None:
    """Every rank writes its shards of the weights and the optimizer state to `folder` (DCP).

    Before the first step AdamW has no state, and none is saved: DCP's state-dict functions would
    make one by a step on zero gradients, and that step would count as AdamW's first (its bias
    correction then makes the real first update 0.74 × what it should be)."""
    saved = {"model": get_model_state_dict(model)}
    if optimizer.state:
        saved["optimizer"] = get_optimizer_state_dict(model, optimizer)
    with _one_process_is_meant():
        dcp.save(saved, checkpoint_id=str(folder))


def load_sharded(folder, model, optimizer) -> None:
    """Read `save_sharded`'s folder into a model, sharded or not, on any number of ranks."""
    keys = dcp.FileSystemReader(str(folder)).read_metadata().state_dict_metadata
    saved = {"model": get_model_state_dict(model)}
    if any(key.startswith("optimizer.") for key in keys):
        saved["optimizer"] = get_optimizer_state_dict(model, optimizer)
    older = _read_as_saved(saved, keys)
    with _one_process_is_meant():
        dcp.load(saved, checkpoint_id=str(folder))  # in place, each rank its shards
    for entries, key, like in older:  # 0-d as saved -> (1,), sharded as this model is
        value = entries[key].reshape(like.shape)
        entries[key] = distribute_tensor(value, like.device_mesh, like.placements) if isinstance(like, DTensor) else value
    set_model_state_dict(model, saved["model"])
    if "optimizer" in saved:
        set_optimizer_state_dict(model, optimizer, saved["optimizer"])


def _read_as_saved(saved, keys):
    """The entries of `saved` (DCP's state dicts of this model and optimizer) that the checkpoint
    holds 0-d where this model has shape (1,): the temperature and its AdamW moments, written by
    an older coca_min. Each is replaced by a 0-d tensor for DCP to read into. -> [(dict, key,
    the entry it replaced)]."""
    entries = [(saved["model"], name, f"model.{name}") for name in saved["model"]]
    for name, moments in saved.get("optimizer", {}).get("state", {}).items():
        entries += [(moments, key, f"optimizer.state.{name}.{key}") for key in moments]
    older = []
    for entries_of, key, fqn in entries:
        value, stored = entries_of[key], keys.get(fqn)
        if isinstance(value, torch.Tensor) and value.dim() == 1 and getattr(stored, "size", None) == torch.Size([]):
            local = value.to_local() if isinstance(value, DTensor) else value
            entries_of[key] = torch.empty((), dtype=value.dtype, device=local.device)
            older.append((entries_of, key, value))
    return older


@contextmanager
def _one_process_is_meant():
    """Without a process group DCP saves and loads in this one process, and warns that it does
    (torch 2.6 has no `no_dist` argument to say so; 2.7 has it back, and warns all the same):
    quiet that."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is (disabled, )?unavailable or uninitialized")
        yield
