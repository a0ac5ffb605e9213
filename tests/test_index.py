"""The embedding index: built once (resumable, broken files skipped and counted), searched by text
and by image, refused with another checkpoint's weights."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from coca_min.checkpoint import load_checkpoint, save_checkpoint
from coca_min.data.datasets import TINY_DATA, TinyShapes
from coca_min.data.synthetic import shapes
from coca_min.eval import index

CHECKPOINT = TINY_DATA.parent / "lessons" / "assets" / "tiny_coca.pt"  # the lessons' trained tiny model


def image_folder(folder, count=12):
    """`count` one-object test images as PNG files (their captions in `names`), and one broken file."""
    folder.mkdir()
    test = TinyShapes("classes", limit=count)
    for i in range(count):
        Image.fromarray(shapes.PALETTE[test.pixels[i].numpy()]).save(folder / f"{i:02d}.png")
    (folder / "99_broken.png").write_bytes(b"not a png")
    return [captions[0] for captions in test.captions]


def test_build_embeds_every_image_once_and_a_broken_file_is_skipped_and_counted(tmp_path):
    image_folder(tmp_path / "images")
    meta = index.build(CHECKPOINT, tmp_path / "images", tmp_path / "index", batch_size=5, progress=False)
    embeddings = np.load(tmp_path / "index" / "embeddings.npy")
    items = [json.loads(line) for line in (tmp_path / "index" / "items.jsonl").read_text().splitlines()]
    assert embeddings.dtype == np.float32 and embeddings.shape == (12, meta["embedding_dim"]) and meta["rows"] == 12
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1, atol=1e-5)
    assert [item["row"] for item in items] == list(range(12)) and meta["skipped"] == [str(tmp_path / "images" / "99_broken.png")]
    model = load_checkpoint(CHECKPOINT)["model"]
    image = index._load(items[3]["path"], model.config.image_size)
    with torch.inference_mode():
        expected = model.encode_image(image[None])[0][0].numpy()
    np.testing.assert_allclose(embeddings[3], expected, atol=1e-5)  # row 3 is file 03's embedding
    assert sorted(p.name for p in (tmp_path / "index").iterdir()) == ["embeddings.npy", "items.jsonl", "meta.json"]


def test_query_by_text_and_by_image_finds_the_matching_images(tmp_path):
    names = image_folder(tmp_path / "images")
    index.build(CHECKPOINT, tmp_path / "images", tmp_path / "index", progress=False)
    for i in [0, 5]:
        hits = index.query(tmp_path / "index", CHECKPOINT, text=names[i], k=3)
        assert names[int(hits[0][1]["path"][-6:-4])] == names[i]  # the best hit shows what the text says
        assert hits[0][0] >= hits[1][0] >= hits[2][0]
        by_image = index.query(tmp_path / "index", CHECKPOINT, image=tmp_path / "images" / f"{i:02d}.png", k=1)
        assert by_image[0][1]["path"].endswith(f"{i:02d}.png") and by_image[0][0] == pytest.approx(1, abs=1e-5)


def interrupt_load_at(monkeypatch, n):
    """Make the build's n-th image load raise KeyboardInterrupt (a Ctrl-C): -> (the loads so far, the real loader)."""
    calls, real = [], index._load

    def interrupted(path, size):
        calls.append(path)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(path, size)

    monkeypatch.setattr(index, "_load", interrupted)
    return calls, real


