"""bench.py and the FLOPs formula it divides by: the formula equals what torch counts, and the
benchmark runs (tiny, on the CPU) and prints what it promises. No test depends on the speed."""

import dataclasses

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import bench
from coca_min import PRESETS, CoCa
from coca_min.model.flops import forward_flops, training_flops
from coca_min.model.losses import coca_loss


def counted(run):
    # the plain attention kernel, whose matrix products the counter sees (not the fused one)
    with sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops()


@pytest.mark.parametrize("pooler_mode", ["cascade", "parallel"])
def test_the_flops_formula_equals_torchs_count_exactly(pooler_mode):
    config = dataclasses.replace(PRESETS["tiny"], pooler_mode=pooler_mode)
    torch.manual_seed(0)
    model, B = CoCa(config), 3
    images = torch.randn(B, 3, config.image_size, config.image_size)
    tokens = torch.randint(3, config.vocab_size, (B, config.context_length))  # full length: no padding
    assert counted(lambda: model(images, tokens)) == B * sum(forward_flops(config).values())
    step = counted(lambda: coca_loss(model(images, tokens), tokens, 0)["loss"].backward())
    assert step == B * training_flops(config, B)


def test_training_benchmark_prints_throughput_flops_memory_and_the_step_split(capsys):
    bench.main(["--size", "tiny", "--batch-size", "4", "--steps", "2", "--warmup", "1", "--peak-tflops", "1"])
    out = capsys.readouterr().out
    assert "coca_min bench | tiny | CPU" in out and "batch 4 | fp32" in out
    assert "images/s" in out and "tokens/s" in out and "forward" in out and "backward" in out and "optimizer" in out
    per_image = training_flops(PRESETS["tiny"], 4) / 1e9
    assert f"model FLOPs per image {per_image:.3f} GFLOP (training)" in out
    assert "% of 1 TFLOP/s (given)" in out and "peak memory" in out


def test_bf16_autocast_runs_on_the_cpu(capsys):
    bench.main(["--size", "tiny", "--batch-size", "2", "--steps", "1", "--warmup", "0", "--dtype", "bf16"])
    out = capsys.readouterr().out
    assert "| bf16" in out and "MFU: no peak known (--peak-tflops)" in out


def test_decoding_benchmark_gives_the_same_tokens_with_and_without_the_cache(capsys):
    bench.main(["--size", "tiny", "--decode", "--batch-size", "2", "--new-tokens", "5", "--repeats", "1"])
    out = capsys.readouterr().out
    assert "decoding 5 new tokens, batch 2 (median of 1): cached" in out and "same tokens: True" in out


def test_a_paper_size_training_step_on_a_cpu_is_refused_in_one_line():
    with pytest.raises(SystemExit, match=r"^error: a base training step on a CPU takes minutes"):
        bench.main(["--size", "base", "--device", "cpu"])


def test_comparing_with_open_clip_says_when_it_is_not_installed(capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_open_clip(name, *args, **kwargs):
        if name == "open_clip":
            raise ImportError("No module named 'open_clip'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_open_clip)
    bench.main(["--size", "tiny", "--batch-size", "2", "--steps", "1", "--warmup", "0", "--compare", "open_clip"])
    assert "open_clip: not installed" in capsys.readouterr().out
