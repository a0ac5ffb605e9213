# %% [markdown]
# # Lesson 04 — The attentional poolers
#
# **What you will learn**
# - the attentional pooler: a set of learned queries that attend over the image tokens;
# - why CoCa uses two: many queries for the captioner, one for the contrastive embedding;
# - the paper's *cascade* (the contrastive pooler reads the caption pooler's output) against
#   the *parallel* ablation;
# - what a trained pooler looks at, on the patch grid.
#
# **Paper**: §3.2 "Attentional Poolers" and Figure 2; the ablation of the number of queries and
# of cascade against parallel is in §4.5.
#
# **Assumes**: lesson 02 (cross-attention) and lesson 03 (image tokens).

# %% [markdown]
# ## Set-up
# The figure at the end needs a trained model: `lessons/assets/tiny_coca.pt`, the model of the
# README's tiny run, shipped with the lessons (see `lessons/README.md` for how it was made).

# %%
import math
from dataclasses import replace
from pathlib import Path

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

import coca_min
from coca_min import PRESETS, CoCa, load_model
from coca_min.data.datasets import TinyShapes
from coca_min.data.synthetic import shapes

torch.manual_seed(0)
torch.set_num_threads(2)
print("torch", torch.__version__)
ASSETS = Path(coca_min.__file__).resolve().parents[1] / "lessons" / "assets"  # from any working directory

# %% [markdown]
# ## 1. Learned queries
#
# The ViT gives $N$ image tokens (36 for the tiny model, 256 in the paper). A task wants a fixed
# number of vectors that hold what *it* needs: one vector to compare with a text, many for a
# captioner that reads different parts of the image word by word. An attentional pooler is one
# cross-attention layer (Lee et al. 2019, "Set Transformer") whose $n$ queries are parameters,
# learned with the rest:
#
# $$\text{Pool}(X) = \text{LN}\big(\text{MHA}(Q, \text{LN}(X), \text{LN}(X))\big), \qquad
# Q \in \mathbb{R}^{n \times D} \text{ learned}, \ X \in \mathbb{R}^{N \times D_v}.$$
#
# We write it with the weights of the tiny model's caption pooler (64 queries).

# %%
model = CoCa(PRESETS["tiny"]).eval()
images = TinyShapes("val", limit=4).images(range(4))  # (4, 3, 48, 48)
with torch.no_grad():
    vit_tokens = model.image_encoder(images)  # (B, N = 36, 64)
pooler = model.caption_pooler
heads = pooler.attn.n_heads


def pool(context, pooler, return_weights=False):
    B = context.shape[0]
    queries = pooler.queries.expand(B, -1, -1)  # (B, n, D): the same learned queries for every image
    context = F.layer_norm(context, context.shape[-1:], pooler.ln_context.weight, pooler.ln_context.bias)
    attn = pooler.attn
    split = lambda t: t.view(B, t.shape[1], heads, -1).transpose(1, 2)  # (B, h, len, D/h)
    q, k, v = split(attn.q_proj(queries)), split(attn.k_proj(context)), split(attn.v_proj(context))
    weights = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(-1)  # (B, h, n, N)
    out = attn.out_proj((weights @ v).transpose(1, 2).reshape(B, -1, queries.shape[-1]))  # (B, n, D)
    out = F.layer_norm(out, out.shape[-1:], pooler.ln_out.weight, pooler.ln_out.bias)
    return (out, weights) if return_weights else out


with torch.no_grad():
    caption_tokens, weights = pool(vit_tokens, pooler, return_weights=True)
print("image tokens", tuple(vit_tokens.shape), "-> caption tokens", tuple(caption_tokens.shape))
print("attention weights", tuple(weights.shape), "= (images, heads, queries, image tokens)")

# %% [markdown]
# **Check**: equals coca_min's `AttentionalPooler` (1e-5).

# %%
with torch.no_grad():
    assert torch.allclose(caption_tokens, pooler(vit_tokens), atol=1e-5)
print("equal to coca_min.model.pooler.AttentionalPooler")

# %% [markdown]
# ## 2. Two poolers, in cascade
#
# - The **caption pooler** has many queries (256 in the paper, 64 here: each caption word can
#   cross-attend to the one that holds what it needs).
# - The **contrastive pooler** has one query; its output, projected and normalised, is the
#   image embedding $x$ that the contrastive loss compares with the text embedding.
#
# In the paper's default, the **cascade**, the contrastive pooler reads the caption pooler's
# output, not the ViT's tokens; the *parallel* ablation lets both read the ViT.
#
# **Check**: the image embedding of `encode_image` is the cascade, from scratch (1e-5).

# %%
with torch.no_grad():
    pooled = pool(caption_tokens, model.contrastive_pooler)[:, 0]  # (B, D): the single query
    image_embedding = F.normalize(model.image_projection(pooled), dim=-1)  # (B, E), unit norm
    library_embedding, library_caption_tokens = model.encode_image(images)
