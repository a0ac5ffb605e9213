"""train.py end to end on the CPU: short runs, exact resume, NaN stop, Ctrl-C, torchrun."""

import ast
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image

import train
from coca_min import PRESETS, CoCa
from coca_min.checkpoint import load_checkpoint, read_checkpoint
from coca_min.schedule import FakeClock
from coca_min.train import report as train_report
from coca_min.train import state, trainer

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--batch-size", "16", "--eval-images", "24", "--threads", "2"]
CONSTANT_LR = ["--warmup", "0", "--min-lr-ratio", "1"]  # the schedule does not depend on --steps


def run(out, *args):
    train.main(["--out", str(out), *QUICK, *map(str, args)])
    return read_checkpoint(Path(out) / "ckpt.pt")


def test_short_run_lowers_the_loss_and_writes_report_history_and_plots(tmp_path):
    saved = run(tmp_path, "--steps", 40, "--batch-size", 32, "--lr", 3e-3)
    losses = [h["loss"] for h in saved["history"]]
    written = json.loads((tmp_path / "history.json").read_text())  # a plain file to plot from
    assert written == {"history": saved["history"], "evaluations": saved["evaluations"]}
    assert len(losses) == 40 and sum(losses[-5:]) / 5 < 0.75 * sum(losses[:5]) / 5
    report = json.loads((tmp_path / "report.json").read_text())
    assert {"zero_shot", "test", "test_comp", "run"} <= set(report)
    assert 0 <= report["test"]["image_to_text_R@1"] <= 1 and report["run"]["steps"] == 40
    for picture in ["losses.png", "lr.png", "metrics.png", "confusion.png"]:
        assert (tmp_path / picture).stat().st_size > 5000, picture
    logged = {"val_loss", "image_to_text_R@1", "text_to_image_R@1", "zero_shot_top1", "zero_shot_top1_held_out",
              "zero_shot_colour", "zero_shot_shape", "caption_object_F1", "caption_object_F1_comp"}  # fmt: skip
    assert saved["evaluations"] and set(saved["evaluations"][-1]) == {"step"} | logged
    assert all(0 <= value <= 1 for name, value in saved["evaluations"][-1].items() if name not in ("step", "val_loss"))
    assert load_checkpoint(tmp_path / "ckpt.pt")["model"].config.vocab_size == 366


def test_resume_with_another_recipe_says_so(tmp_path, capsys):
    run(tmp_path, "--steps", 2)
    capsys.readouterr()
    run(tmp_path, "--steps", 3, "--resume", "--lr", 1e-3, "--batch-size", 8)
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert notes == ["note: resuming with --batch-size 8 (the run used 16), --lr 0.001 (the run used 0.002): the run "
                     "goes on, but not as it would have"]  # fmt: skip


def test_resume_keeps_the_runs_own_settings_unless_given_again(tmp_path, capsys):
    run(tmp_path, "--steps", 2, *CONSTANT_LR, "--lr", 1e-3, "--seed", 3, "--caption-weight", 1.5)
    assert json.loads((tmp_path / "args.json").read_text())["lr"] == 1e-3  # a plain file, read before torch
    capsys.readouterr()
    resumed = run(tmp_path, "--steps", 3, "--resume")  # not given again: the run's lr, seed, weights
    assert "note:" not in capsys.readouterr().out
    assert resumed["history"][-1]["lr"] == 1e-3 and resumed["args"]["seed"] == "3" and resumed["args"]["caption_weight"] == "1.5"
    with pytest.raises(SystemExit, match=r"--minutes: .*ckpt\.pt is a run of a fixed number of steps \(3\); give --steps N"):
        run(tmp_path, "--minutes", 1, "--resume")


def test_resume_continues_exactly(tmp_path):
    straight = run(tmp_path / "straight", "--steps", 20, *CONSTANT_LR, "--eval-every", 10)
    run(tmp_path / "split", "--steps", 10, *CONSTANT_LR)
    resumed = run(tmp_path / "split", "--steps", 20, *CONSTANT_LR, "--eval-every", 10, "--resume")
    assert resumed["step"] == straight["step"] == 20
    a, b = straight["history"][-1]["loss"], resumed["history"][-1]["loss"]
    assert abs(a - b) <= 1e-6, (a, b)
    for (name, x), y in zip(straight["model"].items(), resumed["model"].values()):
        torch.testing.assert_close(x, y, atol=1e-6, rtol=0, msg=name)


