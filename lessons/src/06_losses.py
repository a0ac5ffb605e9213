# %% [markdown]
# # Lesson 06 — The losses
#
# **What you will learn**
# - the contrastive loss (paper eq. 1) from the similarity matrix, by hand, in both directions;
# - its gradient ("softmax minus one-hot"), derived on paper and checked against autograd;
# - the learnable temperature, and why it is clamped at 100;
# - the captioning loss: teacher forcing, [PAD] targets ignored;
# - the weights $\lambda_\text{Con} = 1$, $\lambda_\text{Cap} = 2$, and why CLIP's and open_clip's
#   averaging of the two directions halves the contrastive weight.
#
# **Paper**: §3.1 (eq. 1 and 2, the two losses), §3.2 (eq. 3, their sum), §4.1 (the weights).
#
# **Assumes**: lesson 01 ([PAD] is id 0), lesson 04 (the image embedding $x$), lesson 05 (the
# text embedding $y$, the logits, teacher forcing).

# %% [markdown]
# ## Set-up
# Imports, a fixed seed and thread count, the version; the trained tiny model shipped with the
# lessons (`lessons/README.md`), run on 8 `val` pairs padded by `collate` as in training.

# %%
import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

import coca_min
from coca_min import PRESETS, CoCa, load_model
from coca_min.data.datasets import TinyShapes, collate
from coca_min.data.tokenizer import BYTE_OFFSET, PAD
from coca_min.model.losses import caption_loss, coca_loss, contrastive_loss

torch.manual_seed(0)
torch.set_num_threads(2)
print("torch", torch.__version__)
ASSETS = Path(coca_min.__file__).resolve().parents[1] / "lessons" / "assets"  # from any working directory

trained = load_model(ASSETS / "tiny_coca.pt")
val = TinyShapes("val", limit=8)
tokenizer = val.tokenizer
images, tokens = collate([val[i] for i in range(8)])  # right-padded with PAD to the longest caption
with torch.no_grad():
    outputs = trained(images, tokens)
print("images", tuple(images.shape), "| tokens", tuple(tokens.shape), "| PAD id", PAD)
print({name: tuple(value.shape) for name, value in outputs.items()})

# %% [markdown]
# ## 1. The contrastive loss, from the similarity matrix
#
# A batch holds $N$ image–text pairs. The image embeddings $x_i$ (lesson 04) and the text
# embeddings $y_j$ (lesson 05) have unit length, so $x_i^\top y_j$ is a cosine similarity. All
# $N^2$ of them form the **similarity matrix**; pair $i$ sits on the diagonal. A learnable
# scale $s = 1/\sigma$ (the inverse *temperature* $\sigma$) turns them into logits:
#
# $$z_{ij} = s\, x_i^\top y_j, \qquad Z = s\, X Y^\top \in \mathbb{R}^{N \times N}.$$
#
# Row $i$ of $Z$ asks "which text is image $i$'s?", column $j$ asks "which image is text $j$'s?".
# Paper eq. 1 is a cross-entropy in each direction, with the right answer on the diagonal:
#
# $$\mathcal{L}_\text{Con} = -\frac{1}{N}\left(\sum_{i=1}^{N} \log\frac{\exp(x_i^\top y_i/\sigma)}{\sum_{j=1}^{N}\exp(x_i^\top y_j/\sigma)}
# + \sum_{i=1}^{N} \log\frac{\exp(y_i^\top x_i/\sigma)}{\sum_{j=1}^{N}\exp(y_i^\top x_j/\sigma)}\right).$$
#
# The first sum is image→text (a softmax along each row of $Z$), the second text→image (along
# each column). Note the **sum** of the two means: section 5 comes back to it.

# %%
def contrastive_by_hand(x, y, s):
    logits = s * x @ y.T  # (N, N): z_ij = s x_i.y_j, image i against text j
    positive = logits.diagonal()  # (N,): z_ii, the right pairs
    image_to_text = -(positive - logits.logsumexp(dim=1)).mean()  # eq. 1, first sum: softmax over each row
    text_to_image = -(positive - logits.logsumexp(dim=0)).mean()  # eq. 1, second sum: softmax over each column
    return image_to_text + text_to_image, image_to_text, text_to_image


