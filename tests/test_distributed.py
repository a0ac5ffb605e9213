"""Distributed CoCa loss (gloo, CPU processes): the same loss and gradients as one process on
the same global batch, with 2 and 4 processes."""

import copy
import os
import socket
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import make_tokens
from torch.nn.parallel import DistributedDataParallel

from coca_min import CoCa, CoCaConfig
from coca_min.model.losses import coca_loss
from coca_min.train.distributed import all_reduce, gather_with_grad
from coca_min.train.step import forward_backward, step_token_count

GLOBAL_BATCH = 8


def micro():
    torch.manual_seed(0)
    config = CoCaConfig(
        image_size=8, patch_size=4, vision_width=8, vision_layers=1, vision_heads=2, vision_mlp=16,
        n_caption_queries=3, pooler_heads=2, vocab_size=16, context_length=7,
        text_width=8, text_heads=2, n_uni=1, n_multi=1, text_mlp=16, embed_dim=8,
    )  # fmt: skip
    model = CoCa(config).double()
    g = torch.Generator().manual_seed(1)
    images = torch.randn(GLOBAL_BATCH, 3, 8, 8, generator=g, dtype=torch.float64)
    # different caption lengths, so that ranks hold different numbers of real tokens
    tokens = make_tokens([7, 3, 5, 7, 4, 6, 3, 7], 7, 16, generator=g)
    return model, images, tokens


def join(rank, world, port):
    """A worker's start: a gloo process group on the loopback address, one thread."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)


def leave(rank, result, result_file):
    """A worker's end: rank 0 saves `result` for the test to read, then every rank leaves together."""
    if rank == 0:
        torch.save(result, result_file)
    dist.barrier()
    dist.destroy_process_group()


def worker(rank, world, port, result_file, accum):
    join(rank, world, port)
    model, images, tokens = micro()
    ddp = DistributedDataParallel(model)
    shard = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
    if accum == 1:
        step_tokens = step_token_count([tokens[shard]], pad_id=0)  # all-reduced: every rank's tokens
        losses = coca_loss(ddp(images[shard], tokens[shard]), tokens[shard], pad_id=0, gather=gather_with_grad,
                           rank=rank, world_size=world, step_tokens=step_tokens)  # fmt: skip
        losses["loss"].backward()  # DDP averages the gradients over ranks
    else:  # as train.py does: this rank's shard as `accum` micro-batches, one optimizer step
        parts = [(i, t) for i, t in zip(images[shard].chunk(accum), tokens[shard].chunk(accum))]
        losses = forward_backward(ddp, parts, pad_id=0)
    logged = {k: all_reduce(v.detach().clone()).item() / world for k, v in losses.items()}  # the global batch's
    leave(rank, (logged, {n: p.grad for n, p in model.named_parameters()}), result_file)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.distributed
@pytest.mark.parametrize("world, accum", [(2, 1), (4, 1), (2, 2)])
def test_distributed_loss_and_gradients_equal_single_process(world, accum, tmp_path):
    model, images, tokens = micro()
    expected = coca_loss(model(images, tokens), tokens, pad_id=0)
    expected["loss"].backward()
    args = (world, free_port(), tmp_path / "rank0.pt", accum)
    mp.start_processes(worker, args=args, nprocs=world, start_method="spawn")
    logged, grads = torch.load(tmp_path / "rank0.pt")
    for key in ["loss", "contrastive", "caption"]:
        assert logged[key] == pytest.approx(expected[key].item(), abs=1e-6), key
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, atol=1e-6, rtol=0, msg=name)


@pytest.mark.parametrize("split", [[3, 5], [2, 2, 2, 2]])
def test_accumulated_gradient_equals_the_full_batch_gradient(split):
    # float64. The micro-batches hold different numbers of real caption tokens (a mean of their
    # means would be wrong), and each image's negatives are all 8 texts, not its micro-batch's
    model, images, tokens = micro()
    whole = coca_loss(model(images, tokens), tokens, pad_id=0)
    whole["loss"].backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    parts = list(zip(images.split(split), tokens.split(split)))
    assert step_token_count([t for _, t in parts], pad_id=0) == (tokens[:, 1:] != 0).sum()
    logged = forward_backward(model, parts, pad_id=0)
    for key in ["loss", "contrastive", "caption"]:
        assert logged[key].item() == pytest.approx(whole[key].item(), abs=1e-12), key
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], atol=1e-6, rtol=0, msg=name)
    assert max((p.grad - expected[n]).abs().max().item() for n, p in model.named_parameters()) < 1e-12