def test_accumulation_gives_the_losses_of_the_whole_step(tmp_path):
    one = run(tmp_path / "one", "--steps", 1, "--eval-every", 10)
    two = run(tmp_path / "two", "--steps", 1, "--eval-every", 10, "--accum", 2)  # the same 16 pairs as 2 x 8
    for key in ["caption", "contrastive", "loss"]:  # the caption token mean and the negatives of all 16
        a, b = one["history"][0][key], two["history"][0][key]
        assert abs(a - b) <= 1e-5, (key, a, b)


def lr_steps_within_bound(history, peak, warmup, min_ratio=0.05):
    """The largest change of lr between consecutive steps, and the bound it must keep: the larger
    of one warm-up increment and the steepest step of the cosine over the final number of steps."""
    lrs = [h["lr"] for h in history]
    largest = max(abs(b - a) for a, b in zip(lrs, lrs[1:]))
    decay_steps = len(lrs) - warmup
    steepest_cosine = peak * (1 - min_ratio) * 0.5 * math.pi / decay_steps  # max |d lr / d step|
    return largest, max(peak / warmup, steepest_cosine)


def test_time_budget_plans_a_continuous_schedule_evaluated_at_its_quarters(tmp_path, capsys):
    # a fake clock: every step takes exactly 0.25 s, however busy the machine is. 0.35 minutes
    # are 21 s, so 84 steps; planned after 21 (the first step and 20 timed ones)
    saved = run(tmp_path, "--minutes", 0.35, "--fake-step-seconds", 0.25, "--lr", 1e-3, "--warmup", 10)
    assert saved["step"] == saved["total_steps"] == len(saved["history"]) == 84
    largest, bound = lr_steps_within_bound(saved["history"], 1e-3, warmup=10)
    assert largest <= bound * 1.0001, (largest, bound)  # no jump when the plan arrives
    assert saved["history"][-1]["lr"] <= 0.06 * 1e-3  # the cosine reached its floor (0.05 x peak)
    assert [e["step"] for e in saved["evaluations"]] == [21, 42, 63, 84]  # the quarters of 84
    err = capsys.readouterr().err  # not a terminal: plain progress lines, no progress-bar redraws
    assert "\r" not in err and "training CoCa-tiny: step 84/84  loss" in err


def test_a_plan_that_grows_evaluates_each_quarter_once(tmp_path, monkeypatch):
    # seen on a real run: the machine sped up, the plan grew from 1,068 to 1,128 steps and moved
    # each quarter just past the evaluation made for it, which then ran again (8 evaluations)
    class SpeedingUpClock(FakeClock):
        def __call__(self):
            self.tick = 0.25 if self.now < 8 else 0.1  # 0.25 s steps, then 0.1 s steps
            return super().__call__()

    monkeypatch.setattr(state, "FakeClock", SpeedingUpClock)  # what `plan` times a run with
    saved = run(tmp_path, "--minutes", 0.2, "--fake-step-seconds", 0.25)
    assert saved["step"] == saved["total_steps"] > 60  # the plan did grow past the first 48 steps
    evaluated = [e["step"] for e in saved["evaluations"]]
    assert len(evaluated) == 4 and evaluated[-1] == saved["step"], evaluated


def test_resumed_time_budget_plans_from_its_own_steps(tmp_path):
    # interrupted at step 15 (a NaN stop) with the last checkpoint at step 10, before any plan
    budget = ["--minutes", 0.2, "--fake-step-seconds", 0.25, "--eval-every", 10]  # 12 s: 48 steps
    with pytest.raises(SystemExit, match="the loss is nan at step 15"):
        run(tmp_path, *budget, "--nan-at-step", 15)
    assert read_checkpoint(tmp_path / "ckpt.pt")["total_steps"] is None
    saved = run(tmp_path, *budget, "--resume")  # 2.5 s spent; plans after its own 21 steps
    assert saved["step"] == saved["total_steps"] == 48
    assert [h["step"] for h in saved["history"]] == list(range(1, 49))


def test_training_keeps_the_logit_scale_at_most_100(tmp_path, monkeypatch):
    original = CoCa.reset_parameters

    def start_above_the_cap(model):  # as if a large step had pushed s = 1/σ to e^6 ≈ 403
        original(model)
        with torch.no_grad():
            model.log_logit_scale.fill_(6.0)

    monkeypatch.setattr(CoCa, "reset_parameters", start_above_the_cap)
    saved = run(tmp_path, "--steps", 2, "--eval-every", 10)
    assert saved["model"]["log_logit_scale"].item() <= math.log(100.0) + 1e-6