x, y, s = outputs["image_embedding"], outputs["text_embedding"], outputs["logit_scale"]
similarity = x @ y.T  # (N, N) cosines
l_con, i2t, t2i = contrastive_by_hand(x, y, s)
print("x", tuple(x.shape), "| y", tuple(y.shape), "| s", round(s.item(), 3), "| similarity", tuple(similarity.shape))
print(f"image->text {i2t.item():.6f} + text->image {t2i.item():.6f} = L_con {l_con.item():.6f}")

# %% [markdown]
# The cosines and the image→text softmax (each row sums to 1): at its learned $s$ the trained
# model puts almost all of each row on its own text, hence the tiny loss.

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 4))
for ax, matrix, title, label in [
    (axes[0], similarity, "cosine similarity $x_i^T y_j$", "cosine"),
    (axes[1], (s * similarity).softmax(dim=1), f"image->text softmax of $s\\,x_i^T y_j$ (s = {s.item():.1f})", "probability"),
]:
    shown = ax.imshow(matrix.numpy(), cmap="viridis")
    ax.set(title=title, xlabel="text j", ylabel="image i", xticks=range(8), yticks=range(8))
    fig.colorbar(shown, ax=ax, fraction=0.046, label=label)
fig.suptitle("8 val pairs through the trained tiny model: the right pairs are on the diagonal")
fig.tight_layout()

# %% [markdown]
# **Check 1**: the from-scratch eq. 1 equals `coca_min.model.losses.contrastive_loss`, on the trained
# batch and on random unit vectors with $s = 1/0.07$ (1e-6); and swapping images and texts
# swaps the two directions (1e-6).

# %%
assert torch.allclose(l_con, contrastive_loss(x, y, s), atol=1e-6)
rx, ry = F.normalize(torch.randn(8, 128), dim=-1), F.normalize(torch.randn(8, 128), dim=-1)
scale = torch.tensor(1 / 0.07)
random_loss, random_i2t, random_t2i = contrastive_by_hand(rx, ry, scale)
assert torch.allclose(random_loss, contrastive_loss(rx, ry, scale), atol=1e-6)
_, swapped_i2t, swapped_t2i = contrastive_by_hand(ry, rx, scale)
assert torch.allclose(swapped_i2t, random_t2i, atol=1e-6) and torch.allclose(swapped_t2i, random_i2t, atol=1e-6)
print(f"random unit vectors: L_con {random_loss.item():.4f}, equal to coca_min "
      f"(2 log 8 = {2 * math.log(8):.4f} if every softmax were uniform)")  # fmt: skip

# %% [markdown]
# Random vectors score above the uniform value: at $s = 1/0.07$ their small random cosines
# become logits a few units apart, so each softmax is sharp, and mostly on a wrong text.

# %% [markdown]
# ## 2. The gradient, on paper
#
# Write $c_{ij} = x_i^\top y_j$, $z_{ij} = s\,c_{ij}$, and the two softmaxes of $Z$:
#
# $$P_{ij} = \frac{e^{z_{ij}}}{\sum_k e^{z_{ik}}} \ \text{(along row } i\text{: image } i\text{'s distribution over texts)},\qquad
# Q_{ij} = \frac{e^{z_{ij}}}{\sum_k e^{z_{kj}}} \ \text{(along column } j\text{: text } j\text{'s distribution over images)}.$$
#
# Then $\mathcal{L}_\text{Con} = -\frac1N \sum_i \log P_{ii} - \frac1N \sum_j \log Q_{jj}$. The
# derivative of $-\log \operatorname{softmax}(z)_i$ with respect to $z$ is the softmax minus the
# one-hot vector of $i$, and row $i$ appears only in the first sum's term $i$, column $j$ only
# in the second's term $j$, so
#
# $$G = \frac{\partial \mathcal{L}_\text{Con}}{\partial Z} = \frac1N\big[(P - I) + (Q - I)\big].$$
#
# The chain rule through $z_{ij} = s\,x_i^\top y_j$ gives the gradients with respect to the
# *normalised* embeddings (exercise 1 adds the normalisation's Jacobian):
#
# $$\frac{\partial \mathcal{L}_\text{Con}}{\partial x_i} = s\sum_j G_{ij}\, y_j = \frac{s}{N}\Big[\sum_j (P_{ij} + Q_{ij})\, y_j - 2\, y_i\Big],
# \qquad
# \frac{\partial \mathcal{L}_\text{Con}}{\partial y_j} = s\sum_i G_{ij}\, x_i = \frac{s}{N}\Big[\sum_i (P_{ij} + Q_{ij})\, x_i - 2\, x_j\Big],$$
#
# $$\frac{\partial \mathcal{L}_\text{Con}}{\partial s} = \sum_{i,j} G_{ij}\, c_{ij}
# = \frac1N \sum_i \Big(\sum_j P_{ij} c_{ij} - c_{ii}\Big) + \frac1N \sum_j \Big(\sum_i Q_{ij} c_{ij} - c_{jj}\Big).$$
#
# Read as a force (gradient descent moves against it): $x_i$ is pulled towards its own text
# $y_i$ with weight $2 - P_{ii} - Q_{ii}$ and pushed away from every other text $y_j$ with weight
# $P_{ij} + Q_{ij}$, the probabilities with which the model confuses the two. When the
# softmaxes are one-hot on the diagonal, the gradient vanishes.
#
# We compute all three by hand in float64, on 6 random pairs of unit vectors in 16 dimensions.

