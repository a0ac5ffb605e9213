# %% [markdown]
# # Lesson 03 — The image encoder: a Vision Transformer
#
# **What you will learn**
# - how an image becomes a sequence of tokens: patches, a linear patch embedding, a learned
#   position embedding;
# - the pre-LayerNorm transformer block, written from scratch;
# - why CoCa's ViT has no [CLS] token;
# - how big the paper's encoders are, counted from the configs (Table 1) without any memory.
#
# **Paper**: §3.2 "image encoder", Table 1 (the sizes) and §4.1 (288 px images, patch 18).
#
# **Assumes**: lesson 02 (attention).

# %% [markdown]
# ## Set-up
# Imports, a fixed seed and thread count (the same numbers on every run), and the versions.

# %%
import math

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from coca_min import PRESETS, CoCa, count_parameters
from coca_min.data.datasets import TinyShapes
from coca_min.data.synthetic import shapes
from coca_min.model.vit import VisionTransformer

torch.manual_seed(0)
torch.set_num_threads(2)
print("torch", torch.__version__)

# %% [markdown]
# ## 1. Patches
#
# A transformer reads a sequence. The ViT (Dosovitskiy et al. 2021) makes one from an image by
# cutting it into non-overlapping $p \times p$ patches in reading order and flattening each:
# an image of $H \times W$ pixels gives $N = (H/p)(W/p)$ tokens of $3p^2$ numbers. The tiny
# preset cuts 48 px images into 8 px patches: $N = 36$ tokens of 192 numbers.