def test_resume_refuses_a_different_model_config(tmp_path, monkeypatch):
    run(tmp_path, "--steps", 2)
    monkeypatch.setitem(PRESETS, "tiny", replace(PRESETS["tiny"], n_multi=3, text_mlp=256))
    with pytest.raises(SystemExit, match=r"different model config \(.*n_multi: checkpoint 2 vs now 3.*text_mlp"):
        run(tmp_path, "--steps", 4, "--resume")


def test_the_losses_are_read_from_the_device_once_per_log_interval_and_before_a_save(tmp_path, monkeypatch):
    # a read makes the CPU wait for a GPU: every --log-every steps, before each save, not each step
    from coca_min.train import step

    reads, real = [], step.read_logs

    def counted(run, *args):
        reads.append((run.state.step, len(run.unread)))  # (step, steps whose scalars it reads)
        return real(run, *args)

    monkeypatch.setattr(step, "read_logs", counted)
    monkeypatch.setattr(trainer, "read_logs", counted)
    saved = run(tmp_path, "--steps", 7, "--log-every", 3, "--eval-every", 5)
    assert reads == [(3, 3), (5, 2), (6, 1), (7, 1), (7, 0)]  # 3, 6, the last; the saves at 5 and 7
    assert [row["step"] for row in saved["history"]] == list(range(1, 8))
    assert all(math.isfinite(row["grad_norm"]) and row["grad_norm"] > 0 for row in saved["history"])


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(SystemExit, match=r"the loss is nan at step 8.*last good checkpoint is .*ckpt.pt \(step 5\)"):
        run(tmp_path, "--steps", 12, "--eval-every", 5, "--nan-at-step", 8)
    saved = load_checkpoint(tmp_path / "ckpt.pt")
    assert saved["step"] == 5 and all(torch.isfinite(p).all() for p in saved["model"].parameters())


def start_a_long_run(out, stderr):
    """train.py in a subprocess, returned once its first checkpoint exists: written after the
    Ctrl-C handler is in place (a wait, not a race: no speed is assumed)."""
    command = [sys.executable, "train.py", "--out", str(out), *QUICK, "--steps", "100000"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True)
    while not (out / "ckpt.pt").exists() and process.poll() is None:
        time.sleep(0.2)
    return process


def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    process = start_a_long_run(tmp_path, stderr=subprocess.STDOUT)
    process.send_signal(signal.SIGINT)  # the step under way finishes and is saved
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 130, output  # 128 + SIGINT, as a shell expects of an interrupted command
    saved = read_checkpoint(tmp_path / "ckpt.pt")
    assert saved["reason"] == "interrupted" and saved["step"] > 0
    assert "continue with --resume" in output


def test_a_second_ctrl_c_stops_at_once_in_one_line(tmp_path):
    process = start_a_long_run(tmp_path, stderr=subprocess.PIPE)
    process.send_signal(signal.SIGINT)
    time.sleep(0.1)
    process.send_signal(signal.SIGINT)  # while the step under way runs, while it is saved, or (both as one) after
    output, errors = process.communicate(timeout=600)
    assert process.returncode == 130 and "Traceback" not in errors, errors
    last = (output + errors).strip().splitlines()[-1]
    assert last.startswith(("stopped at once by Ctrl-C; ", "interrupted: saved ")), output + errors
    read_checkpoint(tmp_path / "ckpt.pt")  # whichever came first, the checkpoint is whole


def test_ctrl_c_that_stops_at_once_names_the_last_checkpoint(tmp_path, monkeypatch, capsys):
    def interrupted(args):  # the second Ctrl-C, raised in the middle of a step
        args.out.mkdir(parents=True)
        (args.out / "ckpt.pt").write_bytes(b"saved before")
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "train", interrupted)
    with pytest.raises(SystemExit) as stopped:
        train.main(["--out", str(tmp_path / "run"), "--steps", "5"])
    assert stopped.value.code == 130
    assert capsys.readouterr().err == f"\nstopped at once by Ctrl-C; {tmp_path / 'run' / 'ckpt.pt'} is the last checkpoint saved\n"


