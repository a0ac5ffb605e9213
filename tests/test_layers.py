"""Attention, blocks and the pooler: reference computations and float64 gradient checks."""

import math

import pytest
import torch
import torch.nn as nn
from torch.autograd import gradcheck

from coca_min.model.layers import Attention, Block, causal_padding_mask
from coca_min.model.pooler import AttentionalPooler


def explicit_attention(attn: Attention, x, context, mask):
    """softmax(Q Kᵀ / √d) V written out head by head, with the module's own weights."""
    B, T, dim = x.shape
    h = attn.n_heads
    d = dim // h
    q = attn.q_proj(x).view(B, T, h, d).transpose(1, 2)  # (B, h, T, d)
    k = attn.k_proj(context).view(B, -1, h, d).transpose(1, 2)  # (B, h, S, d)
    v = attn.v_proj(context).view(B, -1, h, d).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)  # (B, h, T, S)
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None], float("-inf"))
    out = scores.softmax(dim=-1) @ v  # (B, h, T, d)
    return attn.out_proj(out.transpose(1, 2).reshape(B, T, dim))


def padded_mask(B=2, T=5):
    is_pad = torch.zeros(B, T, dtype=torch.bool)
    is_pad[0, 3:] = True  # first text has 3 real tokens, then padding
    return causal_padding_mask(is_pad)


def test_causal_padding_mask_worked_example():
    is_pad = torch.tensor([[False, False, True]])
    expected = torch.tensor([[[1, 0, 0], [1, 1, 0], [1, 1, 1]]], dtype=torch.bool)
    expected[0, 2, 2] = True  # a pad may see itself (no empty softmax rows)
    expected[0, 2, :2] = True
    assert torch.equal(causal_padding_mask(is_pad), expected)
    # a real token after a pad (not right padding) may not see the pad
    assert causal_padding_mask(torch.tensor([[False, True, False]]))[0, 2].tolist() == [True, False, True]


@pytest.mark.parametrize("cross", [False, True])
def test_attention_matches_explicit_softmax(cross):
    torch.manual_seed(0)
    attn = Attention(16, 4, context_dim=12 if cross else None).double()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    context = torch.randn(2, 7, 12, dtype=torch.float64) if cross else x
    mask = None if cross else padded_mask()
    expected = explicit_attention(attn, x, context, mask)
    got = attn(x, context=context if cross else None, mask=mask)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)


def test_self_attention_matches_torch_multihead_attention():
    torch.manual_seed(0)
    ours = Attention(16, 4)
    theirs = nn.MultiheadAttention(16, 4, batch_first=True)
    with torch.no_grad():
        theirs.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
        theirs.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
        theirs.out_proj.weight.copy_(ours.out_proj.weight)
        theirs.out_proj.bias.copy_(ours.out_proj.bias)
    x = torch.randn(2, 5, 16)
    mask = padded_mask()  # True = may attend; MultiheadAttention wants True = may NOT attend
    expected, _ = theirs(x, x, x, attn_mask=(~mask).repeat_interleave(4, dim=0), need_weights=False)
    torch.testing.assert_close(ours(x, mask=mask), expected, atol=1e-6, rtol=1e-5)


def multihead_attention_like(ours: Attention, context_dim: int):
    """torch's MultiheadAttention (keys of another width) holding the same weights as `ours`."""
    dim = ours.q_proj.in_features
    theirs = nn.MultiheadAttention(dim, ours.n_heads, kdim=context_dim, vdim=context_dim, batch_first=True)
    with torch.no_grad():
        theirs.q_proj_weight.copy_(ours.q_proj.weight)
        theirs.k_proj_weight.copy_(ours.k_proj.weight)
        theirs.v_proj_weight.copy_(ours.v_proj.weight)
        theirs.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
        theirs.out_proj.weight.copy_(ours.out_proj.weight)
        theirs.out_proj.bias.copy_(ours.out_proj.bias)
    return theirs


def test_cross_attention_matches_torch_multihead_attention_with_other_key_width():
    torch.manual_seed(0)
    ours = Attention(16, 4, context_dim=12)
    theirs = multihead_attention_like(ours, context_dim=12)
    x, context = torch.randn(2, 5, 16), torch.randn(2, 7, 12)
    expected, _ = theirs(x, context, context, need_weights=False)
    torch.testing.assert_close(ours(x, context=context), expected, atol=1e-6, rtol=1e-5)


def test_attention_gradcheck_float64():
    torch.manual_seed(0)
    attn = Attention(8, 2, context_dim=6).double()
    x = torch.randn(2, 4, 8, dtype=torch.float64, requires_grad=True)
    context = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda x, c: attn(x, context=c), (x, context))
    self_attn, mask = Attention(8, 2).double(), padded_mask(2, 4)
    assert gradcheck(lambda x: self_attn(x, mask=mask), (x,))


def test_block_with_cross_attention_gradcheck_float64():
    torch.manual_seed(0)
    block = Block(8, 2, 16, cross_attention=True, context_dim=6).double()
    x = torch.randn(2, 4, 8, dtype=torch.float64, requires_grad=True)
    context = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    mask = padded_mask(2, 4)
    assert gradcheck(lambda x, c: block(x, mask=mask, context=c), (x, context))


def test_pooler_gradcheck_float64_and_shape():
    torch.manual_seed(0)
    pooler = AttentionalPooler(8, n_queries=3, n_heads=2, context_dim=6).double()
    context = torch.randn(2, 5, 6, dtype=torch.float64, requires_grad=True)
    assert pooler(context).shape == (2, 3, 8)
    assert gradcheck(pooler, (context,))


def test_pooler_is_permutation_invariant_over_its_inputs():
    # attention pooling is a weighted average: the order of the pooled tokens does not matter
    torch.manual_seed(0)
    pooler = AttentionalPooler(8, n_queries=3, n_heads=2, context_dim=6)
    context = torch.randn(2, 5, 6)
    shuffled = context[:, torch.randperm(5)]
    torch.testing.assert_close(pooler(shuffled), pooler(context), atol=1e-6, rtol=1e-5)


def test_key_padding_mask_matches_torch_multihead_attention():
    torch.manual_seed(0)
    ours = Attention(16, 4, context_dim=12)
    theirs = multihead_attention_like(ours, context_dim=12)
    x, context = torch.randn(2, 5, 16), torch.randn(2, 7, 12)
    padding = torch.zeros(2, 7, dtype=torch.bool)
    padding[1, 4:] = True  # the second context has 4 real keys (both use True = padding)
    expected, _ = theirs(x, context, context, key_padding_mask=padding, need_weights=False)
    got = ours(x, context=context, key_padding_mask=padding)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    # padding keys really are ignored: changing them changes nothing
    changed = context.clone()
    changed[1, 4:] = 100.0
    torch.testing.assert_close(ours(x, context=changed, key_padding_mask=padding), got)


def test_block_refuses_a_missing_or_unexpected_context():
    x = torch.randn(1, 3, 8)
    with pytest.raises(ValueError, match="needs a context"):
        Block(8, 2, 16, cross_attention=True)(x)  # would silently attend to the future otherwise
    with pytest.raises(ValueError, match="needs a context"):
        Block(8, 2, 16)(x, context=torch.randn(1, 2, 8))
