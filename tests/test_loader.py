"""The training stream of batches (coca_min/data/loader.py): random crops drawn per sample,
workers that live across epochs, exact resumes with workers, and the copy to the device."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from coca_min.data.datasets import TinyShapes, collate, crop_and_resize, crop_generator, normalize, preprocess
from coca_min.data.image_files import CaptionManifest
from coca_min.data.loader import EpochBatches, ToDevice
from coca_min.data.tokenizer import Tokenizer

CAPTIONS = ["a red circle", "a blue square", "a green cross on the left", "two small shapes"]


@pytest.fixture(scope="module")
def same_pictures(tmp_path_factory):
    """A manifest of 16 files that hold the very same 40x40 picture, each with 4 captions: any
    difference between two of its training images is the crop's."""
    folder = tmp_path_factory.mktemp("same")
    picture = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    rows = []
    for i in range(16):
        Image.fromarray(picture).save(folder / f"{i:02d}.png")
        rows += [{"image": f"{i:02d}.png", "caption": caption} for caption in CAPTIONS]
    (folder / "pairs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


def manifest(folder, seed=0):
    tokenizer = Tokenizer.train(CAPTIONS, vocab_size=280)
    return CaptionManifest(folder / "pairs.jsonl", folder, tokenizer, image_size=24, train=True, seed=seed)


def draw(dataset, n, rank=0, world=1, workers=0, drawn=0):
    batches = EpochBatches(dataset, micro_batch=4, rank=rank, world=world, seed=0, workers=workers, drawn=drawn)
    return [next(batches) for _ in range(n)]


def test_two_ranks_draw_different_crops_even_with_workers(same_pictures):
    # The crops came from torch's global generator, seeded alike in worker w of every rank: two
    # ranks drew the same crops. Now each is drawn from (seed, epoch, the sample's index).
    data = manifest(same_pictures)
    rank0, rank1 = (draw(data, 2, rank, world=2, workers=2) for rank in (0, 1))
    for (images0, _), (images1, _) in zip(rank0, rank1):
        assert images0.dtype == torch.uint8 and images0.shape == (4, 3, 24, 24)
        assert all(not torch.equal(a, b) for a, b in zip(images0, images1))


def test_a_resumed_stream_with_two_workers_gives_the_same_images_and_captions(same_pictures):
    # 4 micro-batches an epoch: 6 from the start against 3 more after 3, across an epoch's end
    data = manifest(same_pictures)
    whole = draw(data, 6, workers=2)
    resumed = draw(data, 3, workers=2, drawn=3)
    for (images, tokens), (again, tokens_again) in zip(whole[3:], resumed):
        assert torch.equal(images, again) and torch.equal(tokens, tokens_again)


def test_workers_that_live_across_epochs_draw_each_epochs_captions_and_crops(same_pictures):
    # persistent workers keep their copy of the data set: the epoch comes with every index
    data = manifest(same_pictures)
    in_process, with_workers = draw(data, 8, workers=0), draw(data, 8, workers=2)
    for (images, tokens), (images_w, tokens_w) in zip(in_process, with_workers):
        assert torch.equal(images, images_w) and torch.equal(tokens, tokens_w)
    epoch0, epoch1 = torch.cat([t[:, :6] for _, t in in_process[:4]]), torch.cat([t[:, :6] for _, t in in_process[4:]])
    assert not torch.equal(epoch0, epoch1)  # (16 images in a new order, new captions and crops)


def test_uint8_crop_and_resize_is_the_float_preprocessing_within_one_level():
    # resizing in uint8 rounds once, to the nearest of 256 levels: 1/255 of the range at most
    image = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (3, 60, 80), dtype=np.uint8))
    as_uint8 = crop_and_resize(image, 24)
    assert as_uint8.dtype == torch.uint8 and as_uint8.shape == (3, 24, 24)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)
    difference = ((normalize(as_uint8) - preprocess(image, 24)) * std).abs().max()  # in units of the pixel range
    assert difference <= 1 / 255 + 1e-6