def sharded_worker(rank, world, port, result_file, fsdp, checkpointing, accum):
    from coca_min.train.sharding import (
        gathered_optimizer_state,
        gathered_weights,
        load_gathered,
        load_sharded,
        parameter_names,
        set_activation_checkpointing,
        shard_model,
    )

    join(rank, world, port)
    model, images, tokens = micro()
    if fsdp:
        shard_model(model, activation_checkpointing=checkpointing)
        weight = model.image_encoder.blocks[0].mlp.fc_in.weight  # (16, 8) in all: 8 rows here
        assert type(weight).__name__ == "DTensor" and weight.to_local().shape == (16 // world, 8)
        scale = model.log_logit_scale  # shape (1,): sharded like any parameter, rank 1's shard empty
        assert type(scale).__name__ == "DTensor" and scale.to_local().shape == (1 - rank,)
    else:
        set_activation_checkpointing(model, checkpointing)
        model = DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, eps=1e-6)  # after sharding: its state is sharded too
    shard = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
    parts = list(zip(images[shard].chunk(accum), tokens[shard].chunk(accum)))
    forward_backward(model, parts, pad_id=0)
    optimizer.step()
    weights, state = gathered_weights(model), gathered_optimizer_state(model, optimizer)  # whole, on rank 0
    if fsdp:  # the temperature and its gradient, whole, as this rank has them (no hook of coca_min's averages it)
        torch.save([t.full_tensor() for t in (model.log_logit_scale, model.log_logit_scale.grad)], f"{result_file}.scale{rank}")
        # loaded into a new sharded model (every rank reads rank 0's file, as a resumed run does), also in the
        # form of an older coca_min's checkpoints (a 0-d temperature), gathered and sharded
        torch.save((weights, state), f"{result_file}.tmp") if rank == 0 else None
        dist.barrier()
        save_older_sharded(f"{result_file}.shards", model, optimizer)
        reloaded = []
        for load in [lambda m, o: load_gathered(m, o, *torch.load(f"{result_file}.tmp")),
                     lambda m, o: load_gathered(m, o, *older(*torch.load(f"{result_file}.tmp"), parameter_names(model, optimizer))),
                     lambda m, o: load_sharded(f"{result_file}.shards", m, o)]:  # fmt: skip
            again = shard_model(micro()[0])
            optimizer_again = torch.optim.AdamW(again.parameters(), lr=1e-2, eps=1e-6)
            load(again, optimizer_again)
            reloaded.append((gathered_weights(again), gathered_optimizer_state(again, optimizer_again)))
    else:
        weights, reloaded = {n: p.detach() for n, p in model.module.state_dict().items()}, []
    leave(rank, {"model": weights, "optimizer": state, "reloaded": reloaded}, result_file)