TORCHRUN_TRAINING = ["train.py", "--size", "tiny", "--minutes", "0.1", "--fake-step-seconds", "0.25", "--batch-size", "16",
                     "--accum", "2", "--eval-images", "24", "--threads", "1"]  # fmt: skip


@pytest.mark.distributed
def test_torchrun_two_processes_on_cpu_with_the_default_time_budget(tmp_path):
    # the default path: no --steps, so rank 0's plan is broadcast to rank 1 (on the group's device).
    # At the same time, the same run on two "machines": two launchers of one process each, meeting
    # at a c10d rendezvous on the loopback address (as two nodes meet at the first node's address).
    # The fake clock makes both plans the same however busy the machine is.
    one_node = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                *TORCHRUN_TRAINING, "--out", str(tmp_path / "one_node")]  # fmt: skip
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    node = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=coca_min_test", *TORCHRUN_TRAINING,
            "--out", str(tmp_path / "two_nodes")]  # fmt: skip
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo")  # loopback only
    runs = [subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for command in [one_node, node, node]]  # fmt: skip
    outputs = [run.communicate(timeout=600)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0], "\n".join(out[-2000:] for out in outputs)
    assert [p.name for p in (tmp_path / "one_node").glob("*.pt")] == ["ckpt.pt"]
    saved = read_checkpoint(tmp_path / "one_node" / "ckpt.pt")
    assert saved["step"] == saved["total_steps"] == 24  # 6 s of 0.25 s steps, planned at step 21
    assert (tmp_path / "one_node" / "report.json").exists()
    two = read_checkpoint(tmp_path / "two_nodes" / "ckpt.pt")
    assert two["step"] == 24
    for name, value in saved["model"].items():  # two nodes of one process train as one node of two
        torch.testing.assert_close(two["model"][name], value, atol=1e-6, rtol=0, msg=name)


def torchrun(*args, processes=2):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}", "train.py",
               *QUICK[:-1], "1", *CONSTANT_LR, *map(str, args)]  # fmt: skip  (one thread per process)
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(*runs):
    outputs = [run.communicate(timeout=600)[0] for run in runs]
    assert [run.returncode for run in runs] == [0] * len(runs), "\n".join(out[-3000:] for out in outputs)
    return outputs


