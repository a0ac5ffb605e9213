"""Checkpoints round-trip; sample.py captions, classifies and searches, and fails clearly."""

import runpy
from pathlib import Path

import pytest
import torch
from PIL import Image

from coca_min import PRESETS, CoCa, load_model
from coca_min.checkpoint import load_checkpoint, save_checkpoint
from coca_min.data.datasets import TinyShapes
from coca_min.data.synthetic import shapes

SAMPLE = Path(__file__).resolve().parents[1] / "sample.py"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    model = CoCa(PRESETS["tiny"])
    save_checkpoint(folder / "ckpt.pt", model, TinyShapes("val", limit=1).tokenizer, step=7)
    val = TinyShapes("val", limit=3)
    for i in range(3):
        Image.fromarray(shapes.PALETTE[val.pixels[i].numpy()]).save(folder / f"image{i}.png")
    return folder


def run_sample(monkeypatch, capsys, *args):
    monkeypatch.setattr("sys.argv", ["sample.py", *map(str, args)])
    runpy.run_path(str(SAMPLE), run_name="__main__")
    return capsys.readouterr().out


def test_checkpoint_round_trip(checkpoint):
    saved = load_checkpoint(checkpoint / "ckpt.pt")
    assert saved["step"] == 7 and saved["tokenizer"].vocab_size == 366
    torch.manual_seed(0)
    fresh = CoCa(PRESETS["tiny"])
    loaded = load_model(checkpoint / "ckpt.pt")
    for (name, a), (_, b) in zip(fresh.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    assert not list(checkpoint.glob("*.tmp"))  # written to a temporary file, then renamed


def test_checkpoint_of_a_compiled_model_has_plain_keys(tmp_path):
    model = CoCa(PRESETS["tiny"])
    compiled = torch.compile(model)  # wraps as _orig_mod; nothing is compiled until called
    save_checkpoint(tmp_path / "c.pt", compiled)
    keys = torch.load(tmp_path / "c.pt", weights_only=True)["model"].keys()
    assert keys == model.state_dict().keys() and not any("_orig_mod" in k for k in keys)


def test_sample_captions_images(monkeypatch, capsys, checkpoint):
    images = [checkpoint / f"image{i}.png" for i in range(2)]
    out = run_sample(monkeypatch, capsys, "--checkpoint", checkpoint / "ckpt.pt", "--image", *images, "--max-length", 6)
    lines = out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{images[0]}: ")
    out = run_sample(monkeypatch, capsys, "--checkpoint", checkpoint / "ckpt.pt", "--image", images[0],
                     "--method", "beam", "--beams", 2, "--prompt", "a small", "--max-length", 4)  # fmt: skip
    assert out.startswith(f"{images[0]}: a small")


def test_sample_zero_shot_and_search(monkeypatch, capsys, checkpoint):
    out = run_sample(monkeypatch, capsys, "--checkpoint", checkpoint / "ckpt.pt", "--image", checkpoint / "image0.png",
                     "--classes", "a red circle", "a blue square", "a green cross")  # fmt: skip
    assert out.splitlines()[0].startswith("zero-shot: softmax over the given prompts only")
    percents = [float(line.split("%")[0]) for line in out.splitlines()[2:]]
    assert len(percents) == 3 and sum(percents) == pytest.approx(100, abs=0.2)
    moved = checkpoint / "search"
    moved.mkdir(exist_ok=True)
    for i in range(3):
        (moved / f"image{i}.png").write_bytes((checkpoint / f"image{i}.png").read_bytes())
    out = run_sample(monkeypatch, capsys, "--checkpoint", checkpoint / "ckpt.pt", "--query", "a red circle",
                     "--folder", moved, "--top", 2)  # fmt: skip
    assert out.splitlines()[0] == 'images ranked for "a red circle":' and len(out.splitlines()) == 3
    (moved / "broken.png").write_bytes(b"not a png")  # one bad file does not stop a search of the rest
    monkeypatch.setattr("sys.argv", ["sample.py", "--checkpoint", str(checkpoint / "ckpt.pt"), "--query", "red",
                                     "--folder", str(moved), "--top", "5"])  # fmt: skip
    runpy.run_path(str(SAMPLE), run_name="__main__")
    out, err = capsys.readouterr()
    assert err == f"warning: skipping 1 of 4 images that cannot be read: {moved / 'broken.png'}\n"
    assert len(out.splitlines()) == 4 and "broken" not in out  # the three readable images, ranked


def test_sample_a_prompt_too_long_for_the_context_is_one_error(monkeypatch, capsys, checkpoint):
    # the other bad inputs of sample.py: tests/test_bad_input.py
    with pytest.raises(SystemExit, match=r"error: the prompt \(\d+ tokens\) leaves no room in the context of 32"):
        run_sample(monkeypatch, capsys, "--checkpoint", checkpoint / "ckpt.pt", "--image", checkpoint / "image0.png",
                   "--prompt", "a red circle " * 20)  # fmt: skip
