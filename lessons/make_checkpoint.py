"""Make lessons/assets/tiny_coca.pt, the trained tiny model the lessons read, from a train.py run.

    python train.py --size tiny --steps 1123 --out out/lesson_ckpt
    python lessons/make_checkpoint.py out/lesson_ckpt/ckpt.pt

1,123 steps is what an unloaded default run (`python train.py --size tiny`, a 3.75-minute
budget) reaches on the project's 2-core machine; fixing it makes the checkpoint independent of
how busy the machine was. The weights are stored in float16 (half the size, under 4 MB); the
model, its config and its tokenizer load with `load_model` and `load_checkpoint`, and
with `torch.load(weights_only=True)`. Nothing of the optimizer or the run's history is kept.
"""

import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from coca_min.checkpoint import read_checkpoint  # noqa: E402

OUT = Path(__file__).resolve().parent / "assets" / "tiny_coca.pt"


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: python lessons/make_checkpoint.py RUN/ckpt.pt")
    run = read_checkpoint(sys.argv[1])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    small = {
        "model": {name: weight.half() for name, weight in run["model"].items()},  # float16: half the bytes
        "config": run["config"],
        "tokenizer": run["tokenizer"],
        "step": run["step"],
        "made_by": f"python train.py --size tiny --steps {run['step']} (then lessons/make_checkpoint.py), commit {commit}",
    }
    OUT.parent.mkdir(exist_ok=True)
    torch.save(small, OUT)
    print(f"{OUT.relative_to(Path.cwd()) if OUT.is_relative_to(Path.cwd()) else OUT}: {OUT.stat().st_size / 1e6:.2f} MB, step {run['step']}")


if __name__ == "__main__":
    main()
