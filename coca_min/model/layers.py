"""The transformer pieces every CoCa component is built from.

Implements the standard pre-LayerNorm transformer layer that the paper's image encoder, poolers
and text decoder all use (paper §3.2 builds on Vaswani et al. 2017 and ViT): multi-head
attention (self- and cross-attention), the MLP, and a residual block with optional
cross-attention. Attention runs on `F.scaled_dot_product_attention`, so this readable code is
also the fast path (flash / memory-efficient kernels on GPU).

Masks follow `F.scaled_dot_product_attention`: a boolean mask is True where a query MAY attend
to a key. (`torch.nn.MultiheadAttention` uses the opposite convention; keep them apart.)

Decoding one token at a time can keep each layer's keys and values in a `cache` dict (see
`generate.py`), so earlier tokens are never encoded again. Left out on purpose: dropout, rotary
or relative position encodings (the paper uses learned absolute positions).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from torch.utils.checkpoint import checkpoint


class Attention(nn.Module):
    """softmax(Q Kᵀ / √d_head) V over `n_heads` heads.

    Self-attention when `context` is None; cross-attention to `context` otherwise (queries from
    `x`, keys and values from `context`, which may have its own width `context_dim`).
    """

    def __init__(self, dim: int, n_heads: int, context_dim: int | None = None):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"width {dim} must be divisible by the number of heads {n_heads}")
        context_dim = dim if context_dim is None else context_dim
        self.n_heads = n_heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(context_dim, dim)
        self.v_proj = nn.Linear(context_dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x, context=None, mask=None, key_padding_mask=None, cache=None):
        # x: (B, T, dim) queries; context: (B, S, context_dim) keys and values, or None for x
        # mask: None, (T, S) or (B, T, S) bool, True where query t may attend to key s
        # key_padding_mask: None or (B, S) bool, True at keys that are padding (never attended)
        # cache: None, or a dict that keeps this layer's keys and values between decoding steps
        q = rearrange(self.q_proj(x), "b t (h d) -> b h t d", h=self.n_heads)
        if cache is not None and context is not None and "k" in cache:
            k, v = cache["k"], cache["v"]  # cross-attention: the image's keys/values, made once
        else:
            source = x if context is None else context
            k = rearrange(self.k_proj(source), "b s (h d) -> b h s d", h=self.n_heads)
            v = rearrange(self.v_proj(source), "b s (h d) -> b h s d", h=self.n_heads)
            if cache is not None:
                if "k" in cache:  # self-attention: the new tokens' keys/values join the earlier ones
                    k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
                cache["k"], cache["v"] = k, v  # (B, h, S so far, d_head)
        # BEGIN EXERCISE attention
        if mask is not None and mask.dim() == 3:
            mask = mask[:, None]  # (B, 1, T, S): the same mask for every head
        if key_padding_mask is not None:
            keep = ~key_padding_mask[:, None, None, :]  # (B, 1, 1, S)
            mask = keep if mask is None else mask & keep
        # softmax(q kᵀ / √d_head) v, with disallowed scores set to -inf before the softmax
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, h, T, d_head)
        return self.out_proj(rearrange(out, "b h t d -> b t (h d)"))  # (B, T, dim)
        # END EXERCISE


class MLP(nn.Module):
    """Linear -> GELU -> Linear, applied to each token on its own."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc_in = nn.Linear(dim, hidden_dim)
        self.fc_out = nn.Linear(hidden_dim, dim)

    def forward(self, x):  # (B, T, dim) -> (B, T, dim)
        return self.fc_out(F.gelu(self.fc_in(x)))


class Block(nn.Module):
    """Pre-LayerNorm residual block: self-attention, [cross-attention], MLP.

        x = x + SelfAttention(LN(x))
        x = x + CrossAttention(LN(x), context)      only if cross_attention=True
        x = x + MLP(LN(x))
    """

    def __init__(self, dim, n_heads, mlp_dim, cross_attention=False, context_dim=None):
        super().__init__()
        self.ln_attn = nn.LayerNorm(dim)
        self.attn = Attention(dim, n_heads)
        self.ln_cross = nn.LayerNorm(dim) if cross_attention else None
        self.cross_attn = Attention(dim, n_heads, context_dim) if cross_attention else None
        self.ln_mlp = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_dim)

    activation_checkpointing = False  # recompute this block's activations in the backward pass (coca_min/train/sharding.py)

    def forward(self, x, mask=None, context=None, cache=None):
        # x: (B, T, dim); mask: self-attention mask (see Attention); context: (B, S, context_dim)
        # cache: None, or {"self": {}, "cross": {}} kept between decoding steps
        if (context is None) != (self.cross_attn is None):  # e.g. a caption with no image
            raise ValueError("a block with cross-attention needs a context, and only such a block takes one")
        if self.activation_checkpointing and torch.is_grad_enabled() and cache is None:
            return checkpoint(self._forward, x, mask, context, use_reentrant=False)  # keeps only the inputs
        return self._forward(x, mask, context, cache)

    def _forward(self, x, mask=None, context=None, cache=None):
        cache = cache or {}
        x = x + self.attn(self.ln_attn(x), mask=mask, cache=cache.get("self"))
        if self.cross_attn is not None:
            x = x + self.cross_attn(self.ln_cross(x), context=context, cache=cache.get("cross"))
        return x + self.mlp(self.ln_mlp(x))


def causal_padding_mask(is_pad: torch.Tensor) -> torch.Tensor:
    """Self-attention mask for text: (B, T) bool, True at padding -> (B, T, T) bool.

    Query t may attend to key s when s <= t (causal: no peeking at later tokens) and s is not
    padding. Every position may attend to itself, so no row is empty (a softmax over nothing
    would be NaN), even at a padding position or in an all-padding text.
    """
    # BEGIN EXERCISE text_mask
    T = is_pad.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=is_pad.device).tril()  # (T, T)
    itself = torch.eye(T, dtype=torch.bool, device=is_pad.device)  # (T, T)
    return causal & (~is_pad[:, None, :] | itself)  # (B, T, T)
    # END EXERCISE


def init_weights(module: nn.Module) -> None:
    """Initialise one module's own parameters. Linear: normal weights with std 1/√fan_in, so
    that every layer keeps its input's scale whatever the width, and zero biases (GPT-2's fixed
    0.02 is about 1/√fan_in at width 768-2048 but shrinks a width-128 model's signals ~4x per
    layer, and the tiny model then learns several times slower). Embedding: std 0.02. Anything
    else with a `reset_parameters` (LayerNorm; coca_min's modules for their position
    embeddings and queries) uses that."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=module.in_features**-0.5)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
    elif hasattr(module, "reset_parameters"):
        module.reset_parameters()


def standard_init_weights(module: nn.Module) -> None:
    """Initialise one module's own parameters the usual transformer way (BERT, ViT, GPT-2): a
    normal with std 0.02, truncated at ±2σ, for weight matrices, embeddings and coca_min's own
    position embeddings, [CLS] and queries; zero biases; LayerNorm at ones and zeros."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.trunc_normal_(module.weight, std=0.02, a=-0.04, b=0.04)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
    elif hasattr(module, "reset_parameters"):
        module.reset_parameters()  # LayerNorm; in the decoder this also ties the LM head again
        if not isinstance(module, nn.LayerNorm):  # coca_min's modules: position embeddings, queries
            for parameter in module.parameters(recurse=False):
                nn.init.trunc_normal_(parameter, std=0.02, a=-0.04, b=0.04)