# %%
N, E = 6, 16
x64 = F.normalize(torch.randn(N, E, dtype=torch.float64), dim=-1).requires_grad_()  # free vectors from here
y64 = F.normalize(torch.randn(N, E, dtype=torch.float64), dim=-1).requires_grad_()
s64 = torch.tensor(1 / 0.07, dtype=torch.float64, requires_grad=True)

with torch.no_grad():
    C = x64 @ y64.T  # (N, N): c_ij
    Z = s64 * C  # (N, N): z_ij
    P, Q = Z.softmax(dim=1), Z.softmax(dim=0)  # row softmax (image->text), column softmax (text->image)
    G = ((P - torch.eye(N)) + (Q - torch.eye(N))) / N  # dL/dZ: softmax minus one-hot, both directions
    grad_x = s64 * G @ y64  # (N, E): dL/dx_i = s sum_j G_ij y_j
    grad_y = s64 * G.T @ x64  # (N, E): dL/dy_j = s sum_i G_ij x_i
    grad_s = (G * C).sum()  # scalar: dL/ds = sum_ij G_ij c_ij
print("G", tuple(G.shape), "| dL/dx", tuple(grad_x.shape), "| dL/dy", tuple(grad_y.shape), f"| dL/ds {grad_s.item():.6f}")

# %% [markdown]
# **Check 2**: the hand-made gradients equal autograd's, through our loss and through
# `coca_min.model.losses.contrastive_loss`, to 1e-10 (float64).
#
# **Check 3**: `torch.autograd.gradcheck` (finite differences against autograd, float64, its
# default atol 1e-5, rtol 1e-3) passes on coca_min's `contrastive_loss` in all three inputs.

# %%
by_hand = (grad_x, grad_y, grad_s)
ours = torch.autograd.grad(contrastive_by_hand(x64, y64, s64)[0], (x64, y64, s64))
library = torch.autograd.grad(contrastive_loss(x64, y64, s64), (x64, y64, s64))
assert all(torch.allclose(h, a, atol=1e-10, rtol=0) for h, a in zip(by_hand * 2, ours + library))
worst = max((h - a).abs().max().item() for h, a in zip(by_hand * 2, ours + library))
print(f"largest difference, hand vs autograd (ours and coca_min's): {worst:.1e}")
assert torch.autograd.gradcheck(contrastive_loss, (x64, y64, s64))
print("gradcheck passed on coca_min.model.losses.contrastive_loss")

