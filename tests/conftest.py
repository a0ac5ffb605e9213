"""Shared fixtures: small configs and a helper that makes right-padded token batches."""

import pytest
import torch

from coca_min import PRESETS, CoCa, CoCaConfig


def make_tokens(lengths, total_length, vocab_size, generator=None, pad_id=0, bos_id=1, eos_id=2):
    """Right-padded texts `[BOS] w… [EOS] [PAD]…`; `lengths` counts BOS and EOS. -> (B, T) long."""
    tokens = torch.full((len(lengths), total_length), pad_id, dtype=torch.long)
    for i, n in enumerate(lengths):
        tokens[i, 0] = bos_id
        tokens[i, 1 : n - 1] = torch.randint(3, vocab_size, (n - 2,), generator=generator)
        tokens[i, n - 1] = eos_id
    return tokens


@pytest.fixture
def micro_config():
    """A model small enough for a full float64 gradcheck: 8x8 px images, width 8."""
    return CoCaConfig(
        image_size=8, patch_size=4, vision_width=8, vision_layers=1, vision_heads=2, vision_mlp=16,
        n_caption_queries=3, pooler_heads=2, vocab_size=16, context_length=6,
        text_width=8, text_heads=2, n_uni=1, n_multi=1, text_mlp=16, embed_dim=8,
    )  # fmt: skip


@pytest.fixture(scope="module")
def tiny():
    """A randomly initialised tiny-preset model (seed 0), in eval mode."""
    torch.manual_seed(0)
    return CoCa(PRESETS["tiny"]).eval()
