"""Reading checkpoints: memory-mapped on the CPU, so that a resume copies to each device only
what it holds (a GPU of a sharded run never receives the whole run)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from coca_min import PRESETS, CoCa
from coca_min.checkpoint import read_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]

READ = """
import os, sys
from coca_min.checkpoint import read_checkpoint
resident = lambda: int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")  # bytes now
before = resident()
saved = read_checkpoint(sys.argv[1])
assert saved["optimizer"]["big"].shape == (64, 2**20)
print((resident() - before) / 2**20)  # MiB read into memory
"""


@pytest.mark.skipif(not Path("/proc/self/statm").is_file(), reason="reads the resident memory from Linux's /proc")
def test_reading_a_checkpoint_maps_it_and_reads_nothing_until_used(tmp_path):
    # 256 MiB of "optimizer state" beside a tiny model: mapped, not read (before: all of it, onto
    # the resuming device). The resident memory of a fresh process, in MiB, by 32 MiB's margin.
    model = CoCa(PRESETS["tiny"])
    save_checkpoint(tmp_path / "ckpt.pt", model, optimizer={"big": torch.ones(64, 2**20)})
    grown = float(subprocess.run([sys.executable, "-c", READ, str(tmp_path / "ckpt.pt")], cwd=ROOT, check=True,
                                 capture_output=True, text=True).stdout)  # fmt: skip
    assert grown < 32, f"reading the checkpoint made the process {grown:.0f} MiB larger"


def test_a_read_checkpoint_is_on_the_cpu_and_loads_into_a_model(tmp_path):
    model = CoCa(PRESETS["tiny"])
    save_checkpoint(tmp_path / "ckpt.pt", model)
    saved = read_checkpoint(tmp_path / "ckpt.pt")
    assert all(t.device.type == "cpu" for t in saved["model"].values())
    fresh = CoCa(PRESETS["tiny"])
    fresh.load_state_dict(saved["model"])
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
