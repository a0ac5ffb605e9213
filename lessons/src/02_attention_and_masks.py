# %% [markdown]
# # Lesson 02 — Attention and masks
#
# **What you will learn**
# - scaled dot-product attention, written out by hand, and its multi-head form;
# - the causal mask (a caption token must not see the words after it) and the padding mask;
# - cross-attention: queries from the text, keys and values from the image;
# - that coca_min's `Attention` and its text masks are exactly these formulas.
#
# **Paper**: §3.2 builds every part of CoCa from standard transformer layers (Vaswani et al.
# 2017); the text decoder is causal, with [CLS] appended at the end.
#
# **Assumes**: lesson 01 (token ids, [PAD]).

# %% [markdown]
# ## Set-up
# Imports, a fixed seed and thread count (the same numbers on every run), and the versions.

# %%
import math

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from coca_min.model.layers import Attention, causal_padding_mask

torch.manual_seed(0)
torch.set_num_threads(2)
print("torch", torch.__version__)

# %% [markdown]
# ## 1. Scaled dot-product attention
#
# Each of $T$ queries $q_t$ scores every one of $S$ keys $k_s$ by a dot product, the scores
# become weights by a softmax over the keys, and the output is the weighted mean of the values:
#
# $$\text{Attention}(Q, K, V) = \operatorname{softmax}\!\left(\frac{Q K^\top}{\sqrt{d}}\right) V,
# \qquad Q \in \mathbb{R}^{T \times d},\ K, V \in \mathbb{R}^{S \times d}.$$
#
# Dividing by $\sqrt{d}$ keeps the scores' spread near 1 whatever the width, so the softmax is
# not saturated at the start of training.

# %%
T, S, d = 4, 6, 8
q, k, v = torch.randn(T, d), torch.randn(S, d), torch.randn(S, d)
scores = q @ k.T / math.sqrt(d)  # (T, S): how much query t likes key s
weights = scores.softmax(dim=-1)  # (T, S): each row sums to 1
out = weights @ v  # (T, d)
print("scores", tuple(scores.shape), "| weights rows sum to", weights.sum(-1))
print("out", tuple(out.shape))

# %% [markdown]
# **Check**: equals PyTorch's `F.scaled_dot_product_attention` (the fused kernel coca_min uses),
# to 1e-6.

# %%
assert torch.allclose(out, F.scaled_dot_product_attention(q[None], k[None], v[None])[0], atol=1e-6)
print("equal to F.scaled_dot_product_attention")

# %% [markdown]
# ## 2. Masks
#
# A mask says which keys a query may look at: a disallowed score is set to $-\infty$ before
# the softmax, so its weight is exactly 0. coca_min (like `F.scaled_dot_product_attention`) uses
# boolean masks that are **True where attending is allowed**.
#
# - **Causal**: while predicting word $t+1$ the decoder may only look at words $\le t$; key $s$
#   is allowed for query $t$ when $s \le t$ (a lower triangle).
# - **Padding**: the [PAD] positions of a short caption in a batch are not text; no query may
#   attend to them. A padding position still attends to itself, so that no row of the softmax is
#   empty (a softmax over nothing is 0/0 = NaN).

# %%
tokens = torch.tensor([[1, 40, 50, 60, 2, 0, 0]])  # [BOS] w w w [EOS] [PAD] [PAD]
is_pad = tokens == 0  # (1, 7)
Tt = tokens.shape[1]
causal = torch.ones(Tt, Tt, dtype=torch.bool).tril()  # (7, 7): s <= t
ours = causal & (~is_pad[:, None, :] | torch.eye(Tt, dtype=torch.bool))  # (1, 7, 7)
print(ours[0].int())

# %% [markdown]
# **Check**: the same mask as `coca_min.model.layers.causal_padding_mask`.

# %%
assert torch.equal(ours, causal_padding_mask(is_pad))
print("equal to causal_padding_mask")

# %% [markdown]
# The unimodal decoder adds one more position, [CLS], at the very end (after any padding). It
# attends to every real token and to itself, never to padding, and no word attends to it
# (it comes last): its output summarises the whole caption and becomes the text embedding.
# **Check** (in the cell): exactly that row and column of the mask; then a figure of both masks.

