# %% [markdown]
# # Lesson 00 — The task and the data
#
# **What you will learn**
# - what CoCa is: one model with two heads, trained with two losses at once;
# - what the shipped `tiny_data/` set holds, and how its images and captions are stored;
# - how a caption is made from a scene's ground truth, so you can read what the model must learn;
# - why eight colour–shape pairs are held out of training, and what that tests.
#
# **Paper**: Yu et al. 2022, *CoCa: Contrastive Captioners are Image-Text Foundation Models*,
# §1 and §3.1–3.2 (the model at a glance), §4.1 (the data it is trained on).
#
# **Assumes**: PyTorch tensors and `nn.Module`; nothing about the paper.

# %% [markdown]
# ## Set-up
# Imports, a fixed seed and a fixed thread count, so that this notebook gives the same numbers
# on every run; the versions say what it was built with.

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch

from coca_min.data.datasets import MEAN, STD, TINY_DATA, TinyShapes
from coca_min.data.synthetic import shapes

torch.manual_seed(0)
torch.set_num_threads(2)
print("torch", torch.__version__, "| numpy", np.__version__)

# %% [markdown]
# ## 1. CoCa in one picture
#
# CoCa is an image encoder and a text decoder trained together on image–caption pairs. The
# decoder is cut in two: its first half (the *unimodal* layers) reads the caption alone and
# gives a text embedding; its second half (the *multimodal* layers) also looks at the image and
# predicts the caption word by word. One forward pass gives both, so the model is trained with
# two losses at once (paper eq. 1–3):
#
# $$\mathcal{L}_\text{CoCa} = \lambda_\text{Con}\,\mathcal{L}_\text{Con} + \lambda_\text{Cap}\,\mathcal{L}_\text{Cap},
# \qquad \lambda_\text{Con} = 1,\ \lambda_\text{Cap} = 2.$$
#
# - $\mathcal{L}_\text{Con}$, the **contrastive** loss: in a batch of $N$ pairs, each image's
#   embedding must be closest to its own caption's embedding (and the other way round). This
#   gives an embedding space for retrieval and zero-shot classification, as CLIP does.
# - $\mathcal{L}_\text{Cap}$, the **captioning** loss: the next-token cross-entropy of the caption
#   given the image, as an image captioner is trained.
#
# In coca_min, the paper is the sub-package `coca_min/model/`: about 1,000 lines for the
# layers, the image encoder, the poolers, the decoder, the model, the losses and captioning.
# The rest of `coca_min/` is plumbing around it (data, training, evaluation), and the model
# imports none of it.
#
# The cell below runs coca_min's tiny model once on two random images and captions, to show
# the two kinds of output the two losses read.

# %%
from coca_min import PRESETS, CoCa
from coca_min.model.losses import coca_loss

model = CoCa(PRESETS["tiny"])
images = torch.randn(2, 3, 48, 48)  # (batch, RGB, height, width)
tokens = torch.tensor([[1, 40, 50, 60, 2], [1, 70, 80, 2, 0]])  # [BOS] words [EOS] [PAD]
outputs = model(images, tokens)
for name, value in outputs.items():
    print(f"{name:16s} {tuple(value.shape)}")

# %% [markdown]
# The image and text embeddings, shape (batch, 128), feed the contrastive loss; the logits,
# shape (batch, tokens − 1, vocabulary), predict each next token for the captioning loss.
#
# **Check**: coca_min's loss is exactly $1 \cdot \mathcal{L}_\text{Con} + 2 \cdot \mathcal{L}_\text{Cap}$
# by default (to float rounding, 1e-6).

# %%
losses = coca_loss(outputs, tokens, pad_id=0)
by_hand = 1.0 * losses["contrastive"] + 2.0 * losses["caption"]
assert torch.allclose(losses["loss"], by_hand, atol=1e-6)
print({k: round(v.item(), 4) for k, v in losses.items()})

