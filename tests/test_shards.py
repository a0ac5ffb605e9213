"""Tar shards: every sample exactly once an epoch across ranks and workers, broken samples and
shards skipped and counted, and a position that resumes mid-shard exactly."""

import io
import json
import subprocess
import sys
import tarfile
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from coca_min.data.datasets import TINY_DATA
from coca_min.data.shards import ShardReader, advance, decode_sample, samples_of, shard_collate, write_shards
from coca_min.data.tokenizer import Tokenizer

TOKENIZER = Tokenizer.load(TINY_DATA / "tokenizer.json")


def make_shards(folder, n_shards=10, per_shard=7):
    rng = np.random.default_rng(0)
    samples = [(f"s{i:04d}", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), [f"a red circle {i}"])
               for i in range(n_shards * per_shard)]  # fmt: skip
    return write_shards(samples, folder, per_shard), samples


def reader(folder, **kwargs):
    return ShardReader(folder, TOKENIZER, image_size=8, context_length=16, **kwargs)


def read_all(dataset, workers, batch_size=3):
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=shard_collate)
    return [place for _, _, places in loader for place in places]


def test_every_sample_exactly_once_an_epoch_across_2_ranks_and_2_workers(tmp_path):
    paths, samples = make_shards(tmp_path)
    epochs = []
    for epoch in [0, 1]:
        places = []
        for rank in [0, 1]:
            dataset = reader(tmp_path, rank=rank, world=2)
            dataset.set_epoch(epoch)
            places += read_all(dataset, workers=2)
        counts = Counter(places)
        assert len(counts) == len(samples) and set(counts.values()) == {1}
        assert counts.keys() == {(p.name, i) for p in paths for i in range(7)}
        epochs.append(places)
    assert epochs[0] != epochs[1]  # the shards are dealt in another order each epoch


def test_a_broken_sample_is_skipped_and_counted_and_the_rest_is_read(tmp_path):
    good = io.BytesIO()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(good, format="PNG")
    members = [("a.png", good.getvalue()), ("a.txt", b"a red circle"),
               ("b.png", b"not a png at all"), ("b.txt", b"a blue square"),  # does not decode
               ("c.png", good.getvalue()),  # no caption
               ("d.png", good.getvalue()), ("d.json", json.dumps({"caption": ""}).encode()),  # empty caption
               ("e.jpg", good.getvalue()), ("e.json", json.dumps({"captions": ["a cyan cross", "x"]}).encode())]  # fmt: skip
    with tarfile.open(tmp_path / "000000.tar", "w") as shard:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            shard.addfile(info, io.BytesIO(data))
    dataset = reader(tmp_path, train=False)
    with pytest.warns(UserWarning, match=r"000000\.tar: 3 samples skipped \(b: the image does not decode"):
        places = [place for _, _, place in dataset]
    assert places == [("000000.tar", 0), ("000000.tar", 4)] and dataset.skipped == 3


def test_a_shard_that_breaks_off_gives_what_it_holds_and_says_so(tmp_path):
    paths, _ = make_shards(tmp_path, n_shards=1, per_shard=20)
    data = paths[0].read_bytes()
    paths[0].write_bytes(data[: len(data) // 2])  # a copy cut short
    dataset = reader(tmp_path, train=False)
    with pytest.warns(UserWarning, match=r"000000\.tar: (\d samples? skipped[^;]*; )?the shard breaks off") as caught:
        places = [place for _, _, place in dataset]
    assert "0 samples" not in str(caught[0].message)  # a half sample at the cut is one skipped; none is not said
    assert 5 < len(places) < 20 and places == [("000000.tar", i) for i in range(len(places))]


@pytest.mark.parametrize("workers_before, workers_after", [(0, 0), (2, 1)])
def test_resuming_mid_shard_reads_the_rest_of_the_epoch_exactly(tmp_path, workers_before, workers_after):
    paths, samples = make_shards(tmp_path, n_shards=3, per_shard=10)
    dataset = reader(tmp_path, rank=0, world=1)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=workers_before, collate_fn=shard_collate)
    done, consumed = {}, []
    for step, (_, _, places) in enumerate(loader):  # stop after 4 batches: mid-shard
        consumed += places
        advance(done, places)
        if step == 3:
            break
    assert any(0 < n < 10 for n in done.values())  # a shard is half read
    resumed = reader(tmp_path, rank=0, world=1, done=done)
    rest = read_all(resumed, workers=workers_after)
    assert Counter(consumed + rest) == Counter((p.name, i) for p in paths for i in range(10))


def test_items_hold_the_preprocessed_image_and_its_caption(tmp_path):
    _, samples = make_shards(tmp_path, n_shards=1, per_shard=3)
    image, tokens, place = next(iter(reader(tmp_path, train=False)))
    assert image.shape == (3, 8, 8) and place == ("000000.tar", 0)
    assert TOKENIZER.decode(tokens.tolist()) == samples[0][2][0]
    key, parts = next(samples_of(tmp_path / "000000.tar"))
    pixels, captions = decode_sample(parts)
    assert key == "s0000" and np.array_equal(pixels.permute(1, 2, 0).numpy(), samples[0][1])  # PNG: lossless


def test_write_shards_converts_a_manifest_folder(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(1)
    rows = []
    for i, fmt in enumerate(["PNG", "JPEG", "BMP"]):  # JPEG and PNG kept as they are, BMP as PNG
        Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(images / f"{i}.{fmt.lower()}", format=fmt)
        rows.append({"image": f"{i}.{fmt.lower()}", "caption": f"a green cross {i}"})
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    command = [sys.executable, "-m", "coca_min.data.shards", "--manifest", str(tmp_path / "m.jsonl"),
               "--images", str(images), "--out", str(tmp_path / "shards"), "--per-shard", "2"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "wrote 3 samples in 2 shards" in done.stdout, done.stderr
    read = [(key, sorted(parts)) for shard in sorted((tmp_path / "shards").glob("*.tar")) for key, parts in samples_of(shard)]
    assert read == [("00000000", ["json", "png"]), ("00000001", ["jpg", "json"]), ("00000002", ["json", "png"])]
    again = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "is not empty: give a new folder" in again.stderr