# %%
with_cls = torch.cat([is_pad, torch.zeros(1, 1, dtype=torch.bool)], dim=1)  # [CLS] is not padding
unimodal_mask = causal_padding_mask(with_cls)[0]  # (8, 8)
# check: [CLS] (last row) reads the five real tokens and itself, no [PAD]; no word reads [CLS]
assert unimodal_mask[-1].tolist() == [True] * 5 + [False, False, True] and not unimodal_mask[:-1, -1].any()
labels = ["[BOS]", "w1", "w2", "w3", "[EOS]", "[PAD]", "[PAD]", "[CLS]"]
fig, axes = plt.subplots(1, 2, figsize=(10, 4.4))
for ax, mask, title, names in [(axes[0], ours[0], "text self-attention: causal + padding", labels[:7]),
                               (axes[1], unimodal_mask, "unimodal decoder: [CLS] appended last", labels)]:  # fmt: skip
    ax.imshow(mask.numpy(), cmap="Greens", vmin=0, vmax=1.3)
    ax.set_xticks(range(len(names)), names, rotation=60, fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set(title=title, xlabel="key (attended to)", ylabel="query (attending)")
fig.suptitle("decoder self-attention masks: green = may attend")
fig.tight_layout()

# %% [markdown]
# ## 3. Multi-head attention
#
# One attention looks for one kind of relation. Multi-head attention projects the input to
# $h$ smaller query, key and value spaces of width $d/h$, attends in each, and joins the $h$
# results with an output projection:
#
# $$\text{head}_i = \text{Attention}(X W^Q_i, X W^K_i, X W^V_i), \qquad
# \text{MHA}(X) = [\text{head}_1; \dots; \text{head}_h]\, W^O.$$
#
# We write it with plain tensors, borrowing the weights of a coca_min `Attention` module so the
# two can be compared.

# %%
dim, heads = 16, 4
layer = Attention(dim, heads)
x = torch.randn(2, 7, dim)  # (B, T, dim)


def multi_head(x, layer, mask=None, context=None):
    source = x if context is None else context
    B, T, D = x.shape
    split = lambda t: t.view(B, t.shape[1], heads, D // heads).transpose(1, 2)  # (B, h, len, D/h)
    q, k, v = split(layer.q_proj(x)), split(layer.k_proj(source)), split(layer.v_proj(source))
    scores = q @ k.transpose(-1, -2) / math.sqrt(D // heads)  # (B, h, T, S)
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None], float("-inf"))  # the same mask for each head
    out = scores.softmax(-1) @ v  # (B, h, T, D/h)
    return layer.out_proj(out.transpose(1, 2).reshape(B, T, D))  # heads side by side, then W^O


mask = causal_padding_mask(torch.tensor([[False] * 7, [False] * 5 + [True] * 2]))  # (2, 7, 7)
ours = multi_head(x, layer, mask)
print("multi-head output", tuple(ours.shape))

# %% [markdown]
# **Check**: equals coca_min's `Attention` with the same weights and mask, to 1e-5.

# %%
with torch.no_grad():
    assert torch.allclose(ours, layer(x, mask=mask), atol=1e-5)
print("equal to coca_min.model.layers.Attention")

# %% [markdown]
# ## 4. Causality, as a property
#
# The point of the causal mask: the output at position $t$ cannot depend on any later token.
# **Check**: change the last three tokens' inputs; the first four outputs stay the same (1e-6),
# and each of the three later ones changes (by more than 1e-6).

# %%
causal_only = torch.ones(7, 7, dtype=torch.bool).tril()[None].expand(2, 7, 7)
changed = x.clone()
changed[:, 4:] = torch.randn(2, 3, dim)
with torch.no_grad():
    before, after = layer(x, mask=causal_only), layer(changed, mask=causal_only)
assert torch.allclose(before[:, :4], after[:, :4], atol=1e-6)
assert all(not torch.allclose(before[:, t], after[:, t], atol=1e-6) for t in range(4, 7))
print("positions 0-3 unchanged; 4-6 changed")

# %% [markdown]
# ## 5. Cross-attention
#
# In the multimodal decoder the queries come from the caption and the keys and values from the
# image (the caption pooler's outputs, lesson 04), so each word can look at the whole image.
# There is no mask: every word may look at every image token. Keys and values may have their
# own width.
#
# **Check**: equals coca_min's `Attention(dim, heads, context_dim=24)` with a context, to 1e-5.

# %%
image_tokens = torch.randn(2, 9, 24)  # (B, S image tokens, their own width 24)
cross = Attention(dim, heads, context_dim=24)
ours = multi_head(x, cross, context=image_tokens)
with torch.no_grad():
    assert torch.allclose(ours, cross(x, context=image_tokens), atol=1e-5)
print("cross-attention", tuple(x.shape), "attends to", tuple(image_tokens.shape), "->", tuple(ours.shape))

# %% [markdown]
# ## Summary
# - Attention is $\operatorname{softmax}(QK^\top/\sqrt d)\,V$; masks put $-\infty$ on disallowed
#   scores, and coca_min's boolean masks are True where attending is allowed.
# - The decoder's mask is causal and keeps padding out; [CLS], appended last, reads every real
#   token and no word reads it.
# - Multi-head attention runs $h$ attentions of width $d/h$ side by side; cross-attention takes
#   keys and values from another sequence (the image).
# - coca_min's `Attention` and `causal_padding_mask` equal the from-scratch versions.
#
# ## Exercises
# 1. Show that without the $1/\sqrt d$ factor the softmax of random scores gets more peaked as
#    $d$ grows: plot the largest weight of a row against $d$.
# 2. Make a padding row attend to nothing (drop the diagonal) and find where NaN appears.
# 3. Open-ended: the [CLS] token sits after the padding, not right after [EOS]. What would
#    change for its position embedding, and for the text embedding of a caption padded to
#    different lengths, if it were placed right after [EOS] instead?
#
# **Coursework.** This lesson teaches the graded exercises `text_mask` (`causal_padding_mask`
# in `coca_min/model/layers.py`, 5 points, about 15 min) and `attention` (`Attention.forward` in
# `coca_min/model/layers.py`, 10 points, about 30 min). In the student version (`python -m
# coca_min.coursework make-student`, see `coca_min/coursework/README.md`) their code is
# blanked; write it between the `# BEGIN EXERCISE` and `# END EXERCISE` markers, and run the
# tests named in `coca_min/coursework/exercises.py`.
