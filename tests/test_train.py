"""train.py end to end on the CPU: short runs, exact resume, NaN stop, Ctrl-C, torchrun."""

import json
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import train
from coca_min import PRESETS
from coca_min.checkpoint import load_checkpoint, read_checkpoint

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--batch-size", "16", "--eval-images", "24", "--threads", "2"]
CONSTANT_LR = ["--warmup", "0", "--min-lr-ratio", "1"]  # the schedule does not depend on --steps


def run(out, *args):
    train.main(["--out", str(out), *QUICK, *map(str, args)])
    return read_checkpoint(Path(out) / "ckpt.pt")


def test_short_run_lowers_the_loss_and_writes_report_and_plots(tmp_path):
    saved = run(tmp_path, "--steps", 40, "--batch-size", 32, "--lr", 3e-3)
    losses = [h["loss"] for h in saved["history"]]
    assert len(losses) == 40 and sum(losses[-5:]) / 5 < 0.75 * sum(losses[:5]) / 5
    report = json.loads((tmp_path / "report.json").read_text())
    assert {"zero_shot", "test", "test_comp", "run"} <= set(report)
    assert 0 <= report["test"]["image_to_text_R@1"] <= 1 and report["run"]["steps"] == 40
    for picture in ["losses.png", "lr.png", "metrics.png", "confusion.png"]:
        assert (tmp_path / picture).stat().st_size > 5000, picture
    assert saved["evaluations"] and "zero_shot_top1" in saved["evaluations"][-1]
    assert load_checkpoint(tmp_path / "ckpt.pt")["model"].config.vocab_size == 366


def test_resume_continues_exactly(tmp_path):
    straight = run(tmp_path / "straight", "--steps", 20, *CONSTANT_LR, "--eval-every", 10)
    run(tmp_path / "split", "--steps", 10, *CONSTANT_LR)
    resumed = run(tmp_path / "split", "--steps", 20, *CONSTANT_LR, "--eval-every", 10, "--resume")
    assert resumed["step"] == straight["step"] == 20
    a, b = straight["history"][-1]["loss"], resumed["history"][-1]["loss"]
    assert abs(a - b) <= 1e-6, (a, b)
    for (name, x), y in zip(straight["model"].items(), resumed["model"].values()):
        torch.testing.assert_close(x, y, atol=1e-6, rtol=0, msg=name)


def test_accumulation_logs_the_caption_mean_of_the_whole_step(tmp_path):
    one = run(tmp_path / "one", "--steps", 1, "--eval-every", 10)
    two = run(tmp_path / "two", "--steps", 1, "--eval-every", 10, "--accum", 2)  # the same 16 pairs as 2 x 8
    a, b = one["history"][0]["caption"], two["history"][0]["caption"]
    assert abs(a - b) <= 1e-5, (a, b)  # the mean over all 16 captions' tokens, not over the last 8's


def test_time_budget_runs_the_whole_schedule(tmp_path):
    saved = run(tmp_path, "--minutes", 0.1, "--lr", 1e-3)  # 6 s of training
    assert saved["step"] == saved["total_steps"] == len(saved["history"]) > 21  # planned after step 21
    assert saved["history"][-1]["lr"] <= 0.06 * 1e-3  # the cosine reached its floor (0.05 x peak)


def test_resume_refuses_a_different_model_config(tmp_path, monkeypatch):
    run(tmp_path, "--steps", 2)
    monkeypatch.setitem(PRESETS, "tiny", replace(PRESETS["tiny"], n_multi=3, text_mlp=256))
    with pytest.raises(SystemExit, match=r"different model config \(.*n_multi: checkpoint 2 vs now 3.*text_mlp"):
        run(tmp_path, "--steps", 4, "--resume")


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(SystemExit, match=r"the loss is nan at step 8.*last good checkpoint is .*ckpt.pt \(step 5\)"):
        run(tmp_path, "--steps", 12, "--eval-every", 5, "--nan-at-step", 8)
    saved = load_checkpoint(tmp_path / "ckpt.pt")
    assert saved["step"] == 5 and all(torch.isfinite(p).all() for p in saved["model"].parameters())


def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    command = [sys.executable, "train.py", "--out", str(tmp_path), *QUICK, "--steps", "100000"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not (tmp_path / "ckpt.pt").exists() and time.time() < deadline:  # training has begun
        time.sleep(0.5)
    time.sleep(3)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output
    saved = read_checkpoint(tmp_path / "ckpt.pt")
    assert saved["reason"] == "interrupted" and saved["step"] > 0
    assert "continue with --resume" in output


def test_torchrun_two_processes_on_cpu(tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "train.py",
               "--size", "tiny", "--steps", "3", "--out", str(tmp_path), "--batch-size", "16", "--eval-images", "24",
               "--threads", "1"]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert [p.name for p in tmp_path.glob("*.pt")] == ["ckpt.pt"]
    assert read_checkpoint(tmp_path / "ckpt.pt")["step"] == 3
    assert (tmp_path / "report.json").exists()
