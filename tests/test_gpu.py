"""The GPU path: bf16 autocast, torch.compile and cached decoding on CUDA.

These run only where torch sees a CUDA GPU (`.ci/gpu` runs them, with bench.py and a torchrun
of the tiny run, when one is lent); on a CPU the same code paths run in test_losses.py (bf16
autocast) and test_generate.py (cached decoding). The tolerances are bf16's: about 3
significant digits.
"""

import pytest
import torch

from coca_min import PRESETS, CoCa
from coca_min.model.generate import generate
from coca_min.model.losses import coca_loss

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def batch(device, B=16):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(B, 3, 48, 48, generator=g)
    tokens = torch.randint(3, 366, (B, 32), generator=g)
    tokens[:, 0], tokens[:, 20], tokens[:, 21:] = 1, 2, 0
    return images.to(device), tokens.to(device)  # (B, 3, 48, 48), (B, 32): 19 words, then padding


def loss_and_grads(model, images, tokens, autocast):
    model.zero_grad()
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        loss = coca_loss(model(images, tokens), tokens, pad_id=0)["loss"]
    loss.backward()
    return loss.item(), torch.cat([p.grad.flatten() for p in model.parameters()])


def test_bf16_autocast_on_the_gpu_agrees_with_float32():
    torch.manual_seed(0)
    model = CoCa(PRESETS["tiny"]).cuda()
    images, tokens = batch("cuda")
    full, full_grad = loss_and_grads(model, images, tokens, autocast=False)
    half, half_grad = loss_and_grads(model, images, tokens, autocast=True)
    assert half == pytest.approx(full, rel=0.01)
    assert (half_grad - full_grad).norm() < 0.05 * full_grad.norm()


def test_compiled_and_eager_give_the_same_loss_and_gradients():
    torch.manual_seed(0)
    model = CoCa(PRESETS["tiny"]).cuda()
    images, tokens = batch("cuda")
    eager, eager_grad = loss_and_grads(model, images, tokens, autocast=False)
    compiled, compiled_grad = loss_and_grads(torch.compile(model), images, tokens, autocast=False)
    assert compiled == pytest.approx(eager, rel=1e-5)
    torch.testing.assert_close(compiled_grad, eager_grad, atol=1e-5, rtol=1e-4)


def test_cached_decoding_on_the_gpu_matches_uncached_and_the_cpus_logits():
    torch.manual_seed(0)
    model = CoCa(PRESETS["tiny"]).eval()
    images, tokens = batch("cpu", B=8)
    with torch.inference_mode():
        cpu_logits = model(images, tokens)["logits"]
        model.cuda()
        gpu_logits = model(images.cuda(), tokens.cuda())["logits"].cpu()
    torch.testing.assert_close(gpu_logits, cpu_logits, atol=1e-4, rtol=1e-4)  # float32 on both
    cached, cached_scores = generate(model, images.cuda(), max_new=24, min_new=24, use_cache=True)
    uncached, uncached_scores = generate(model, images.cuda(), max_new=24, min_new=24, use_cache=False)
    assert cached.device.type == "cuda" and torch.equal(cached, uncached)
    torch.testing.assert_close(cached_scores, uncached_scores, atol=1e-3, rtol=0)


@pytest.mark.parametrize("accum", [1, 2])
def test_the_trainers_steps_between_two_reads_of_the_logs_never_wait_for_the_gpu(tmp_path, accum):
    # a read makes the CPU wait for the GPU (step.read_logs, every --log-every steps); between two
    # reads nothing may: CUDA's sync debug mode raises at any synchronising call
    import train
    from coca_min.train.report import Progress
    from coca_min.train.step import read_logs, train_step
    from coca_min.train.trainer import leave, start

    args = train.parse_args(["--size", "tiny", "--device", "cuda", "--no-compile", "--steps", "10", "--log-every", "100",
                             "--accum", str(accum), "--out", str(tmp_path / "run"), "--workers", "0"])  # fmt: skip
    run = start(args)
    run.progress = Progress(None, 0, "", enabled=False)
    train_step(run)  # the first step allocates, and may wait
    read_logs(run)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            train_step(run)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    read_logs(run)
    assert [row["step"] for row in run.state.history] == [1, 2, 3, 4]
    leave(run)