# %% [markdown]
# ## 3. The learnable temperature, and its clamp
#
# coca_min keeps $s = e^{t}$ with the parameter $t$ = `log_logit_scale` (so $s > 0$), starting
# at $t = \log(1/0.07)$, $s \approx 14.3$ (`CoCa.reset_parameters`). $s$ sets how sharp
# the softmaxes are: at small $s$ every text looks alike, at large $s$ they are nearly one-hot.
#
# The formula for $\partial\mathcal{L}/\partial s$ says where training pushes it.
# $\sum_j P_{ij} c_{ij}$ is an average of row $i$'s cosines, so it is below the largest. When
# every image's own text has strictly the largest cosine in its row (and every text's own image
# in its column), each bracket is negative: $\partial\mathcal{L}/\partial s < 0$ **at every $s$**,
# and gradient descent raises $s$ without end. That is what the clamp stops.
#
# Three sets of embeddings: the 8 `val` pairs of section 1, 128 `test` pairs through the trained
# model, and the same 128 through an *untrained* one. How many are right?

# %%
test = TinyShapes("test", limit=128)
test_images, test_tokens = collate([test[i] for i in range(128)])
untrained = CoCa(PRESETS["tiny"]).eval()
with torch.no_grad():
    embeddings = {
        "trained, 8 val pairs": (x, y),
        "trained, 128 test pairs": (trained.encode_image(test_images)[0], trained.encode_text(test_tokens)[0]),
        "untrained, 128 test pairs": (untrained.encode_image(test_images)[0], untrained.encode_text(test_tokens)[0]),
    }
for name, (ex, ey) in embeddings.items():
    c, n = ex @ ey.T, torch.arange(len(ex))  # (N, N) cosines; pair i on the diagonal
    print(f"{name:26s} own text has the largest cosine for {(c.argmax(1) == n).float().mean():.1%} of images, "
          f"own image for {(c.argmax(0) == n).float().mean():.1%} of texts")  # fmt: skip

# %% [markdown]
# `sweep` computes $\mathcal{L}_\text{Con}$ and $\partial\mathcal{L}/\partial s$ at 49 values of
# $s$ from 1 to 1000, in float64. Where every pair is right, "logsumexp minus $z_{ii}$" rounds
# the loss to 0 at large $s$, so it uses forms that do not cancel: each term of eq. 1 as
# $\log\big(1 + \sum_{j \ne i} e^{s(c_{ij} - c_{ii})}\big)$, each bracket of $\partial\mathcal{L}/\partial s$
# as $\sum_j P_{ij}(c_{ij} - c_{ii})$ (as $\sum_j P_{ij} = 1$). It asserts that the loss equals
# coca_min's (1e-9 relative) wherever it exceeds 1e-6.

# %%
scales = np.logspace(0, 3, 49)  # s from 1 to 1000


def sweep(ex, ey):  # -> L_con and dL/ds, one value per s
    C = ex.double() @ ey.double().T  # (N, N) cosines c_ij
    rows = C - C.diagonal()[:, None]  # (N, N): c_ij - c_ii, image i's margins (<= 0 where it is right)
    cols = C - C.diagonal()[None, :]  # (N, N): c_ij - c_jj, text j's margins
    diagonal = torch.eye(len(C), dtype=torch.bool)  # left out of the negatives
    losses, slopes = [], []
    for value in scales:
        P, Q = (value * C).softmax(dim=1), (value * C).softmax(dim=0)  # image->text rows, text->image columns
        negatives_i2t = (value * rows).masked_fill(diagonal, -math.inf).logsumexp(dim=1)  # (N,)
        negatives_t2i = (value * cols).masked_fill(diagonal, -math.inf).logsumexp(dim=0)  # (N,)
        loss = F.softplus(negatives_i2t).mean() + F.softplus(negatives_t2i).mean()  # eq. 1
        if loss > 1e-6:  # where the plain formula has digits to spare, the two agree
            assert math.isclose(loss.item(), contrastive_loss(ex.double(), ey.double(), torch.tensor(value)).item(), rel_tol=1e-9)
        losses.append(loss.item())
        slopes.append((((P * rows).sum() + (Q * cols).sum()) / len(C)).item())  # dL/ds, section 2
    return np.array(losses), np.array(slopes)


curves = {name: sweep(ex, ey) for name, (ex, ey) in embeddings.items()}
for name, (losses, slopes) in curves.items():
    print(f"{name:26s} dL/ds < 0 at {np.mean(slopes < 0):.0%} of the grid; lowest loss at s = {scales[losses.argmin()]:.0f}")

