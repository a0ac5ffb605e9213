"""Bad input fails early with a ValueError that names what was expected."""

import pytest
import torch
from conftest import make_tokens

from coca_min import PRESETS, CoCa


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return CoCa(PRESETS["tiny"])  # 48 x 48 px, vocab 366, context 32


def good_tokens(batch=2, length=8):
    return make_tokens([length] * batch, length, 366)


@pytest.mark.parametrize(
    "images, words",
    [
        (torch.randn(3, 48, 48), r"4-D tensor \(batch, 3, 48, 48\)"),
        (torch.randn(2, 1, 48, 48), r"3 colour channels"),
        (torch.randn(2, 3, 32, 32), r"48x48 pixels.*got 32x32"),
        (torch.randn(2, 3, 48, 64), r"48x48 pixels.*got 48x64"),
        (torch.zeros(2, 3, 48, 48, dtype=torch.uint8), r"floating-point"),
    ],
)
def test_bad_images_are_refused(model, images, words):
    with pytest.raises(ValueError, match=words):
        model.encode_image(images)
    with pytest.raises(ValueError, match=words):
        model(images, good_tokens(len(images)) if images.dim() == 4 else good_tokens(3))


@pytest.mark.parametrize(
    "tokens, words",
    [
        (torch.tensor([[1, 5, 366, 2]]), r"ids in \[0, vocab_size = 366\).*to 366"),
        (torch.tensor([[1, -1, 6, 2]]), r"ids in \[0, vocab_size = 366\).*from -1"),
        (torch.ones(1, 33, dtype=torch.long), r"at most context_length = 32 tokens.*got 33"),
        (torch.ones(8, dtype=torch.long), r"2-D tensor \(batch, tokens\)"),
        (torch.ones(1, 8), r"integer token ids"),
    ],
)
def test_bad_tokens_are_refused(model, tokens, words):
    with pytest.raises(ValueError, match=words):
        model.encode_text(tokens)
    with pytest.raises(ValueError, match=words):
        model(torch.randn(len(tokens), 3, 48, 48), tokens)


def test_images_that_are_not_a_tensor_are_refused(model):
    with pytest.raises(ValueError, match=r"4-D tensor.*got list"):
        model([[0.0]], good_tokens(1))


def test_image_and_text_batches_must_match(model):
    with pytest.raises(ValueError, match=r"as many texts as images.*3 images and 2 texts"):
        model(torch.randn(3, 3, 48, 48), good_tokens(2))


def test_text_needs_a_target(model):
    with pytest.raises(ValueError, match=r"at least 2 tokens"):
        model(torch.randn(1, 3, 48, 48), torch.ones(1, 1, dtype=torch.long))
