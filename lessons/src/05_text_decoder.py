# %% [markdown]
# # Lesson 05 — The decoupled text decoder
#
# **What you will learn**
# - how CoCa cuts one text decoder in two: *unimodal* layers (text only) and *multimodal*
#   layers (text with cross-attention to the image);
# - where the text embedding comes from: a [CLS] token appended at the end;
# - why that embedding must not depend on padding or on the image, and how to check it;
# - why one forward pass serves both losses.
#
# **Paper**: §3.2 "Decoupled text decoder and CoCa architecture" and Figure 2.
#
# **Assumes**: lesson 02 (masks) and lesson 03 (pre-LN blocks).

# %% [markdown]
# ## Set-up
# Imports, a fixed seed and thread count, the versions, and an untrained tiny CoCa to study.

# %%
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from coca_min import PRESETS, CoCa
from coca_min.data.datasets import TinyShapes
from coca_min.model.layers import causal_padding_mask

torch.manual_seed(0)
torch.set_num_threads(2)
print("torch", torch.__version__)
model = CoCa(PRESETS["tiny"]).eval()  # untrained: every property below holds for any weights
decoder = model.text_decoder
print(f"{len(decoder.unimodal_layers)} unimodal + {len(decoder.multimodal_layers)} multimodal layers, width {PRESETS['tiny'].text_width}")

# %% [markdown]
# ## 1. Two halves of one decoder
#
# A captioner's decoder cross-attends to the image in every layer, so its text features always
# depend on the image: no good as a text embedding for retrieval. CoCa's answer is to leave
# cross-attention out of the first $n_\text{uni}$ layers:
#
# - **unimodal** layers: causal self-attention and MLP, text only. A learned [CLS] vector is
#   appended at the end of the text; its output, after a LayerNorm and a linear projection,
#   normalised to unit length, is the **text embedding** $y$.
# - **multimodal** layers: causal self-attention, **cross-attention** to the image (the
#   caption pooler's tokens, lesson 04), MLP; then a LayerNorm and the LM head give the
#   next-token logits.
#
# We run the unimodal half from scratch on two padded captions, with the decoder's own weights.

# %%
val = TinyShapes("val", limit=2)
tokenizer = val.tokenizer
tokens = tokenizer.encode_batch(["a small red circle at the top", "there is a blue cross"], context_length=12)
B, T = tokens.shape
print(tokens)


def block(x, b, mask):  # pre-LN: self-attention, [cross-attention], MLP (coca_min.model.layers.Block)
    x = x + b.attn(b.ln_attn(x), mask=mask)
    return x + b.mlp(b.ln_mlp(x))


@torch.no_grad()
def unimodal(tokens, cls_sees_padding=False):
    B, T = tokens.shape
    x = decoder.token_embedding(tokens) + decoder.pos_embedding[:T]  # (B, T, D)
    x = torch.cat([x, decoder.cls_embedding.expand(B, 1, -1)], dim=1)  # (B, T + 1, D): [CLS] last, no position
    is_pad = torch.cat([tokens == 0, torch.zeros(B, 1, dtype=torch.bool)], dim=1)  # [CLS] is not padding
    mask = causal_padding_mask(is_pad)  # (B, T + 1, T + 1), lesson 02
    if cls_sees_padding:  # a deliberate bug, for section 3: [CLS] may read [PAD]
        mask[:, T, :] = True
    for b in decoder.unimodal_layers:
        x = block(x, b, mask)
    token_features, cls_out = x[:, :T], x[:, T]  # (B, T, D), (B, D)
    return F.normalize(decoder.text_projection(decoder.ln_cls(cls_out)), dim=-1), token_features  # (B, E), (B, T, D)


text_embedding, token_features = unimodal(tokens)
print("token features", tuple(token_features.shape), "| text embedding", tuple(text_embedding.shape))

# %% [markdown]
# **Check**: equals coca_min's `model.encode_text` (1e-5): the same text embedding and the
# same token features.

# %%
with torch.no_grad():
    library_embedding, library_features = model.encode_text(tokens)
assert torch.allclose(text_embedding, library_embedding, atol=1e-5)
assert torch.allclose(token_features, library_features, atol=1e-5)
print("equal to CoCa.encode_text")

# %% [markdown]
# ## 2. The multimodal half
#
# The multimodal layers continue from the unimodal token features (not from the embeddings)
# and add cross-attention to the image. With *teacher forcing* the decoder reads
# `tokens[:, :-1]` and position $t$ predicts `tokens[:, t + 1]`.

# %%
images = val.images([0, 1])  # (2, 3, 48, 48)
with torch.no_grad():
    _, caption_tokens = model.encode_image(images)  # (B, 64 queries, D): what the decoder reads of the image
    h = token_features[:, :-1]
    text_mask = causal_padding_mask(tokens[:, :-1] == 0)
    for b in decoder.multimodal_layers:
        h = h + b.attn(b.ln_attn(h), mask=text_mask)
        h = h + b.cross_attn(b.ln_cross(h), context=caption_tokens)  # every word sees every image token
        h = h + b.mlp(b.ln_mlp(h))
    logits = decoder.lm_head(decoder.ln_final(h))  # (B, T - 1, vocabulary)
print("caption tokens", tuple(caption_tokens.shape), "-> logits", tuple(logits.shape))