# %% [markdown]
# The curves, with the initial $s$, the trained model's learned $s$ (read from the checkpoint)
# and the region the clamp removes.

# %%
s_init, s_learned = 1 / 0.07, trained.log_logit_scale.exp().item()
print(f"initial s = {s_init:.2f} (temperature 0.07); learned s = {s_learned:.2f} (temperature {1 / s_learned:.4f}); "
      f"clamp s <= {CoCa.max_logit_scale:.0f} (temperature >= {1 / CoCa.max_logit_scale})")  # fmt: skip

fig, ax = plt.subplots(figsize=(7, 4.2))
for name, (losses, _) in curves.items():
    ax.plot(scales, losses, label=name)
ax.axvline(s_init, color="grey", linestyle=":", label=f"initial s = {s_init:.1f}")
ax.axvline(s_learned, color="black", linestyle="--", label=f"learned s = {s_learned:.1f}")
ax.axvspan(CoCa.max_logit_scale, scales[-1], color="red", alpha=0.1, label="s > 100: removed by the clamp")
ax.set(xscale="log", yscale="log", ylim=(1e-16, 1e3), xlabel="scale s = 1/temperature",
       ylabel="contrastive loss $L_{con}$ (eq. 1)", title="the contrastive loss against the scale s")  # fmt: skip
ax.grid(alpha=0.3)
ax.legend(fontsize=8)
fig.tight_layout()

# %% [markdown]
# On the 8 `val` pairs, all right, $\partial\mathcal{L}/\partial s < 0$ at every $s$ and the loss
# keeps falling (out of the frame): gradient descent would raise $s$ for ever. On 128 `test`
# pairs, a few wrong, the lowest loss on the grid is near $s = 100$, and it grows beyond: a wrong pair costs
# about $s\,(c_{ij} - c_{ii})$ at large $s$, so an unbounded $s$ makes each mistake, and its
# gradient (a factor $s$, section 2), as large as it likes. The untrained model's loss is
# lowest at $s \approx 2$. The clamp keeps $s \le 100$ (CLIP's cap, `CoCa.max_logit_scale`).
#
# It acts **on the parameter, after each optimizer step** (`coca_min/train/step.py` calls
# `model.clamp_logit_scale_()` after every `optimizer.step()`): as its docstring says,
# $\min(e^t, 100)$ in the forward pass has zero gradient once $e^t > 100$, so $t$ would stop
# being trained there: stuck above the cap, whatever the loss asked for later.
#
# **Check 4**, on the 128 trained `test` pairs: `clamp_logit_scale_` brings $s = 250$ down to
# 100 and leaves $s = 40$ alone (1e-4), and after it the gradient on $t$ is not zero (> 1e-6);
# a forward-pass clamp at $s = 250$ gives a gradient of exactly 0. The learned $s$ lies between
# its start and the cap.

# %%
test_x, test_y = embeddings["trained, 128 test pairs"]
clamped = load_model(ASSETS / "tiny_coca.pt")  # a copy to change


def gradient_on_t(clamp_in_forward):  # dL_con/dt on the 128 trained test pairs
    clamped.zero_grad(set_to_none=True)
    scale = clamped.log_logit_scale.exp()  # s = e^t, as model(...)["logit_scale"]
    if clamp_in_forward:  # the wrong place for the clamp
        scale = scale.clamp(max=CoCa.max_logit_scale)
    contrastive_loss(test_x, test_y, scale).backward()
    return clamped.log_logit_scale.grad.item()


for start in (250.0, 40.0):
    with torch.no_grad():
        clamped.log_logit_scale.fill_(math.log(start))
    forward_clamp_grad = gradient_on_t(clamp_in_forward=True)
    clamped.clamp_logit_scale_()  # what training runs after each optimizer step
    after, parameter_clamp_grad = clamped.log_logit_scale.exp().item(), gradient_on_t(clamp_in_forward=False)
    print(f"s = {start:5.1f} -> clamp_logit_scale_() -> s = {after:6.2f}, then dL/dt = {parameter_clamp_grad:+.2e}"
          f" | a forward clamp at s = {start:.0f} gives dL/dt = {forward_clamp_grad:+.2e}")  # fmt: skip
    assert abs(after - min(start, 100.0)) < 1e-4 and abs(parameter_clamp_grad) > 1e-6
    assert start < 100 or forward_clamp_grad == 0.0