@pytest.mark.distributed
def test_fsdp_training_resumes_a_sharded_checkpoint_to_the_same_next_step(tmp_path):
    from coca_min.data.datasets import TinyShapes
    from coca_min.data.shards import write_shards

    # FSDP2 at world size 2 with activation checkpointing and --accum 2: 3 steps at once (whole),
    # or 2 steps saved sharded and resumed to the 3rd, by FSDP (saving it gathered) and by one plain
    # process (another number of ranks: DCP re-shards). At the same time FSDP from tar shards,
    # each rank reading its own
    val = TinyShapes("val", limit=64)  # 8 shards of 8: 4 for each rank
    rgb = val.palette[val.pixels.long()].numpy()
    write_shards(((f"{i:04d}", rgb[i], val.captions[i]) for i in range(64)), tmp_path / "shards", per_shard=8)
    fsdp = ["--fsdp", "--activation-checkpointing", "--accum", "2"]
    finish(torchrun("--out", tmp_path / "whole", "--steps", 3, *fsdp),
           torchrun("--out", tmp_path / "sharded", "--steps", 2, *fsdp),
           torchrun("--out", tmp_path / "from_shards", "--steps", 3, "--fsdp", "--data", tmp_path / "shards"))  # fmt: skip
    sharded = read_checkpoint(tmp_path / "sharded" / "ckpt.pt")
    assert sharded["optimizer"] is None and [p.name for p in (tmp_path / "sharded" / "ckpt.shards").iterdir()] == ["step-00000002"]
    positions = read_checkpoint(tmp_path / "from_shards" / "ckpt.pt")["data_positions"]  # 8 pairs a step on each rank
    assert [p["epoch"] for p in positions] == [0, 0] and [sum(p["done"].values()) for p in positions] == [24, 24]
    assert not set(positions[0]["done"]) & set(positions[1]["done"])  # each rank its own shards
    shutil.copytree(tmp_path / "sharded", tmp_path / "one_process")
    one_process = subprocess.Popen([sys.executable, "train.py", "--out", str(tmp_path / "one_process"), *QUICK,
                                    *CONSTANT_LR, "--steps", "3", "--no-fsdp", "--resume"],
                                   cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    finish(torchrun("--out", tmp_path / "sharded", "--steps", 3, "--checkpoint", "gathered", "--resume"), one_process)
    resumed = read_checkpoint(tmp_path / "sharded" / "ckpt.pt")
    assert json.loads((tmp_path / "sharded" / "args.json").read_text())["fsdp"]  # the run's --fsdp, kept
    assert resumed["shards"] is None and resumed["optimizer"]["state"] and not (tmp_path / "sharded" / "ckpt.shards").exists()
    whole = read_checkpoint(tmp_path / "whole" / "ckpt.pt")
    # (FSDP builds its model on the meta device and initialises each rank's shards: other starting
    # weights than a plain run's, so DDP is not compared here; tests/test_distributed.py compares a
    # sharded step with one process's from the same weights)
    for name, tolerance in [("sharded", 1e-6), ("one_process", 1e-6)]:
        other = read_checkpoint(tmp_path / name / "ckpt.pt")
        losses = [[h["loss"] for h in run["history"]] for run in (other, whole)]
        assert other["step"] == 3 and losses[0] == pytest.approx(losses[1], rel=1e-6), (name, losses)
        for key, value in whole["model"].items():
            if key.endswith("k_proj.bias"):  # gradient 0 but for float noise (softmax ignores a constant
                continue  # added to a row's scores), which AdamW's division by its size magnifies to ±lr
            torch.testing.assert_close(other["model"][key], value, atol=tolerance, rtol=0, msg=f"{name}: {key}")
    assert whole["shards"] == "ckpt.shards/step-00000003"
    model = load_checkpoint(tmp_path / "whole" / "ckpt.pt")["model"]  # sharded, but the weights whole: one device
    assert model(torch.zeros(1, 3, 48, 48), torch.tensor([[1, 5, 6]]))["logits"].shape == (1, 2, model.config.vocab_size)


def write_manifest(folder, count=32, bad_row=True):
    """`count` tiny_data images as PNG files and a JSONL manifest of them (plus a row without a
    caption): real data on disk, as a user's would be."""
    from coca_min.data.datasets import TinyShapes
    from coca_min.data.synthetic import shapes

    (folder / "images").mkdir(parents=True)
    val = TinyShapes("val", limit=count)
    rows = []
    for i in range(count):
        Image.fromarray(shapes.PALETTE[val.pixels[i].numpy()]).save(folder / "images" / f"{i}.png")
        rows.append(json.dumps({"image": f"{i}.png", "caption": val.captions[i][0]}))
    if bad_row:
        rows.append(json.dumps({"image": "0.png", "caption": None}))
    (folder / "pairs.jsonl").write_text("\n".join(rows) + "\n")
    return folder / "pairs.jsonl"


def test_real_data_from_a_manifest_trains_and_a_bad_row_is_one_warning_line(tmp_path):
    manifest = write_manifest(tmp_path)
    Image.new("RGB", (1, 1)).save(tmp_path / "images" / "dot.png")  # scraped sets hold 1-pixel placeholders
    with open(manifest, "a") as f:
        f.write(json.dumps({"image": "dot.png", "caption": "a placeholder"}) + "\n")
    coco = {"images": [{"id": i, "file_name": f"{i}.png"} for i in range(8)],
            "annotations": [{"image_id": i, "caption": f"image {i}"} for i in range(8)] + [{"image_id": 99, "caption": "x"}]}
    (tmp_path / "val.json").write_text(json.dumps(coco, indent=1))  # COCO, pretty-printed: read as COCO, not JSONL
    command = [sys.executable, str(ROOT / "train.py"), "--data", "pairs.jsonl", "--images", "images", "--val-data",
               "val.json", "--vocab-size", "300", "--steps", "4", "--batch-size", "16", "--threads", "2"]  # fmt: skip
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in result.stderr.splitlines() if "warn" in line.lower()]
    assert warnings == [
        "warning: skipping 1 of 34 rows of pairs.jsonl without an image and a caption: line 33 (no caption)",
        "warning: skipping 1 of 9 annotations of val.json without a usable caption: annotations[8] (image_id 99 names no image)",
    ], result.stderr  # one line each
    saved = load_checkpoint(tmp_path / "out" / "tiny" / "ckpt.pt")
    assert saved["step"] == 4 and saved["tokenizer"].vocab_size == saved["model"].config.vocab_size == 300
    report = json.loads((tmp_path / "out" / "tiny" / "report.json").read_text())
    assert 0 <= report["val"]["image_to_text_R@1"] <= 1 and report["run"]["steps"] == 4
    assert manifest.read_text().count("\n") == 34  # the manifest is read, never changed