def test_a_random_crop_depends_on_the_seed_epoch_and_sample_only():
    image = torch.from_numpy(np.random.default_rng(2).integers(0, 256, (3, 50, 50), dtype=np.uint8))

    def crop(seed, epoch, index):
        return crop_and_resize(image, 16, train=True, generator=crop_generator(seed, epoch, index))

    torch.manual_seed(123)  # torch's global generator plays no part
    first = crop(3, 0, 7)
    torch.manual_seed(456)
    assert torch.equal(first, crop(3, 0, 7))
    assert not any(torch.equal(first, other) for other in [crop(4, 0, 7), crop(3, 1, 7), crop(3, 0, 8)])


def test_text_is_padded_to_a_multiple_but_never_past_the_context_length():
    items = [(torch.zeros(3, 2, 2), torch.tensor([1, 5, 2])), (torch.zeros(3, 2, 2), torch.tensor([1, 5, 6, 7, 8, 2]))]
    assert collate(items)[1].shape == (2, 6)
    _, tokens = collate(items, pad_id=0, multiple=8)
    assert tokens.shape == (2, 8) and tokens[1, 6:].tolist() == [0, 0] and tokens[0, 3:].tolist() == [0] * 5
    assert collate(items, pad_id=0, multiple=8, context_length=7)[1].shape == (2, 7)


class Stream:
    """A stand-in for EpochBatches/ShardBatches: uint8 micro-batches, a position, a failure."""

    def __init__(self, fail_at=None):
        self.n, self.fail_at = 0, fail_at

    def __next__(self):
        if self.n == self.fail_at:
            raise OSError("could not decode broken.jpg")
        self.n += 1
        return torch.full((2, 3, 4, 4), self.n, dtype=torch.uint8), torch.full((2, 5), self.n)

    def position(self):
        return {"done": self.n}


def test_to_device_normalises_there_and_keeps_the_position_of_what_it_handed_out():
    stream = ToDevice(Stream(), "cpu")
    images, tokens = next(stream)
    torch.testing.assert_close(images, normalize(torch.full((2, 3, 4, 4), 1, dtype=torch.uint8)))
    assert images.dtype == torch.float32 and tokens.tolist() == [[1] * 5] * 2
    assert stream.position() == {"done": 1}


def test_to_device_raises_a_loading_error_for_the_micro_batch_that_failed():
    stream = ToDevice(Stream(fail_at=1), "cpu")
    next(stream)  # the first micro-batch is fine
    with pytest.raises(OSError, match="broken.jpg"):
        next(stream)


def test_the_tiny_set_still_gives_normalised_floats_and_normalize_leaves_them_alone():
    images = TinyShapes("val", limit=2).images([0, 1])
    assert images.dtype == torch.float32 and normalize(images) is images


def test_resuming_shards_on_another_number_of_ranks_takes_the_earliest_epoch():
    from coca_min.data.loader import shard_position

    saved = [{"epoch": 0, "done": {"000001.tar": 5, "000002.tar": 3}},  # rank 0, still in epoch 0
             {"epoch": 0, "done": {"000003.tar": 7}},  # rank 1, still in epoch 0
             {"epoch": 1, "done": {"000004.tar": 2}}]  # rank 2, ahead: its epoch-0 shards are not listed # fmt: skip
    assert shard_position(saved, 2, 3) == saved[2]  # the same ranks: each its own, exactly
    with pytest.warns(UserWarning, match="resuming on 2 processes a run saved on 3"):
        moved = shard_position(saved, 0, 2)
    # epoch 0 again, skipping what ranks 0 and 1 had consumed of it; rank 2's finished shards of
    # epoch 0 are read again (whole), and its 2 samples of 000004.tar again in epoch 1
    assert moved == {"epoch": 0, "done": {"000001.tar": 5, "000002.tar": 3, "000003.tar": 7}}
    assert shard_position(saved, 1, 2) == moved