assert s_init < s_learned <= CoCa.max_logit_scale

# %% [markdown]
# ## 4. The captioning loss
#
# The captioner is trained as a language model conditioned on the image (paper eq. 2):
#
# $$\mathcal{L}_\text{Cap} = -\sum_{t=1}^{T} \log P_\theta(y_t \mid y_{<t}, x).$$
#
# With **teacher forcing** the decoder reads the true caption, not its own guesses: one
# forward pass reads `tokens[:, :-1]`, and position $t$ predicts `tokens[:, t + 1]`. [PAD]
# targets (id 0) carry no word and are left out. The paper sums over a caption's tokens;
# coca_min averages over the batch's real target tokens (its docstring says so).
#
# The alignment for `val` caption 1, one of the batch's two shortest (10 tokens):

# %%
names = {0: "[PAD]", 1: "[BOS]", 2: "[EOS]"}
word = lambda i: names.get(i) or repr(tokenizer.decode([i]))  # one token as text
inputs, targets = tokens[:, :-1], tokens[:, 1:]  # (B, T - 1) each: position t reads inputs[t], predicts targets[t]
logits = outputs["logits"]  # (B, T - 1, V)
print("inputs", tuple(inputs.shape), "| targets", tuple(targets.shape), "| logits", tuple(logits.shape))
for t in range(12):
    print(f"position {t:2d}: reads {word(inputs[1, t].item()):10s} -> must predict {word(targets[1, t].item())}")

# %% [markdown]
# The loss from scratch: each target's log-probability under its position's log-softmax, the
# [PAD] targets masked out, the mean over the real ones.
#
# **Check 5**: it equals `coca_min.model.losses.caption_loss` on the trained model's logits (1e-6).

# %%
def caption_by_hand(logits, targets, pad_id):
    log_p = logits.log_softmax(dim=-1)  # (B, T - 1, V)
    target_log_p = log_p.gather(-1, targets[..., None])[..., 0]  # (B, T - 1): log P(y_t | y_<t, x), eq. 2
    real = targets != pad_id  # (B, T - 1): [PAD] targets are not words
    return -(target_log_p * real).sum() / real.sum()  # mean over the batch's real target tokens


l_cap = caption_by_hand(logits, targets, PAD)
assert torch.allclose(l_cap, caption_loss(logits, targets, PAD), atol=1e-6)
print(f"L_cap {l_cap.item():.6f} over {int((targets != PAD).sum())} real targets of {targets.numel()} positions; "
      "equal to coca_min.model.losses.caption_loss")  # fmt: skip

# %% [markdown]
# **Check 6** (padding is ignored): padding the batch further, to the context length of 32,
# and running the model again changes none of coca_min's $\mathcal{L}_\text{Cap}$,
# $\mathcal{L}_\text{Con}$ and total, nor our $\mathcal{L}_\text{Cap}$ (1e-6). A loss that also
# scores the [PAD] targets does change: we print it for contrast.

# %%
longer = F.pad(tokens, (0, 32 - tokens.shape[1]), value=PAD)  # (B, 32): more [PAD] on the right
with torch.no_grad():
    outputs_longer = trained(images, longer)
short_all, long_all = coca_loss(outputs, tokens, PAD), coca_loss(outputs_longer, longer, PAD)
ours_long = caption_by_hand(outputs_longer["logits"], longer[:, 1:], PAD)
assert all(torch.allclose(short_all[key], long_all[key], atol=1e-6) for key in ("caption", "contrastive", "loss"))
assert torch.allclose(ours_long, l_cap, atol=1e-6)
scores_padding = lambda out, toks: F.cross_entropy(out["logits"].flatten(0, 1), toks[:, 1:].flatten())  # no ignore_index
print(f"tokens {tuple(tokens.shape)} -> {tuple(longer.shape)}: L_cap {l_cap.item():.6f} -> {ours_long.item():.6f}")
print(f"with [PAD] targets scored: {scores_padding(outputs, tokens).item():.6f} -> {scores_padding(outputs_longer, longer).item():.6f}")