# %% [markdown]
# **Check**: one call of `model(images, tokens)` gives these logits and the text embedding
# above (1e-5): the unimodal half runs once and serves both losses, which is the paper's
# efficiency argument: contrastive and captioning training in one forward pass.

# %%
with torch.no_grad():
    outputs = model(images, tokens)
assert torch.allclose(outputs["logits"], logits, atol=1e-5)
assert torch.allclose(outputs["text_embedding"], text_embedding, atol=1e-5)
print("one forward pass: the same logits and text embedding")

# %% [markdown]
# ## 3. The text embedding does not depend on padding
#
# Padding a caption to more tokens must not change its embedding, or retrieval would
# depend on the batch it was embedded in. Two things make that hold: [CLS] never attends to a
# [PAD] (the mask), and [CLS] has no position embedding (it always sits after the padding, at a
# position that moves with the padded length).
#
# **Check**: the embedding of an 18-token caption is the same (1e-5) at every padded length
# from 18 to the context of 32.

# %%
caption = "a large green cross on the left and a small white circle at the top right"
n = len(tokenizer.encode(caption))
with torch.no_grad():
    embeddings = torch.cat([model.encode_text(tokenizer.encode_batch([caption], length))[0] for length in range(n, 33)])
assert torch.allclose(embeddings, embeddings[0].expand_as(embeddings), atol=1e-5)
print(f"{len(embeddings)} padded lengths ({n} to 32): one embedding")

# %% [markdown]
# A picture of why the mask matters: the same measurement with the from-scratch decoder in
# which [CLS] may also read the padding (open_clip's CoCa has this bug, issues #549 and
# #1113). There the embedding drifts away as the caption is padded further.

# %%
lengths = list(range(n, 33))
right = torch.cat([unimodal(tokenizer.encode_batch([caption], L))[0] for L in lengths])
broken = torch.cat([unimodal(tokenizer.encode_batch([caption], L), cls_sees_padding=True)[0] for L in lengths])
fig, ax = plt.subplots(figsize=(6, 3.6))
ax.plot(lengths, (right @ right[0]).numpy(), marker=".", label="[CLS] never reads [PAD] (coca_min)")
ax.plot(lengths, (broken @ broken[0]).numpy(), marker=".", label="[CLS] reads [PAD] (the bug)")
ax.set(title="text embedding vs padded length (untrained tiny model)", xlabel="padded length (tokens)",
       ylabel="cosine to the unpadded embedding")  # fmt: skip
ax.legend()
ax.grid(alpha=0.3)
fig.tight_layout()

# %% [markdown]
# ## 4. The text embedding does not see the image, and no token sees the future
#
# The contrastive loss compares an image embedding with a text embedding; if the text
# embedding could look at the image, the comparison would be meaningless.
#
# **Check 1**: the unimodal half has no cross-attention at all, so `encode_text` takes no
# image: the text embedding from one full forward pass is the same (1e-6) with any images.
#
# **Check 2** (causality): changing the last word of a caption changes no logit at an earlier
# position (1e-5).

# %%
with torch.no_grad():
    other = model(torch.randn(2, 3, 48, 48), tokens)
assert all(b.cross_attn is None for b in decoder.unimodal_layers)
assert torch.allclose(other["text_embedding"], outputs["text_embedding"], atol=1e-6)

changed = tokens.clone()
last = int((tokens[0] != 0).sum()) - 2  # the last word of caption 0, before [EOS]
changed[0, last] = 300
with torch.no_grad():
    a, b = model(images, tokens)["logits"], model(images, changed)["logits"]
assert torch.allclose(a[0, :last], b[0, :last], atol=1e-5) and not torch.allclose(a[0, last:], b[0, last:])
print(f"text embedding blind to the image; logits before position {last} unchanged by token {last}")

# %% [markdown]
# ## Summary
# - CoCa's decoder is one stack cut in two: unimodal layers (text only, with [CLS] appended
#   last, whose output is the text embedding) and multimodal layers (with cross-attention to
#   the image's caption tokens, ending in the LM head).
# - One forward pass gives the text embedding for the contrastive loss and the logits for the
#   captioning loss.
# - The text embedding depends neither on padding nor on the image; the captioner never sees
#   later tokens. All three were checked on coca_min's decoder.
#
# ## Exercises
# 1. Give [CLS] the position embedding of its own place (position T, right after the padding)
#    in the from-scratch code, and show which check of section 3 then fails, and why.
# 2. A separate text encoder (as in CLIP) would run a second stack on every caption. Count the
#    multiply-adds of the unimodal and the multimodal halves for one 32-token caption: what
#    share of the decoder's work does CoCa's shared first half save?
# 3. Open-ended: the paper uses 12 unimodal and 12 multimodal layers for CoCa-Base. What do you
#    expect if $n_\text{uni}$ is 1 and $n_\text{multi}$ 23, or the other way round, for
#    retrieval and for captioning? (§4.5 has an ablation.)
#
# **Coursework.** This lesson teaches the graded exercise `cls_token` (`TextDecoder.unimodal`
# in `coca_min/model/decoder.py`, 10 points, about 30 min). In the student version (`python -m
# coca_min.coursework make-student`, see `coca_min/coursework/README.md`) its code is blanked;
# write it between the `# BEGIN EXERCISE` and `# END EXERCISE` markers, and run the tests named
# in `coca_min/coursework/exercises.py`.