assert torch.allclose(image_embedding, library_embedding, atol=1e-5)
assert torch.allclose(caption_tokens, library_caption_tokens, atol=1e-5)
print("cascade:", tuple(vit_tokens.shape), "->", tuple(caption_tokens.shape), "->", tuple(image_embedding.shape))

# %% [markdown]
# **Check** (a property of the wiring): moving the caption pooler's queries moves the image
# embedding in the cascade (by more than 1e-6) and leaves it unchanged (to 1e-6) in the
# parallel mode.

# %%
def embedding_moves(mode):
    torch.manual_seed(1)
    m = CoCa(replace(PRESETS["tiny"], pooler_mode=mode)).eval()
    with torch.no_grad():
        before = m.encode_image(images)[0]
        m.caption_pooler.queries.add_(torch.randn_like(m.caption_pooler.queries))
        after = m.encode_image(images)[0]
    return not torch.allclose(before, after, atol=1e-6)


assert embedding_moves("cascade") and not embedding_moves("parallel")
print("cascade: the embedding reads the caption pooler; parallel: it does not")

# %% [markdown]
# ## 3. What a trained pooler looks at
#
# An untrained pooler spreads its attention over the patches (measured below). The trained tiny model (the README's tiny run)
# has learned where to look. For one test image we average, over its four heads, each caption
# query's attention over the 36 patches, and draw the maps on the 6 × 6 patch grid.

# %%
trained = load_model(ASSETS / "tiny_coca.pt")
test = TinyShapes("test", limit=200)
with torch.no_grad():
    tokens_of_test = trained.image_encoder(test.images(range(200)))  # (200, 36, 64)
    _, trained_weights = pool(tokens_of_test, trained.caption_pooler, return_weights=True)
maps = trained_weights.mean(1).view(200, -1, 6, 6)  # (images, queries, 6, 6), heads averaged
image = 0
strongest = maps[image].flatten(1).max(1).values.argsort(descending=True)[:5]  # the most focused queries
fig, axes = plt.subplots(1, 6, figsize=(14, 2.9))
axes[0].imshow(shapes.PALETTE[test.pixels[image].numpy()], interpolation="nearest")
axes[0].set(title="test image 0", xlabel="x (pixels)", ylabel="y (pixels)")
for ax, query in zip(axes[1:], strongest.tolist()):
    shown = ax.imshow(maps[image, query], cmap="magma", vmin=0)
    ax.set(title=f"caption query {query}", xlabel="patch column", ylabel="patch row")
    fig.colorbar(shown, ax=ax, fraction=0.046, label="attention weight")
fig.suptitle(f"caption pooler attention over the 6 x 6 patches: {test.captions[image][0]}", fontsize=9)
fig.tight_layout()

# %% [markdown]
# **Check** (a stated property of the trained model): on 200 test images the caption queries
# put more of their attention on the patches that show part of an object than those patches'
# share of the image, at least 1.5 times as much.

# %%
shows_object = torch.from_numpy(test.pixels.numpy().reshape(200, 6, 8, 6, 8).max(axis=(2, 4)) > 0)  # (200, 6, 6)
share = shows_object.float().mean().item()  # the fraction of patches that show an object
mass = (maps * shows_object[:, None]).sum((2, 3)).mean().item()  # attention on those patches
with torch.no_grad():  # the same measure for the untrained model of section 1
    _, untrained_weights = pool(model.image_encoder(test.images(range(200))), model.caption_pooler, return_weights=True)
untrained = (untrained_weights.mean(1).view(200, -1, 6, 6) * shows_object[:, None]).sum((2, 3)).mean().item()
print(f"object patches: {share:.1%} of the image; {untrained:.1%} of an untrained pooler's attention, "
      f"{mass:.1%} of the trained one's")
assert mass >= 1.5 * share

# %% [markdown]
# ## Summary
# - An attentional pooler is one cross-attention layer with learned queries: $N$ image tokens
#   in, exactly $n$ task-specific tokens out.
# - CoCa uses a many-query caption pooler for the decoder and a one-query contrastive pooler
#   for the image embedding, in cascade (checked on coca_min's `encode_image`).
# - Trained, the caption queries look at the objects, not at the background.
#
# ## Exercises
# 1. Count the parameters of both poolers of the tiny model by hand and compare with
#    `count_parameters(model)["poolers"]` (which also holds the image projection and the
#    temperature).
# 2. For test image 0, which patches does the *contrastive* pooler's query weight most? It
#    reads caption tokens, not patches: find a way to trace its attention back to the grid.
# 3. Open-ended: the paper found 256 caption queries better than fewer for captioning. On the
#    tiny data 64 were better than 32 (README). Why might more queries help a captioner but
#    not a one-vector contrastive embedding?
#
# **Coursework.** This lesson teaches the graded exercise `attentional_pooler`
# (`AttentionalPooler.forward` in `coca_min/model/pooler.py`, 5 points, about 15 min). In the student
# version (`python -m coca_min.coursework make-student`, see `coca_min/coursework/README.md`)
# its code is blanked; write it between the `# BEGIN EXERCISE` and `# END EXERCISE` markers,
# and run the tests named in `coca_min/coursework/exercises.py`.