def test_training_from_tar_shards_resumes_mid_epoch_exactly(tmp_path):
    # 40 tiny_data images in 7 shards of up to 6: 5 steps of 8 pairs cross shards and an epoch's
    # end (40 // 8 = 5 steps an epoch: step 6 starts the next); 3 steps, then resumed to 7, equal 7 at once
    from coca_min.data.datasets import TinyShapes
    from coca_min.data.shards import write_shards

    val = TinyShapes("val", limit=40)
    rgb = val.palette[val.pixels.long()].numpy()
    write_shards(((f"{i:04d}", rgb[i], val.captions[i]) for i in range(40)), tmp_path / "shards", per_shard=6)
    common = ["--data", tmp_path / "shards", "--batch-size", 8, *CONSTANT_LR, "--threads", 2]
    train.main([*map(str, ["--out", tmp_path / "whole", "--steps", 7, *common])])
    train.main([*map(str, ["--out", tmp_path / "resumed", "--steps", 3, *common])])
    position = read_checkpoint(tmp_path / "resumed" / "ckpt.pt")["data_positions"]
    assert len(position) == 1 and position[0]["epoch"] == 0 and sum(position[0]["done"].values()) == 24
    train.main([*map(str, ["--out", tmp_path / "resumed", "--steps", 7, "--resume", *common])])
    whole, resumed = (read_checkpoint(tmp_path / name / "ckpt.pt") for name in ["whole", "resumed"])
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in whole["history"]]
    assert resumed["data_positions"] == whole["data_positions"] and whole["data_positions"][0]["epoch"] == 1
    for name, value in whole["model"].items():
        assert torch.equal(resumed["model"][name], value), name


@pytest.mark.parametrize("workers", [0, 1])  # in this process, or in a data-loader worker
def test_a_strict_run_stops_in_one_line_on_an_image_that_breaks_after_the_check(tmp_path, monkeypatch, workers):
    write_manifest(tmp_path, bad_row=False)
    (tmp_path / "images" / "5.png").write_bytes(b"\x89PNG broken after the check")
    monkeypatch.setattr("coca_min.data.image_files._unreadable", lambda path, decode=False: None)  # the check passes it
    with pytest.raises(SystemExit, match=r"^stopping: could not decode .*5\.png \(.*\)\. The last good checkpoint is "
                                         r".*ckpt\.pt \(step \d\)\.$"):  # fmt: skip
        run(tmp_path / "out", "--data", tmp_path / "pairs.jsonl", "--images", tmp_path / "images", "--strict",
            "--vocab-size", "300", "--steps", "8", "--batch-size", "8", "--workers", workers)  # fmt: skip


def test_training_twice_into_one_folder_needs_resume_or_overwrite(tmp_path):
    assert run(tmp_path, "--steps", 1, "--resume", "auto")["step"] == 1  # auto, and nothing there: starts
    first = (tmp_path / "ckpt.pt").read_bytes()
    with pytest.raises(SystemExit):
        run(tmp_path, "--steps", 1)  # the message: tests/test_bad_input.py
    assert (tmp_path / "ckpt.pt").read_bytes() == first  # nothing lost
    saved = run(tmp_path, "--steps", 2, "--resume", "auto")  # auto, and a run there: continues it
    assert saved["step"] == 2 and [h["step"] for h in saved["history"]] == [1, 2]
    again = run(tmp_path, "--steps", 1, "--overwrite", "--seed", 1)
    assert again["step"] == 1 and len(again["history"]) == 1  # started again, not continued


COLLECTIVES = {"all_reduce", "all_gather", "broadcast", "barrier", "reduce", "gather", "scatter", "all_to_all",
               "all_gather_into_tensor", "all_gather_object", "broadcast_object_list", "reduce_scatter", "reduce_scatter_tensor", "send", "recv", "isend", "irecv"}


def calls_by_function(node, function=None):
    """(name of the enclosing function or None, call node) for every call in an AST."""
    for child in ast.iter_child_nodes(node):
        inside = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
        if isinstance(child, ast.Call):
            yield function, child
        yield from calls_by_function(child, inside)


