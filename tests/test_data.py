"""Data sets and batching: the tiny set, manifests, COCO JSON, bad files, preprocessing."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from coca_min.data.datasets import MEAN, STD, TinyShapes, collate, preprocess
from coca_min.data.image_files import CaptionManifest, CocoCaptions
from coca_min.data.synthetic import shapes
from coca_min.data.tokenizer import BOS, EOS, PAD, Tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.train(["a red circle", "a blue square on the left"], vocab_size=300)


def test_tiny_split_items_and_images():
    val = TinyShapes("val")
    image, tokens = val[0]
    assert image.shape == (3, 48, 48) and image.dtype == torch.float32
    assert tokens[0] == BOS and tokens[-1] == EOS and (tokens != PAD).all()
    assert val.tokenizer.decode(tokens) == val.captions[0][0]  # evaluation: the canonical caption
    rgb = torch.from_numpy(shapes.PALETTE[val.pixels[5].numpy()]).permute(2, 0, 1)  # (3, 48, 48)
    torch.testing.assert_close(val[5][0], (rgb.float() / 255 - MEAN) / STD)
    assert all(len(c) == 3 for c in val.captions)  # all captions of every image, for evaluation


def test_training_draws_one_caption_per_image_per_epoch():
    train = TinyShapes("train")
    first = [train.caption_index(i) for i in range(300)]
    assert first == [train.caption_index(i) for i in range(300)]  # same epoch, same draw
    train.set_epoch(1)
    second = [train.caption_index(i) for i in range(300)]
    assert first != second and set(first) == {0, 1, 2}


def test_tiny_batched_fetch_equals_item_by_item():
    train = TinyShapes("train", train=True)
    train.set_epoch(3)
    indices = [7, 0, 29_999, 7]
    batched = train.__getitems__(indices)  # what DataLoader calls for a batch
    for (image, tokens), index in zip(batched, indices):
        torch.testing.assert_close(image, train[index][0], rtol=0, atol=0)
        assert torch.equal(tokens, train[index][1])
    loader = torch.utils.data.DataLoader(train, batch_size=4, sampler=indices, collate_fn=collate)
    images, tokens = next(iter(loader))
    assert torch.equal(images, torch.stack([train[i][0] for i in indices]))
    assert torch.equal(tokens, collate([train[i] for i in indices])[1])


def test_tiny_training_draws_the_canonical_caption_four_times_in_five():
    train = TinyShapes("train")
    counts = np.bincount([train.caption_index(i) for i in range(6000)], minlength=3) / 6000
    # binomial standard deviation at n = 6000 is under 0.007: 0.03 is over 4 of them
    expected = np.array(TinyShapes.caption_weights) / sum(TinyShapes.caption_weights)
    assert expected.tolist() == [8 / 10, 1 / 10, 1 / 10]
    assert np.abs(counts - expected).max() < 0.03
    val = TinyShapes("val")
    assert {val.caption_index(i) for i in range(50)} == {0}  # evaluation: the first (canonical)


def test_collate_pads_with_the_pad_id():
    a, b = torch.zeros(3, 4, 4), torch.ones(3, 4, 4)
    images, tokens = collate([(a, torch.tensor([1, 7, 2])), None, (b, torch.tensor([1, 7, 8, 9, 2]))])
    assert images.shape == (2, 3, 4, 4)  # the None (an image that failed to load) is dropped
    assert tokens.tolist() == [[1, 7, 2, PAD, PAD], [1, 7, 8, 9, 2]]


def test_preprocess_centre_crops_the_shorter_side():
    image = torch.zeros(3, 4, 8, dtype=torch.uint8)
    image[:, :, 2:6] = 255  # the centre 4 x 4 square is white, the sides black
    out = preprocess(image, size=4)
    torch.testing.assert_close(out, ((torch.ones(3, 4, 4) - MEAN) / STD))
    assert preprocess(torch.zeros(3, 30, 50, dtype=torch.uint8), size=16).shape == (3, 16, 16)
    torch.manual_seed(0)
    crops = {tuple(preprocess(torch.randint(0, 255, (3, 40, 40), dtype=torch.uint8), 16, train=True).shape)
             for _ in range(5)}  # fmt: skip
    assert crops == {(3, 16, 16)}


def write_images(folder, names):
    folder.mkdir(exist_ok=True)
    for i, name in enumerate(names):
        Image.fromarray(np.full((20, 30, 3), 40 * i, dtype=np.uint8)).save(folder / name)


@pytest.fixture
def image_folder(tmp_path):
    write_images(tmp_path / "images", ["a.png", "b.png", "c.jpg"])
    (tmp_path / "images" / "broken.png").write_bytes(b"\x89PNG not really an image")
    return tmp_path / "images"


ROWS = [("a.png", "a red circle"), ("b.png", "a blue square"), ("a.png", "a circle that is red"),
        ("c.jpg", "a square on the left"), ("broken.png", "a corrupt file"), ("gone.png", "a missing file")]  # fmt: skip


def check_skips_bad_files(make):
    with pytest.warns(UserWarning, match=r"skipping 2 of 5 images.*broken\.png.*gone\.png \(missing\)"):
        data = make(strict=False)
    assert len(data) == 3
    assert sorted(len(c) for c in data.captions) == [1, 1, 2]  # a.png has two captions
    loader = torch.utils.data.DataLoader(data, batch_size=4, collate_fn=collate)
    images, tokens = next(iter(loader))
    assert images.shape == (3, 3, 32, 32) and tokens[:, 0].tolist() == [BOS] * 3
    with pytest.raises(ValueError, match=r"2 of 5 images that cannot be read"):
        make(strict=True)


def test_jsonl_manifest(tmp_path, image_folder, tokenizer):
    manifest = tmp_path / "pairs.jsonl"
    manifest.write_text("".join(json.dumps({"image": i, "caption": c}) + "\n" for i, c in ROWS))
    check_skips_bad_files(lambda strict: CaptionManifest(manifest, image_folder, tokenizer, 32, strict=strict))


def test_csv_manifest(tmp_path, image_folder, tokenizer):
    manifest = tmp_path / "pairs.csv"
    manifest.write_text("image,caption\n" + "".join(f'{i},"{c}"\n' for i, c in ROWS))
    check_skips_bad_files(lambda strict: CaptionManifest(manifest, image_folder, tokenizer, 32, strict=strict))


def test_coco_caption_json(tmp_path, image_folder, tokenizer):
    names = sorted({i for i, _ in ROWS}) + ["uncaptioned.png"]
    coco = {"images": [{"id": 10 + k, "file_name": n} for k, n in enumerate(names)],
            "annotations": [{"id": k, "image_id": 10 + names.index(i), "caption": c} for k, (i, c) in enumerate(ROWS)]}  # fmt: skip
    path = tmp_path / "captions.json"
    path.write_text(json.dumps(coco))
    check_skips_bad_files(lambda strict: CocoCaptions(path, image_folder, tokenizer, 32, strict=strict))


def test_a_file_that_breaks_during_training_is_skipped_not_fatal(tmp_path, image_folder, tokenizer):
    manifest = tmp_path / "pairs.jsonl"
    manifest.write_text("".join(json.dumps({"image": i, "caption": c}) + "\n" for i, c in ROWS[:4]))
    data = CaptionManifest(manifest, image_folder, tokenizer, 32, train=True)
    (image_folder / "b.png").write_bytes(b"overwritten after the check")
    with pytest.warns(UserWarning, match=r"could not decode .*b\.png.*next image instead"):
        batches = list(torch.utils.data.DataLoader(data, batch_size=3, collate_fn=collate))
    assert [len(images) for images, _ in batches] == [3]  # b.png replaced: batches keep their size


BAD_CAPTIONS = [("a.png", "a red circle"), ("b.png", None), ("c.jpg", "   "), ("a.png", "a circle that is red")]


@pytest.mark.parametrize("form", ["jsonl", "csv", "coco"])
def test_rows_without_a_caption_are_skipped_and_counted_as_caption_problems(tmp_path, image_folder, tokenizer, form):
    if form == "jsonl":
        path = tmp_path / "pairs.jsonl"
        lines = [json.dumps({"image": i, "caption": c}) for i, c in BAD_CAPTIONS] + ['{"image": "c.jpg"}']
        path.write_text("\n".join(lines) + "\n")
        where, make = r"line 2 \(no caption\); line 3 \(empty caption\); line 5 \(no caption\)", CaptionManifest
    elif form == "csv":
        path = tmp_path / "pairs.csv"
        path.write_text("image,caption\n" + "".join(f"{i},{c}\n" if c else f"{i}\n" for i, c in BAD_CAPTIONS) + "c.jpg,\n")
        where, make = r"line 3 \(no caption\); line 4 \(empty caption\); line 6 \(empty caption\)", CaptionManifest  # line 1: the header
    else:
        path = tmp_path / "captions.json"
        names = ["a.png", "b.png", "c.jpg"]
        notes = [{"image_id": names.index(i), "caption": c} for i, c in BAD_CAPTIONS] + [{"image_id": 2}, {"image_id": 9, "caption": "x"}]
        path.write_text(json.dumps({"images": [{"id": k, "file_name": n} for k, n in enumerate(names)], "annotations": notes}))
        where = r"annotations\[1\] \(no caption\); annotations\[2\] \(empty caption\); annotations\[4\] \(no caption\); annotations\[5\] \(image_id 9 names no image\)"
        make = CocoCaptions
    with pytest.warns(UserWarning, match=r"skipping \d of \d .*" + where) as caught:
        data = make(path, image_folder, tokenizer, 32)
    assert not any("decode" in str(w.message) or "images that cannot" in str(w.message) for w in caught)  # not the images' fault
    assert data.captions == [["a red circle", "a circle that is red"]]  # only a.png keeps a usable caption
    with pytest.raises(ValueError, match=where):
        make(path, image_folder, tokenizer, 32, strict=True)


def test_missing_paths_are_named(tmp_path, image_folder, tokenizer):
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl"):
        CaptionManifest(tmp_path / "nowhere.jsonl", image_folder, tokenizer, 32)
    with pytest.raises(FileNotFoundError, match="no_such_folder"):
        CocoCaptions(tmp_path / "c.json", tmp_path / "no_such_folder", tokenizer, 32)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"file": "a.png", "text": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"no row has an image and a caption; line 1 \(expected the fields 'image' and 'caption', got \['file', 'text'\]\)"):
        CaptionManifest(bad, image_folder, tokenizer, 32)
    with pytest.raises(ValueError, match="unknown tiny_data split 'tets'"):
        TinyShapes("tets")
