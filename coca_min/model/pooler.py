"""The attentional pooler (paper §3.2 "Attentional Poolers", Figure 2).

One multi-head attention layer whose queries are `n_queries` learned vectors and whose keys and
values are the tokens it pools (the ViT's image tokens, or in the cascade the other pooler's
output). It turns a variable number of tokens into exactly `n_queries` task-specific ones.

CoCa uses two: the *caption pooler* (256 queries in the paper) feeds the multimodal decoder's
cross-attention, and the *contrastive pooler* (1 query) gives the image embedding. How they are
wired (cascade or parallel) is decided in `coca.py`. The same module serves the paper's
frozen-feature evaluation ("attentive probing"): a new pooler on a frozen encoder.

Left out: the MLP that some implementations put after the attention; the paper's pooler is
"a single multi-head attention layer".
"""

import torch
import torch.nn as nn

from .layers import Attention


class AttentionalPooler(nn.Module):
    """`query_std` sets where attention starts. The query projection keeps the scale and the keys
    are layer-normed, so the initial attention logits have about that standard deviation: near
    0, every query averages all tokens alike; around 3, each query looks mostly at its own few
    random tokens, so the poolers' outputs differ from the first step on."""

    def __init__(self, dim: int, n_queries: int, n_heads: int, context_dim: int, query_std: float = 0.02):
        super().__init__()
        self.query_std = query_std
        self.queries = nn.Parameter(torch.empty(n_queries, dim))  # (n_queries, dim), learned
        self.ln_context = nn.LayerNorm(context_dim)
        self.attn = Attention(dim, n_heads, context_dim)
        self.ln_out = nn.LayerNorm(dim)
        self.reset_parameters()

    def reset_parameters(self):  # this module's own parameters; submodules have theirs
        nn.init.normal_(self.queries, std=self.query_std)

    def forward(self, context):  # (B, N, context_dim) -> (B, n_queries, dim)
        """The learned queries attend to the layer-normed tokens (one cross-attention, every
        query sees all N); the result is layer-normed."""
        # BEGIN EXERCISE attentional_pooler
        queries = self.queries.expand(context.shape[0], -1, -1)  # (B, n_queries, dim)
        pooled = self.attn(queries, context=self.ln_context(context))  # every query sees all N
        return self.ln_out(pooled)
        # END EXERCISE