@pytest.mark.distributed
@pytest.mark.parametrize("fsdp, checkpointing, accum", [(True, False, 1), (True, True, 2)])
def test_one_sharded_or_checkpointed_step_gives_the_single_process_parameters(fsdp, checkpointing, accum, tmp_path):
    # float64: FSDP2 (one unit per block), and FSDP2 with activation checkpointing and gradient
    # accumulation, at world size 2, against one process on the whole batch (checkpointing
    # alone: the next test)
    # AdamW's eps at 1e-6: gradients that are zero in exact arithmetic (the keys' biases: softmax
    # ignores what adds to every score) are 1e-17 of rounding, which eps 1e-8 would blow up to lr
    model, images, tokens = micro()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, eps=1e-6)
    forward_backward(model, [(images, tokens)], pad_id=0)
    optimizer.step()
    args = (2, free_port(), tmp_path / "rank0.pt", fsdp, checkpointing, accum)
    mp.start_processes(sharded_worker, args=args, nprocs=2, start_method="spawn")
    saved = torch.load(tmp_path / "rank0.pt")
    # the temperature, sharded like any parameter: on both ranks, whose pairs differ, its gradient
    # is the whole batch's (averaged over ranks by FSDP2's reduce-scatter), and its value one process's
    for rank in range(2):
        value, grad = torch.load(tmp_path / f"rank0.pt.scale{rank}")
        torch.testing.assert_close(grad, model.log_logit_scale.grad, rtol=1e-9, atol=0)
        torch.testing.assert_close(value, model.log_logit_scale.detach(), rtol=1e-12, atol=0)
    # the whole weights, and AdamW's state gathered (train.py --checkpoint gathered) in the form of
    # a plain optimizer.state_dict(), equal one process's; loaded into a new sharded model, the same
    # (from this checkpoint, and from one as an older coca_min wrote it, gathered and sharded)
    expected_state = optimizer.state_dict()
    assert len(saved["reloaded"]) == 3
    for weights, state in [(saved["model"], saved["optimizer"]), *saved["reloaded"]]:
        assert weights.keys() == model.state_dict().keys()
        for name, expected in model.state_dict().items():
            torch.testing.assert_close(weights[name], expected, rtol=1e-6, atol=1e-9, msg=name)
        as_lists = [[{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in groups]  # betas
                    for groups in (state["param_groups"], expected_state["param_groups"])]  # fmt: skip
        assert as_lists[0] == as_lists[1]
        assert state["state"].keys() == expected_state["state"].keys()
        for index, expected in expected_state["state"].items():
            for key, value in expected.items():
                torch.testing.assert_close(state["state"][index][key], value, rtol=1e-6, atol=1e-12, msg=f"{index} {key}")


def older(weights, optimizer_state, names):
    """Whole weights and an indexed AdamW state as coca_min saved them when the temperature was
    a 0-d parameter: it, and its moments, of shape ()."""
    index = names.index("log_logit_scale")
    moments = {key: value if key == "step" else value.reshape(()) for key, value in optimizer_state["state"][index].items()}
    return ({**weights, "log_logit_scale": weights["log_logit_scale"].reshape(())},
            {**optimizer_state, "state": {**optimizer_state["state"], index: moments}})  # fmt: skip


def save_older_sharded(folder, model, optimizer):
    """`save_sharded` as coca_min wrote it when the temperature was 0-d: FSDP2 left it out (whole
    on every rank), and so its AdamW moments."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    def whole(t):
        return (t.full_tensor() if hasattr(t, "full_tensor") else t).reshape(())

    saved = {"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer)}
    saved["model"]["log_logit_scale"] = whole(saved["model"]["log_logit_scale"])
    moments = saved["optimizer"]["state"]["log_logit_scale"]  # (the optimizer's own dict: not changed in place)
    saved["optimizer"]["state"]["log_logit_scale"] = {k: v if k == "step" else whole(v) for k, v in moments.items()}
    with warnings.catch_warnings():  # in one process, DCP warns that it saves in one process
        warnings.filterwarnings("ignore", message="torch.distributed is (disabled, )?unavailable or uninitialized")
        dcp.save(saved, checkpoint_id=str(folder))


def test_a_checkpoint_of_an_older_coca_min_with_a_0d_temperature_loads_and_resumes(tmp_path):
    # coca_min kept the temperature 0-d, shape (), before FSDP2 sharded it as any other parameter
    # (shape (1,)). Such a checkpoint loads (load_model), and resumes, gathered (ckpt.pt) or
    # sharded (DCP; here in one process), to the very next step the run itself takes
    from coca_min.checkpoint import load_model, save_checkpoint
    from coca_min.train.sharding import load_gathered, load_sharded, parameter_names

    def model_and_optimizer():
        model = micro()[0]
        return model, torch.optim.AdamW(model.parameters(), lr=1e-2, eps=1e-6)

    def step(model, optimizer):
        forward_backward(model, [(images, tokens)], pad_id=0)
        optimizer.step()
        optimizer.zero_grad()

    (model, optimizer), (_, images, tokens) = model_and_optimizer(), micro()
    step(model, optimizer)
    current = copy.deepcopy((model.state_dict(), optimizer.state_dict()))  # as if read from a file: not the live tensors
    weights, state = older(*current, parameter_names(model, optimizer))
    assert weights["log_logit_scale"].shape == () and model.log_logit_scale.shape == (1,)
    save_checkpoint(tmp_path / "ckpt.pt", model, weights=weights)
    assert torch.equal(load_model(tmp_path / "ckpt.pt").log_logit_scale, model.log_logit_scale.detach().float())
    save_older_sharded(tmp_path / "shards", model, optimizer)
    resumed = []
    for load in [lambda m, o: load_gathered(m, o, weights, state), lambda m, o: load_sharded(tmp_path / "shards", m, o)]:
        resumed.append(model_and_optimizer())
        load(*resumed[-1])
    step(model, optimizer)
    for again, optimizer_again in resumed:
        assert again.log_logit_scale.shape == (1,)
        step(again, optimizer_again)
        for (name, value), other in zip(model.state_dict().items(), again.state_dict().values()):
            assert torch.equal(value, other), name


def meta_bf16_worker(rank, world, port, result_file):
    from types import SimpleNamespace

    from coca_min import PRESETS
    from coca_min.train.sharding import gathered_weights, is_sharded
    from coca_min.train.trainer import Setup, build_model

    join(rank, world, port)
    setup = Setup(torch.device("cpu"), rank, world, rank, autocast=torch.autocast("cpu", dtype=torch.bfloat16),
                  compile=False, workers=0, micro_batch=4)  # fmt: skip  (a bf16 run, as set_up makes it)
    args = SimpleNamespace(fsdp=True, activation_checkpointing=False, lr=1e-3, weight_decay=0.1, image_lr_scale=1.0)
    built = []
    for _ in range(2):  # the run's seed, twice
        torch.manual_seed(0)
        model, optimizer = build_model(args, setup, PRESETS["tiny"])
        assert is_sharded(model) and not any(p.is_meta for p in model.parameters())
        built.append(gathered_weights(model))
    seen = {}  # the dtypes of the parameters that compute, during the forward pass
    model.image_encoder.blocks[0].mlp.register_forward_pre_hook(lambda m, _: seen.update(block=m.fc_in.weight.dtype))
    model.image_projection.register_forward_pre_hook(lambda m, _: seen.update(root=m.weight.dtype))
    g = torch.Generator().manual_seed(rank)  # each rank its own pairs
    images, tokens = torch.randn(4, 3, 48, 48, generator=g), make_tokens([9, 5, 12, 7], 12, 366, generator=g)
    losses = forward_backward(model, [(images, tokens)], pad_id=0, autocast=setup.autocast)
    grad = model.image_encoder.blocks[0].mlp.fc_in.weight.grad.to_local()  # this rank's rows, averaged over ranks
    optimizer.step()
    result = {"built": built, "seen": seen, "loss": losses["loss"].item(), "grad": grad,
              "dtypes": {p.dtype for p in model.parameters()} | {p.grad.dtype for p in model.parameters()}
              | {v.dtype for s in optimizer.state.values() for k, v in s.items() if k != "step"}}  # fmt: skip
    leave(rank, result, result_file)


@pytest.mark.distributed
def test_fsdp_builds_on_the_meta_device_and_gathers_its_blocks_in_bf16(tmp_path):
    # trainer.build_model with --fsdp in a bf16 run, at world size 2: the model built on the meta
    # device, sharded, then each rank's shards made and initialised
    from coca_min import PRESETS

    mp.start_processes(meta_bf16_worker, args=(2, free_port(), tmp_path / "rank0.pt"), nprocs=2, start_method="spawn")
    saved = torch.load(tmp_path / "rank0.pt")
    built, again = saved["built"]
    torch.manual_seed(0)
    plain = CoCa(PRESETS["tiny"]).state_dict()
    assert built.keys() == plain.keys() and all(built[n].shape == v.shape for n, v in plain.items())
    for name, value in plain.items():
        assert torch.equal(again[name], built[name]), name  # the same seed, the same weights
        if (value == value.flatten()[0]).all():  # LayerNorms, biases, the temperature: set, not drawn
            assert torch.equal(built[name], value), name
        elif value.numel() >= 1000:  # drawn: from the same distributions as a plain build's
            std, mean = value.std().item(), value.mean().item()
            assert built[name].std().item() == pytest.approx(std, rel=0.1), name
            assert built[name].mean().item() == pytest.approx(mean, abs=0.1 * std), name
    fc_in = built["image_encoder.blocks.0.mlp.fc_in.weight"]  # (256, 64): rows 0-127 rank 0's, 128-255 rank 1's
    assert not torch.equal(fc_in[:128], fc_in[128:])  # not copies of one another (each rank its own seed on CPUs)
    # FSDP2's mixed precision: a block's parameters compute in bf16, the root's (the temperature's)
    # in fp32; what is kept stays fp32: the sharded weights, their gradients, AdamW's moments
    assert saved["seen"] == {"block": torch.bfloat16, "root": torch.float32}
    assert saved["dtypes"] == {torch.float32} and torch.isfinite(torch.tensor(saved["loss"]))
    # reduce-scattered in fp32: the mean of two ranks' bf16 gradients is not a bf16 number (reduced
    # in bf16, it would be rounded to one)
    grad = saved["grad"]
    assert grad.dtype == torch.float32 and not torch.equal(grad.bfloat16().float(), grad)


def compiled_worker(rank, world, port, result_file):
    from coca_min.train.sharding import gathered_weights, shard_model

    join(rank, world, port)
    model, images, tokens = micro()
    shard_model(model, compile=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, eps=1e-6)
    shard = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
    forward_backward(model, [(images[shard], tokens[shard])], pad_id=0)
    optimizer.step()
    weights = gathered_weights(model)
    leave(rank, weights, result_file)


@pytest.mark.compile
def test_blocks_compiled_then_sharded_give_the_single_process_step(tmp_path):
    # torchtitan's order: each block compiled (nn.Module.compile, in place), then sharded; the
    # root not compiled. Float64, one AdamW step against one process, eager. A group of one
    # process: inductor compiles 3 kinds of block, forward and backward, in each process (with 2,
    # about 4 minutes on 2 cores with an empty cache: over CI's time); the sharded step over 2
    # processes is tested eagerly above
    model, images, tokens = micro()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, eps=1e-6)
    forward_backward(model, [(images, tokens)], pad_id=0)
    optimizer.step()
    mp.start_processes(compiled_worker, args=(1, free_port(), tmp_path / "rank0.pt"), nprocs=1, start_method="spawn")
    weights = torch.load(tmp_path / "rank0.pt")
    assert weights.keys() == model.state_dict().keys()  # the same names: compiled in place, no _orig_mod
    for name, expected in model.state_dict().items():
        torch.testing.assert_close(weights[name], expected, rtol=1e-6, atol=1e-9, msg=name)


def test_activation_checkpointing_keeps_a_blocks_input_only_and_gives_the_same_gradients():
    from coca_min.train.sharding import set_activation_checkpointing

    model, images, tokens = micro()
    grads = []
    for enabled in [False, True]:
        set_activation_checkpointing(model, enabled)
        model.zero_grad()
        coca_loss(model(images, tokens), tokens, pad_id=0)["loss"].backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, atol=1e-12, rtol=0, msg=name)
    assert all(block.activation_checkpointing for block in model.image_encoder.blocks)


def test_a_sharded_checkpoint_before_the_first_step_does_not_count_as_adamws_first_step(tmp_path):
    # DCP's state-dict functions give an optimizer without state one, by a step on zero gradients:
    # saved before training began, that step made AdamW's real first update 0.74 × its size
    # (bias correction of step 2). A sharded save and load (here of one plain process) keep AdamW as it is.
    from coca_min.train.sharding import load_sharded, save_sharded

    def model_and_optimizer():
        model = micro()[0]
        return model, torch.optim.AdamW(model.parameters(), lr=1e-2)

    model, optimizer = model_and_optimizer()
    save_sharded(tmp_path / "start", model, optimizer)
    assert not optimizer.state  # no step was taken
    _, images, tokens = micro()
    coca_loss(model(images, tokens), tokens, pad_id=0)["loss"].backward()
    optimizer.step()
    assert all(state["step"] == 1 for state in optimizer.state.values())
    save_sharded(tmp_path / "one", model, optimizer)
    for folder, steps in [("start", None), ("one", 1)]:
        restored, restored_optimizer = model_and_optimizer()
        load_sharded(tmp_path / folder, restored, restored_optimizer)
        assert [state["step"] for state in restored_optimizer.state.values()] == [steps] * len(optimizer.state) * (steps is not None)
        expected = model if steps else model_and_optimizer()[0]
        for (name, value), restored_value in zip(expected.state_dict().items(), restored.state_dict().values()):
            assert torch.equal(value, restored_value), name