# %% [markdown]
# ## 2. The data on disk
#
# The paper trains on billions of web images (JFT-3B and ALIGN, §4.1), which a laptop cannot
# hold. `tiny_data/` is this project's stand-in: 34,000 images of coloured shapes on a 3×3
# grid, each with three captions, made by `coca_min/data/synthetic/shapes.py`. Each split is one `.npz` file;
# we open one by hand to see what is stored.

# %%
with np.load(TINY_DATA / "val.npz") as data:
    val = {key: data[key] for key in data.files}
for key, array in val.items():
    print(f"{key:9s} {array.dtype}  {array.shape}")

# %% [markdown]
# An image is stored as 48 × 48 *palette indices* (0 is the background, 1–8 the eight
# colours), which is why 34,000 images take 2.5 MB. `objects` is the ground truth: for each of up
# to three objects, (shape, colour, size, row, column) as indices, and −1 for no object.
#
# **Check**: every split has the number of images `shapes.SPLITS` promises.

# %%
for split, (count, seed) in shapes.SPLITS.items():
    with np.load(TINY_DATA / f"{split}.npz") as data:
        assert data["pixels"].shape == (count, 48, 48) and data["captions"].shape == (count, 3)
    print(f"{split:10s} {count:6,d} images")

# %% [markdown]
# ## 3. From palette indices to the model's input
#
# To feed the model we turn indices into RGB with the palette, scale to [0, 1], and normalise
# each channel with CLIP's statistics: $x = (\text{rgb}/255 - \mu) / \sigma$. We do it by hand
# for 8 images and compare with what `TinyShapes` gives the model.

# %%
indices = val["pixels"][:8]  # (8, 48, 48) uint8
rgb = shapes.PALETTE[indices]  # (8, 48, 48, 3): a lookup per pixel
x = torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 255  # (8, 3, 48, 48) in [0, 1]
x = (x - MEAN) / STD  # MEAN, STD: (3, 1, 1), broadcast over the pixels
print("by hand:", tuple(x.shape), f"values in [{x.min():.2f}, {x.max():.2f}]")

# %% [markdown]
# **Check**: the hand-made batch equals `TinyShapes("val").images(range(8))` (tolerance 1e-6).

# %%
library = TinyShapes("val", limit=8).images(range(8))
assert torch.allclose(x, library, atol=1e-6)
print("equal to TinyShapes.images")

# %% [markdown]
# A picture says more: the eight images with their first (canonical) caption.

# %%
fig, axes = plt.subplots(2, 4, figsize=(11, 7.5))
for ax, image, caption in zip(axes.flat, rgb, val["captions"][:8, 0]):
    ax.imshow(image, interpolation="nearest")
    ax.set_title("\n".join(str(caption).replace(" and ", " and\n").split("\n")[:3]), fontsize=7)
    ax.set_xlabel("x (pixels)", fontsize=7)
    ax.set_ylabel("y (pixels)", fontsize=7)
    ax.tick_params(labelsize=6)
fig.suptitle("tiny_data val: images 0-7 with their canonical captions")
fig.tight_layout()

# %% [markdown]
# ## 4. Where the captions come from
#
# Every caption is made from the ground truth by a template, so you can always say what a
# right caption is. The *canonical* one names every object in full, in reading order (top row
# first, left to right): "a small red circle at the top left and a large blue square in the
# center". The other two leave things out: "there is a red circle and a blue square"
# (existential) and "a red circle is left of a blue square" (relational).
#
# We write the canonical template from scratch from the `objects` array.

# %%
def place(row, col):
    where = shapes.POSITIONS[row][col]  # e.g. "top left"
    if where == "center":
        return "in the center"
    return f"on the {where}" if row == 1 else f"at the {where}"  # "on the left", "at the top"


def canonical(objects):
    phrases = []
    for shape, colour, size, row, col in sorted(o for o in objects.tolist() if o[0] != -1):
        words = f"{shapes.SIZES[size]} {shapes.COLOURS[colour]} {shapes.SHAPES[shape]}"
        article = "an" if words[0] in "aeiou" else "a"
        phrases.append((row, col, f"{article} {words} {place(row, col)}"))
    return " and ".join(text for _, _, text in sorted(phrases))  # reading order