# %% [markdown]
# Ignoring [PAD] targets is only safe if id 0 is never a real token. open_clip uses id 0 for
# both its padding and "!", so its loss drops every real "!". coca_min's bytes start
# at id 3 (`BYTE_OFFSET`, lesson 01).
#
# **Check 7**: no `val` caption, and no text with punctuation, digits or emoji, encodes to a 0.

# %%
texts = [c for captions in TinyShapes("val").captions for c in captions] + ["wow! a red cross!!", "0 1 2 :) 🙂"]
assert all(PAD not in tokenizer.encode(text) for text in texts)
print(f"{len(texts)} texts, no id 0 among their tokens; bytes start at id {BYTE_OFFSET}; '!' is", tokenizer.encode("!")[1:-1])

# %% [markdown]
# ## 5. The weights, and sum against mean
#
# The two losses are added with weights (paper eq. 3, weights from §4.1):
#
# $$\mathcal{L}_\text{CoCa} = \lambda_\text{Con}\,\mathcal{L}_\text{Con} + \lambda_\text{Cap}\,\mathcal{L}_\text{Cap},
# \qquad \lambda_\text{Con} = 1,\ \lambda_\text{Cap} = 2.$$
#
# CLIP's pseudo-code and open_clip take the **mean** of the two directions,
# $\tfrac12(\text{image→text} + \text{text→image})$, where eq. 1 (and coca_min) takes their
# **sum**: exactly half. So open_clip's "$\lambda_\text{Con} = 1$" is the paper's
# $\lambda_\text{Con} = 0.5$: the contrastive term, and every gradient it sends into the shared
# image encoder and unimodal decoder, weighs half as much against $\lambda_\text{Cap} = 2$. To get
# the paper's balance with the mean, its contrastive weight must be 2.
#
# **Check 8**: our $\mathcal{L}_\text{CoCa} = 1\cdot\mathcal{L}_\text{Con} + 2\cdot\mathcal{L}_\text{Cap}$
# and its two terms equal `coca_min.model.losses.coca_loss`'s (1e-6); and CLIP's mean is half of
# coca_min's eq. 1 on the same logits (1e-7 relative), on the trained batch and on random pairs.

# %%
lam_con, lam_cap = 1.0, 2.0
total = lam_con * l_con + lam_cap * l_cap  # eq. 3
library_losses = coca_loss(outputs, tokens, PAD)  # its default weights: 1 and 2
for ours_value, key in [(total, "loss"), (l_con, "contrastive"), (l_cap, "caption")]:
    assert torch.allclose(ours_value, library_losses[key], atol=1e-6)
labels = torch.arange(8)  # pair i on the diagonal
clip_mean = lambda z: (F.cross_entropy(z, labels) + F.cross_entropy(z.T, labels)) / 2  # CLIP, open_clip
for ex, ey, sv in [(x, y, s), (rx, ry, scale)]:
    assert torch.allclose(clip_mean(sv * ex @ ey.T), contrastive_loss(ex, ey, sv) / 2, rtol=1e-7, atol=0)
print("coca_loss:", {k: round(v.item(), 6) for k, v in library_losses.items()})
print(f"random pairs: eq. 1 {contrastive_loss(rx, ry, scale).item():.6f}, CLIP's mean {clip_mean(scale * rx @ ry.T).item():.6f}")

# %% [markdown]
# The halving shows best at the start of training, when both losses are large: the contrastive
# term's share of the total under each convention, for the untrained model on the same batch.

# %%
with torch.no_grad():
    start = coca_loss(untrained(images, tokens), tokens, PAD)  # L_con by eq. 1, and L_cap
for convention, con in [("paper eq. 1 (sum)", start["contrastive"]), ("CLIP / open_clip (mean)", start["contrastive"] / 2)]:
    loss = 1.0 * con + 2.0 * start["caption"]
    print(f"{convention:24s} L = 1 * {con.item():.4f} + 2 * {start['caption'].item():.4f} = {loss.item():.4f}; "
          f"contrastive share {(con / loss).item():.1%}")