# %%
config = PRESETS["tiny"]
images = TinyShapes("val", limit=4).images(range(4))  # (4, 3, 48, 48)
p = config.patch_size
B, C, H, W = images.shape
grid = images.view(B, C, H // p, p, W // p, p)  # (B, C, rows, p, cols, p)
patches = grid.permute(0, 2, 4, 3, 5, 1).reshape(B, (H // p) * (W // p), p * p * C)  # (B, N, p·p·C)
print("patches", tuple(patches.shape), "= (images, tokens, numbers per patch)")

# %% [markdown]
# tiny_data draws its objects on a 3 × 3 grid of 16 px cells, and each cell is exactly 2 × 2
# patches, so every object sits where four patches meet and each patch shows about a quarter
# of it (objects are moved by up to 1 px).
#
# **Check**: token $n$ is the pixel block at patch row $n // 6$, column $n \% 6$, flattened as
# (row in patch, column in patch, channel): the order coca_min's ViT uses.

# %%
for n in [0, 7, 35]:
    r, c = divmod(n, W // p)
    block = images[:, :, r * p : (r + 1) * p, c * p : (c + 1) * p]  # (B, 3, p, p)
    assert torch.equal(patches[:, n], block.permute(0, 2, 3, 1).reshape(B, -1))
print("tokens 0, 7, 35 are their pixel blocks")

# %% [markdown]
# A picture of the cut, with each token's number.

# %%
fig, ax = plt.subplots(figsize=(4.5, 4.5))
ax.imshow(shapes.PALETTE[TinyShapes("val", limit=1).pixels[0].numpy()], interpolation="nearest")
for line in range(0, 49, p):
    ax.axhline(line - 0.5, color="white", lw=0.6)
    ax.axvline(line - 0.5, color="white", lw=0.6)
for n in range(36):
    ax.text((n % 6) * p + 1, (n // 6) * p + 2.5, str(n), color="yellow", fontsize=6)
ax.set(title="one image cut into 36 patches of 8 px (token numbers)", xlabel="x (pixels)", ylabel="y (pixels)")
fig.tight_layout()

# %% [markdown]
# ## 2. Patch and position embeddings
#
# Each flattened patch is projected to the model width $D$ by one linear map (the same as a
# convolution with kernel and stride $p$), and a learned vector per position is added, since
# attention itself does not know where a token came from:
#
# $$x_n = W_E\, \text{patch}_n + b_E + e^\text{pos}_n, \qquad n = 0, \dots, N-1.$$
#
# We borrow the weights of a coca_min ViT so that the two can be compared (the check comes
# with the whole encoder, in section 3).

# %%
vit = VisionTransformer(config.image_size, p, config.vision_width, config.vision_layers,
                        config.vision_heads, config.vision_mlp)  # fmt: skip
x = patches @ vit.patch_embed.weight.T + vit.patch_embed.bias + vit.pos_embed  # (B, N, D)
print("tokens", tuple(x.shape))

# %% [markdown]
# ## 3. Pre-LayerNorm blocks
#
# Each block adds attention and then an MLP to the residual stream, each reading a
# LayerNorm-ed copy (the "pre-LN" form, which trains stably without warm-up tricks):
#
# $$x \leftarrow x + \text{MHA}(\text{LN}(x)), \qquad x \leftarrow x + W_2\, \text{GELU}(W_1\, \text{LN}(x)).$$
#
# No mask: every patch may look at every patch. After the last block, one more LayerNorm.

# %%
def attention(x, attn, heads):
    Bx, N, D = x.shape
    split = lambda t: t.view(Bx, N, heads, D // heads).transpose(1, 2)  # (B, h, N, D/h)
    q, k, v = split(attn.q_proj(x)), split(attn.k_proj(x)), split(attn.v_proj(x))
    weights = (q @ k.transpose(-1, -2) / math.sqrt(D // heads)).softmax(-1)  # (B, h, N, N)
    return attn.out_proj((weights @ v).transpose(1, 2).reshape(Bx, N, D))


def block(x, b, heads):
    x = x + attention(F.layer_norm(x, x.shape[-1:], b.ln_attn.weight, b.ln_attn.bias), b.attn, heads)
    h = F.layer_norm(x, x.shape[-1:], b.ln_mlp.weight, b.ln_mlp.bias)
    return x + b.mlp.fc_out(F.gelu(b.mlp.fc_in(h)))


with torch.no_grad():
    ours = x
    for b in vit.blocks:
        ours = block(ours, b, config.vision_heads)
    ours = F.layer_norm(ours, ours.shape[-1:], vit.ln_out.weight, vit.ln_out.bias)
print("image tokens", tuple(ours.shape), "= one feature per patch")

# %% [markdown]
# **Check**: our from-scratch encoder equals `coca_min.model.vit.VisionTransformer` on the same
# weights and images, to 1e-5.

# %%
with torch.no_grad():
    assert torch.allclose(ours, vit(images), atol=1e-5)
print("equal to coca_min.model.vit.VisionTransformer")

# %% [markdown]
# The output is one feature vector per patch, not one per image: a classification ViT would
# add a [CLS] token and keep only its output. CoCa keeps all $N$ tokens and lets two
# *attentional poolers* (lesson 04) choose what to read from them: one vector for the
# contrastive embedding, many for the captioner's cross-attention.
#
# ## 4. How big the paper's encoders are
#
# Counting one block: attention has four $D \times D$ matrices with biases, the MLP two
# matrices $D \times M$ and $M \times D$ with biases, and two LayerNorms a scale and a shift each:
#
# $$\underbrace{4D^2 + 4D}_\text{attention} + \underbrace{2DM + M + D}_\text{MLP} + \underbrace{4D}_\text{2 LN},
# \quad\text{plus } (3p^2 D + D) + N D + 2D \text{ for patch, position and final LN.}$$

# %%
def vit_parameters(c):
    D, M, N = c.vision_width, c.vision_mlp, (c.image_size // c.patch_size) ** 2
    per_block = 4 * D * D + 4 * D + 2 * D * M + M + D + 4 * D
    return c.vision_layers * per_block + 3 * c.patch_size**2 * D + D + N * D + 2 * D


for size in ["tiny", "base", "large", "coca"]:
    print(f"{size:6s} {vit_parameters(PRESETS[size]) / 1e6:8.1f}M encoder parameters (formula)")

# %% [markdown]
# **Check**: the formula equals the parameters of coca_min's encoders, built on the *meta*
# device (shapes without memory, so even the 2.1B model costs nothing), and the encoder plus
# decoder counts match Table 1 to 0.5%: encoders 86M, 303M, 1,011M; with the decoders 383M,
# 787M, 2.1B.

# %%
table_1 = {"base": 383e6, "large": 787e6, "coca": 2.1e9}  # image encoder + text decoder
table_1_encoder = {"base": 86e6, "large": 303e6, "coca": 1011e6}
for size, paper in table_1.items():
    with torch.device("meta"):
        model = CoCa(PRESETS[size])
    counts = count_parameters(model)
    assert counts["encoder"] == vit_parameters(PRESETS[size])
    assert abs(counts["encoder"] - table_1_encoder[size]) / table_1_encoder[size] < 0.005
    ours_total = counts["encoder"] + counts["decoder"]
    assert abs(ours_total - paper) / paper < 0.005, (size, ours_total)
    print(f"{size:6s} encoder {counts['encoder'] / 1e6:7.1f}M + decoder {counts['decoder'] / 1e6:7.1f}M "
          f"= {ours_total / 1e6:7.1f}M   (Table 1: {paper / 1e6:,.0f}M)")  # fmt: skip

# %% [markdown]
# ## Summary
# - A ViT turns an image into $N = (H/p)(W/p)$ tokens: flatten patches, project linearly, add
#   a learned position embedding; then pre-LN blocks (attention, MLP) with no mask.
# - CoCa's ViT returns every patch's feature and no [CLS]: the poolers read from them.
# - The paper's encoders (86M, 303M, 1,011M parameters) follow from the config by a formula;
#   with the decoders they give Table 1's 383M, 787M and 2.1B.
# - Our from-scratch encoder equals `coca_min.model.vit.VisionTransformer`.
#
# ## Exercises
# 1. Show that `patch_embed` is a convolution: build `nn.Conv2d(3, D, kernel_size=8, stride=8)`
#    with the same weights (reshaped) and compare its output with `patches @ W.T + b`.
# 2. How does the number of image tokens, and the cost of one attention layer, change if the
#    tiny preset used 4 px patches? Count both.
# 3. Open-ended: the paper ends its pretraining with one epoch at 576 px after 288 px. The
#    position embedding has one row per patch of a 288 px image; how would you give it rows
#    for 576 px, and what should they start as?
#
# **Coursework.** This lesson teaches the graded exercise `vit_forward`
# (`VisionTransformer.forward` in `coca_min/model/vit.py`, 10 points, about 20 min). In the student
# version (`python -m coca_min.coursework make-student`, see `coca_min/coursework/README.md`)
# its code is blanked; write it between the `# BEGIN EXERCISE` and `# END EXERCISE` markers,
# and run the tests named in `coca_min/coursework/exercises.py`.