print(val["objects"][0].tolist())
print(canonical(val["objects"][0]))

# %% [markdown]
# **Check**: the from-scratch template gives the stored canonical caption of every `val` image.

# %%
ours = [canonical(objects) for objects in val["objects"]]
assert ours == val["captions"][:, 0].tolist()
print(f"all {len(ours):,} canonical captions equal")

# %% [markdown]
# ## 5. Held-out compositions
#
# The model sees every colour and every shape in training, but eight colour–shape *pairs*
# never: red circle, green square, blue triangle, yellow diamond, magenta cross, cyan circle,
# orange square, white triangle. Every `test_comp` image has at least one of them. A model that
# only memorised whole pairs fails there; one that learned "red" and "circle" apart can still
# name a red circle. We count the pairs of `train` to see the gap.

# %%
with np.load(TINY_DATA / "train.npz") as data:
    train_objects = data["objects"]  # (30000, 3, 5)
present = train_objects[train_objects[:, :, 0] != -1]  # (objects, 5): every object of train
counts = np.zeros((len(shapes.COLOURS), len(shapes.SHAPES)), dtype=int)  # (8 colours, 5 shapes)
np.add.at(counts, (present[:, 1], present[:, 0]), 1)
print(f"{len(present):,} objects in train; fewest per seen pair {counts[counts > 0].min():,}")

# %% [markdown]
# The counts as a heatmap: every seen pair has about 1,800 objects, the held-out ones none.

# %%
fig, ax = plt.subplots(figsize=(7, 4.5))
shown = ax.imshow(counts, cmap="viridis")
ax.set_xticks(range(5), shapes.SHAPES, rotation=30)
ax.set_yticks(range(8), shapes.COLOURS)
for c, s in shapes.HELD_OUT:
    ax.text(shapes.SHAPES.index(s), shapes.COLOURS.index(c), "held\nout", ha="center", va="center", color="white", fontsize=7)
ax.set(title="objects per colour-shape pair in train", xlabel="shape", ylabel="colour")
fig.colorbar(shown, label="objects")
fig.tight_layout()

# %% [markdown]
# **Check**: the held-out pairs have no object in `train`, and every `test_comp` image has one.

# %%
for colour, shape in shapes.HELD_OUT:
    assert counts[shapes.COLOURS.index(colour), shapes.SHAPES.index(shape)] == 0
held = {(shapes.COLOURS.index(c), shapes.SHAPES.index(s)) for c, s in shapes.HELD_OUT}
with np.load(TINY_DATA / "test_comp.npz") as data:
    comp = data["objects"]
assert all(any((o[1], o[0]) in held for o in scene if o[0] != -1) for scene in comp)
print(f"held out of train: {len(held)} pairs; in every one of the {len(comp):,} test_comp images")

# %% [markdown]
# ## Summary
# - CoCa trains one image encoder and one split text decoder with two losses from one forward
#   pass: contrastive (embeddings) and captioning (next-token logits), weighted 1 and 2.
# - `tiny_data/` stores palette indices, ground-truth objects and three captions per image;
#   `TinyShapes` turns them into normalised RGB exactly as we did by hand.
# - Captions are templates of the ground truth, so a caption's correctness can be checked.
# - Eight colour–shape pairs are held out of training: `test_comp` measures composition.
#
# ## Exercises
# 1. Print the three captions of `val` image 5 and find, in its `objects` row, each word they use.
# 2. Write the *existential* template ("there is a red circle and …") from scratch. Its word
#    order is shuffled per image: how can you check your version against `val["captions"][:, 1]`
#    all the same? (Hint: compare the sets of phrases.)
# 3. Open-ended: the held-out pairs test colour–shape composition. Design another held-out
#    split that would test position or size, and say what a model that passes it must have
#    learned.
