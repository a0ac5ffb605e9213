"""Distributed CoCa loss (gloo, CPU processes): the same loss and gradients as one process on
the same global batch, with 2 and 4 processes."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import make_tokens
from torch.nn.parallel import DistributedDataParallel

from coca_min import CoCa, CoCaConfig
from coca_min.model.losses import coca_loss
from coca_min.train.distributed import gather_with_grad, mean_over_ranks
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


def worker(rank, world, port, result_file, accum):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
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
    logged = mean_over_ranks(losses)
    if rank == 0:
        torch.save((logged, {n: p.grad for n, p in model.named_parameters()}), result_file)
    dist.barrier()
    dist.destroy_process_group()


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
        set_activation_checkpointing,
        shard_model,
    )

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    model, images, tokens = micro()
    if fsdp:
        shard_model(model, activation_checkpointing=checkpointing)
        weight = model.image_encoder.blocks[0].mlp.fc_in.weight  # (16, 8) in all: 8 rows here
        assert type(weight).__name__ == "DTensor" and weight.to_local().shape == (16 // world, 8)
    else:
        set_activation_checkpointing(model, checkpointing)
        model = DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, eps=1e-6)  # after sharding: its state is sharded too
    shard = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
    parts = list(zip(images[shard].chunk(accum), tokens[shard].chunk(accum)))
    forward_backward(model, parts, pad_id=0)
    optimizer.step()
    weights, state = gathered_weights(model), gathered_optimizer_state(model, optimizer)  # whole, on rank 0
    if fsdp:  # and loaded into a new sharded model (every rank reads rank 0's file, as a resumed run does)
        torch.save((weights, state), f"{result_file}.tmp") if rank == 0 else None
        dist.barrier()
        again, optimizer_again = micro()[0], None
        shard_model(again)
        optimizer_again = torch.optim.AdamW(again.parameters(), lr=1e-2, eps=1e-6)
        load_gathered(again, optimizer_again, *torch.load(f"{result_file}.tmp"))
        reloaded = gathered_weights(again), gathered_optimizer_state(again, optimizer_again)
    else:
        weights, reloaded = {n: p.detach() for n, p in model.module.state_dict().items()}, None
    if rank == 0:
        torch.save({"model": weights, "optimizer": state, "reloaded": reloaded}, result_file)
    dist.barrier()
    dist.destroy_process_group()


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
    # the whole weights, and AdamW's state gathered (train.py --checkpoint gathered) in the form of
    # a plain optimizer.state_dict(), equal one process's; loaded into a new sharded model, the same
    expected_state = optimizer.state_dict()
    for weights, state in [(saved["model"], saved["optimizer"]), saved["reloaded"]]:
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