def test_every_collective_goes_through_the_device_checked_functions():
    # NCCL takes only tensors on the GPU: a CPU tensor handed to a collective fails on GPUs only,
    # where the gloo tests cannot see it. So nothing calls torch.distributed's collectives but
    # the few functions of coca_min.train.distributed that check the device first (next test)
    checked = {"all_reduce", "all_gather", "all_gather_objects", "broadcast_object", "barrier"}
    direct = []
    paths = [ROOT / "train.py", ROOT / "sample.py", *sorted((ROOT / "coca_min").rglob("*.py"))]
    assert ROOT / "coca_min" / "train" / "step.py" in paths  # every sub-package is read
    for path in paths:
        for function, call in calls_by_function(ast.parse(path.read_text())):
            name = ast.unparse(call.func)
            if name.rsplit(".", 1)[0] in ("dist", "torch.distributed") and name.rsplit(".", 1)[-1] in COLLECTIVES:
                if not (path == ROOT / "coca_min" / "train" / "distributed.py" and function in checked):
                    direct.append(f"{path.relative_to(ROOT)}:{call.lineno} {name}")
    assert not direct, direct


def test_a_collective_refuses_a_tensor_off_the_process_groups_device(monkeypatch):
    from coca_min.train import distributed as D
    from coca_min.train.step import step_token_count

    sent = []
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_backend", lambda group=None: "nccl")  # as on GPUs
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    for name in ["all_reduce", "all_gather", "broadcast"]:
        monkeypatch.setattr(torch.distributed, name, lambda *a, **k: sent.append(a))
    assert D.device() == torch.device("cuda", 0)
    for call in [lambda: D.all_reduce(torch.ones(3)),
                 lambda: step_token_count([torch.ones(2, 5, dtype=torch.long)], pad_id=0),
                 lambda: D.all_gather([torch.ones(3), torch.ones(3)], torch.ones(3))]:  # fmt: skip
        with pytest.raises(RuntimeError, match=r"tensor on cpu; its tensors must live on cuda:0"):
            call()
    assert sent == []  # refused before anything was sent


def test_evaluation_during_training_reads_at_most_eval_images_of_every_split(tiny, monkeypatch, tmp_path):
    # --eval-images bounds every split the quick evaluation reads (test_comp's 128 did not obey)
    read = []
    real = train_report.TinyShapes

    def recording(split, *args, limit=None, **kwargs):
        read.append((split, limit))
        return real(split, *args, limit=limit, **kwargs)

    monkeypatch.setattr(train_report, "TinyShapes", recording)
    args = train.parse_args(["--eval-images", "8", "--out", str(tmp_path / "run")])  # not the reader's out/tiny
    val = real("val", limit=8)
    figures = trainer.evaluate_during_training(tiny, val.tokenizer, val, args, tiny.config)
    assert {split for split, _ in read} == {"classes", "val", "test_comp"}
    assert all(limit is not None and limit <= 8 for _, limit in read), read
    assert 0 <= figures["caption_object_F1_comp"] <= 1


def test_the_suites_train_py_arguments_never_name_the_readers_out_folder(tmp_path, monkeypatch):
    # A reader who ran `python train.py --size tiny` has out/tiny/ckpt.pt; a test that parsed
    # train.py's arguments with the default --out found that run and exited. So every call of
    # train.parse_args / train.main in the tests gives --out (or only asks for --help) ...
    calls = []
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        for function, call in calls_by_function(ast.parse(path.read_text())):
            here = function == "test_the_suites_train_py_arguments_never_name_the_readers_out_folder"  # (below, on purpose)
            if ast.unparse(call.func) in ("train.parse_args", "train.main") and call.args and not here:
                text = ast.unparse(call.args[0])
                if "'--out'" not in text and "'--help'" not in text:
                    calls.append(f"{path.name}:{call.lineno} {text[:80]}")
    assert not calls, calls
    # ... and with a reader's run in out/tiny of the working folder, such arguments still parse
    (tmp_path / "out" / "tiny").mkdir(parents=True)
    (tmp_path / "out" / "tiny" / "ckpt.pt").write_bytes(b"the reader's run")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):  # what the old test met
        train.parse_args(["--eval-images", "8"])
    assert train.parse_args(["--eval-images", "8", "--out", str(tmp_path / "run")]).eval_images == 8