def test_an_interrupted_build_resumes_to_the_uninterrupted_index(tmp_path, monkeypatch):
    image_folder(tmp_path / "images")
    index.build(CHECKPOINT, tmp_path / "images", tmp_path / "whole", batch_size=4, progress=False)
    calls, real = interrupt_load_at(monkeypatch, 9)  # a Ctrl-C after two saved batches
    with pytest.raises(KeyboardInterrupt):
        index.build(CHECKPOINT, tmp_path / "images", tmp_path / "resumed", batch_size=4, progress=False)
    assert len(list((tmp_path / "resumed" / "parts").glob("*.npy"))) == 2
    calls.clear()
    monkeypatch.setattr(index, "_load", lambda path, size: calls.append(path) or real(path, size))
    index.build(CHECKPOINT, tmp_path / "images", tmp_path / "resumed", batch_size=4, progress=False)
    assert len(calls) == 13 - 8  # only what was not saved: 4 images and the broken file
    for name in ["embeddings.npy", "items.jsonl"]:
        assert (tmp_path / "resumed" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    calls.clear()
    index.build(CHECKPOINT, tmp_path / "images", tmp_path / "resumed", progress=False)  # nothing new: nothing embedded
    assert calls == [] and (tmp_path / "resumed" / "embeddings.npy").read_bytes() == (tmp_path / "whole" / "embeddings.npy").read_bytes()


def test_an_index_refuses_another_checkpoints_weights(tmp_path):
    image_folder(tmp_path / "images", count=3)
    index.build(CHECKPOINT, tmp_path / "images", tmp_path / "index", progress=False)
    loaded = load_checkpoint(CHECKPOINT)
    with torch.no_grad():
        loaded["model"].image_projection.weight.mul_(1.01)  # another run of the same config
    save_checkpoint(tmp_path / "other.pt", loaded["model"], loaded["tokenizer"])
    with pytest.raises(ValueError, match="not comparable; build another index"):
        index.query(tmp_path / "index", tmp_path / "other.pt", text="a red circle")
    with pytest.raises(ValueError, match="not comparable"):
        index.build(tmp_path / "other.pt", tmp_path / "images", tmp_path / "index", progress=False)


def test_the_command_queries_with_the_indexs_own_checkpoint_and_errors_are_one_line(tmp_path, capsys):
    names = image_folder(tmp_path / "images", count=6)
    index.main(["build", "--checkpoint", str(CHECKPOINT), "--images", str(tmp_path / "images"), "--out", str(tmp_path / "ix")])
    assert capsys.readouterr().out == f"{tmp_path / 'ix'}: 6 images embedded (128 numbers each), 1 skipped (do not decode)\n"
    index.main(["query", str(tmp_path / "ix"), "--text", names[2], "-k", "2"])  # no --checkpoint: meta.json's
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("  1. ") and names[int(lines[0].split()[2][-6:-4])] == names[2]
    with pytest.raises(SystemExit, match=r"^error: .*empty is not an index \(no meta.json\)"):
        (tmp_path / "empty").mkdir()
        index.main(["query", str(tmp_path / "empty"), "--text", "a red circle"])


def test_an_interrupted_build_refuses_to_resume_with_another_checkpoint(tmp_path, monkeypatch, capsys):
    """Regression: the resumed build used to add the other model's rows to the saved ones, unasked."""
    image_folder(tmp_path / "images", count=8)
    _, real = interrupt_load_at(monkeypatch, 5)  # a Ctrl-C after one saved batch
    with pytest.raises(SystemExit, match="interrupted: the batches embedded so far are saved in .*run the same command again"):
        index.main(["build", "--checkpoint", str(CHECKPOINT), "--images", str(tmp_path / "images"),
                    "--out", str(tmp_path / "ix"), "--batch-size", "4"])  # fmt: skip
    monkeypatch.setattr(index, "_load", real)
    with pytest.raises(FileNotFoundError, match="its build was interrupted; run the same build command again"):
        index.query(tmp_path / "ix", CHECKPOINT, text="a red circle")
    loaded = load_checkpoint(CHECKPOINT)
    with torch.no_grad():
        loaded["model"].image_projection.weight.mul_(1.01)
    save_checkpoint(tmp_path / "other.pt", loaded["model"], loaded["tokenizer"])
    with pytest.raises(ValueError, match="the interrupted build in .* not comparable"):
        index.build(tmp_path / "other.pt", tmp_path / "images", tmp_path / "ix", progress=False)
    meta = index.build(CHECKPOINT, tmp_path / "images", tmp_path / "ix", batch_size=4, progress=False)  # its own: resumes
    assert meta["rows"] == 8


def test_the_commands_arguments_are_checked_in_one_line(tmp_path, capsys):
    for argv, message in [(["build", "--checkpoint", "x.pt", "--images", "d", "--out", "o", "--batch-size", "0"], "must be at least 1"),
                          (["query", "ix", "--text", "a red circle", "-k", "0"], "must be at least 1"),
                          (["build", "--checkpoint", "x.pt", "--images", "d", "--out", str(CHECKPOINT)], "is a file; the index is a folder")]:  # fmt: skip
        with pytest.raises(SystemExit) as exit:
            index.main(argv)
        assert exit.value.code == 2 and message in capsys.readouterr().err