# %% [markdown]
# ## 6. Everything against coca_min
#
# **Check 9**: the untrained model on 4 `test` pairs padded to 32 tokens, with weights
# $\lambda_\text{Con} = 3$, $\lambda_\text{Cap} = 0.5$: our two losses and their weighted sum equal
# the three outputs of `coca_loss` (which calls `contrastive_loss` and `caption_loss`) to
# 1e-6, and the total's gradients on every parameter of the model agree (1e-5).

# %%
fresh_tokens = F.pad(test_tokens[:4], (0, 32 - test_tokens.shape[1]), value=PAD)  # (4, 32)
fresh = untrained(test_images[:4], fresh_tokens)  # with gradients this time
ours_con = contrastive_by_hand(fresh["image_embedding"], fresh["text_embedding"], fresh["logit_scale"])[0]
ours_cap = caption_by_hand(fresh["logits"], fresh_tokens[:, 1:], PAD)
ours_total = 3.0 * ours_con + 0.5 * ours_cap
theirs = coca_loss(fresh, fresh_tokens, PAD, caption_weight=0.5, contrastive_weight=3.0)
for key, value in [("contrastive", ours_con), ("caption", ours_cap), ("loss", ours_total)]:
    assert torch.allclose(value, theirs[key], atol=1e-6)
params = list(untrained.parameters())  # every tensor: [CLS], both poolers and the scale t among them
ours_grads = torch.autograd.grad(ours_total, params, retain_graph=True)
their_grads = torch.autograd.grad(theirs["loss"], params)
assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(ours_grads, their_grads))
print(f"tokens {tuple(fresh_tokens.shape)}: losses equal; gradients equal on all {len(params)} parameter tensors:",
      {k: round(v.item(), 4) for k, v in theirs.items()})  # fmt: skip

# %% [markdown]
# ## Summary
# - Eq. 1 is a cross-entropy along each row (image→text) and each column (text→image) of
#   $Z = s\,XY^\top$, the right pairs on the diagonal; coca_min *sums* the two, as the paper does.
# - Its gradient is "softmax minus one-hot": $G = \frac1N[(P - I) + (Q - I)]$, then
#   $\partial\mathcal{L}/\partial X = s\,GY$, $\partial\mathcal{L}/\partial Y = s\,G^\top X$,
#   $\partial\mathcal{L}/\partial s = \sum G \odot C$.
# - $s = e^t$ starts at $1/0.07$; where the model is right, $\partial\mathcal{L}/\partial s < 0$ at
#   every $s$, so $s$ is clamped at 100, on the parameter after each step (a clamp in the
#   forward pass would leave it no gradient).
# - The captioning loss is the next-token cross-entropy under teacher forcing, [PAD] targets
#   ignored. $\mathcal{L} = 1\cdot\mathcal{L}_\text{Con} + 2\cdot\mathcal{L}_\text{Cap}$; CLIP's and
#   open_clip's mean of the two directions halves the contrastive weight.
#
# ## Exercises
# 1. The embeddings are $x = u/\lVert u\rVert$ of the projection's output $u$. Show that
#    $\partial\mathcal{L}/\partial u = \frac{1}{\lVert u\rVert}(I - x x^\top)\,\partial\mathcal{L}/\partial x$
#    (only the part tangent to the sphere survives), and check it against autograd in float64.
# 2. With `sweep`, find the $s$ of the lowest loss on 256 trained `test` pairs instead of 128:
#    does it move up or down, and why would more negatives per row do that?
# 3. Write eq. 2 literally (sum over each caption's real tokens, mean over the batch) and find
#    the $\lambda_\text{Cap}$ that gives, on the section 1 batch, the balance of coca_min's
#    per-token mean with $\lambda_\text{Cap} = 2$.
#
# **Coursework.** This lesson teaches the graded exercises `contrastive_loss`
# (`contrastive_loss` in `coca_min/model/losses.py`, 10 points, about 20 min) and `caption_loss`
# (`caption_loss` in `coca_min/model/losses.py`, 5 points, about 15 min). In the student version
# (`python -m coca_min.coursework make-student`, see `coca_min/coursework/README.md`) their
# code is blanked; write it between the `# BEGIN EXERCISE` and `# END EXERCISE` markers, and
# run the tests named in `coca_min/coursework/exercises.py`.
