# %% [markdown]
# # Lesson 07 — The whole model and training
#
# **What you will learn**
# - that one forward pass of CoCa gives everything both losses need, and what that saves,
#   counted in multiply-adds of the text decoder;
# - a training step written from scratch: the loss, the backward pass, gradient clipping,
#   AdamW with weight decay on matrices only, warm-up and cosine decay;
# - a short training run inside this notebook, with both losses falling;
# - what the full tiny run learns and when, read from its own metrics log: colour before
#   shape, captions of seen colour–shape pairs before held-out ones;
# - what the paper's training does at scale, and what the tiny run changes.
#
# **Paper**: §3.2 (one forward pass for both losses, the efficiency argument), eq. 3 (the
# weighted sum of the two losses) and §4.1 (the training set-up).
#
# **Assumes**: lessons 03–05 (the image encoder, the poolers, the decoupled decoder) and
# lesson 06 (the two losses).

# %% [markdown]
# ## Set-up
# Imports, a fixed seed and thread count (the same numbers on every run), the version; the
# trained tiny model and its training log, both shipped in `lessons/assets/` (see
# `lessons/README.md` for how they were made); and one batch of 8 `val` pairs, padded by
# coca_min's `collate` as the training loop pads them.

# %%
import copy
import json
import math
import types
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

import coca_min
from coca_min import PRESETS, CoCa, count_parameters
from coca_min.data import TinyShapes, collate
from coca_min.distributed import forward_backward
from coca_min.losses import coca_loss
from coca_min.schedule import Schedule
from coca_min.trainer import make_optimizer

torch.manual_seed(0)
torch.set_num_threads(2)
print("torch", torch.__version__)
ASSETS = Path(coca_min.__file__).resolve().parents[1] / "lessons" / "assets"  # from any working directory

config = PRESETS["tiny"]
trained = CoCa.from_checkpoint(ASSETS / "tiny_coca.pt").eval()
val = TinyShapes("val", limit=8)
images, tokens = collate([val[i] for i in range(8)])  # (8, 3, 48, 48), (8, T) right-padded with [PAD] = 0
print("images", tuple(images.shape), "| tokens", tuple(tokens.shape))

# %% [markdown]
# ## 1. One forward pass, both losses
#
# CoCa's objective is a weighted sum of two losses (paper eq. 3, with $\lambda_\text{Con} = 1$,
# $\lambda_\text{Cap} = 2$):
#
# $$\mathcal{L}_\text{CoCa} = \lambda_\text{Con}\,\mathcal{L}_\text{Con}(x, y) + \lambda_\text{Cap}\,\mathcal{L}_\text{Cap}(\text{logits}, \text{next tokens}).$$
#
# The contrastive loss needs the image embedding $x$ and the text embedding $y$; the
# captioning loss needs the next-token logits. One call `model(images, tokens)` computes all
# three: the image goes through the ViT and the two poolers once, the text through the
# unimodal layers once (their [CLS] output is $y$), and the multimodal layers continue from the
# same unimodal token features (lesson 05). The losses then read the outputs.

# %%
with torch.no_grad():
    outputs = trained(images, tokens)  # the one forward pass
    losses = coca_loss(outputs, tokens, pad_id=config.pad_id)  # eq. 3: 1 * L_con + 2 * L_cap
for name, value in outputs.items():
    print(f"{name:16s} {tuple(value.shape)}")
print({name: round(value.item(), 4) for name, value in losses.items()})

# %% [markdown]
# **Check 1**: the embeddings of the one pass are those of the separate encoders,
# `encode_image` and `encode_text` (1e-6), and the loss is exactly
# $1 \cdot \mathcal{L}_\text{Con} + 2 \cdot \mathcal{L}_\text{Cap}$ of those outputs (1e-6).

# %%
with torch.no_grad():
    image_embedding, _ = trained.encode_image(images)  # (8, 128)
    text_embedding, _ = trained.encode_text(tokens)  # (8, 128)
assert torch.allclose(outputs["image_embedding"], image_embedding, atol=1e-6)
assert torch.allclose(outputs["text_embedding"], text_embedding, atol=1e-6)
assert torch.allclose(losses["loss"], 1.0 * losses["contrastive"] + 2.0 * losses["caption"], atol=1e-6)
print("one pass: the encoders' embeddings, and the loss 1 * contrastive + 2 * caption")

# %% [markdown]
# ## 2. What one pass saves: the decoder's multiply-adds
#
# Without the decoupled decoder, contrastive and captioning training would need two text
# networks: a text encoder (as in CLIP) for the embedding $y$, and a captioning decoder that
# reads the image. CoCa runs its unimodal layers once and lets both losses use them. How much
# does that save? We count the multiply-adds (MACs) of the matrix products for one caption of
# $T$ tokens, from the config: width $D$, MLP width $D_\text{mlp}$, $N$ caption tokens from the
# pooler, vocabulary $V$, embedding size $E$.
#
# - a **unimodal layer** on $t$ tokens: the Q, K, V and output projections $4tD^2$, the scores
#   $QK^\top$ and the weighted sum of $V$ $2t^2D$, the MLP $2tDD_\text{mlp}$:
#   $U(t) = 4tD^2 + 2t^2D + 2tDD_\text{mlp}$;
# - a **multimodal layer** adds cross-attention to the $N$ caption tokens: Q and output
#   projections $2tD^2$, K and V of the image $2ND^2$, scores and sum $2tND$:
#   $M(t) = U(t) + 2tD^2 + 2ND^2 + 2tND$;
# - the text projection of [CLS] $DE$, and the LM head $tDV$.
#
# The unimodal half reads $T + 1$ positions (the caption and [CLS]); with teacher forcing the
# multimodal half reads $T - 1$ (`tokens[:, :-1]`). So
#
# $$\text{CoCa} = n_\text{uni}\,U(T{+}1) + DE + n_\text{multi}\,M(T{-}1) + (T{-}1)DV,$$
# $$\text{CLIP + captioner} = \underbrace{n_\text{uni}\,U(T{+}1) + DE}_\text{text encoder}
# + \underbrace{n_\text{uni}\,U(T{-}1) + n_\text{multi}\,M(T{-}1) + (T{-}1)DV}_\text{captioner: the same decoder, run on its own}.$$
#
# The comparison keeps everything else equal: the captioner is CoCa's own decoder, and the
# image side (ViT and poolers) runs once in both designs. A FLOP is two operations per MAC.

# %%
def decoder_macs(c, T):
    """Multiply-adds of the matrix products of CoCa's text decoder for one caption of T tokens."""
    D, Dm, N, V, E = c.text_width, c.text_mlp, c.n_caption_queries, c.vocab_size, c.embed_dim
    U = lambda t: 4 * t * D * D + 2 * t * t * D + 2 * t * D * Dm  # unimodal layer: projections, attention, MLP
    M = lambda t: U(t) + 2 * t * D * D + 2 * N * D * D + 2 * t * N * D  # + cross-attention to N tokens
    unimodal = c.n_uni * U(T + 1) + D * E  # caption + [CLS]; the projection of [CLS] to the embedding
    multimodal = c.n_multi * M(T - 1) + (T - 1) * D * V  # teacher forcing: T - 1 inputs; the LM head
    return {"unimodal": unimodal, "multimodal": multimodal, "coca": unimodal + multimodal,
            "clip_plus_captioner": unimodal + c.n_uni * U(T - 1) + multimodal}  # fmt: skip


T = config.context_length  # a caption padded to the full context, 32 tokens
macs = decoder_macs(config, T)
print(f"tiny decoder, one caption of {T} tokens (MACs):")
print(f"  unimodal half  {macs['unimodal']:>12,}\n  multimodal half{macs['multimodal']:>12,}")
print(f"  CoCa, one pass {macs['coca']:>12,}\n  CLIP + captioner{macs['clip_plus_captioner']:>11,}")
print(f"  CoCa does {macs['coca'] / macs['clip_plus_captioner']:.1%} of the work")

# %% [markdown]
# The same formula on the paper's sizes (Table 1's configs, captions of their 64-token
# context). What sharing saves is the second run of the unimodal half, so the last column
# gives that half's share of CoCa's pass.

# %%
print(f"{'preset':8s}{'T':>4s}{'CoCa (GMAC)':>13s}{'CLIP + captioner':>18s}{'CoCa / other':>14s}{'unimodal':>10s}")
for name in ["tiny", "base", "large", "coca"]:
    c = PRESETS[name]
    m = decoder_macs(c, c.context_length)
    print(f"{name:8s}{c.context_length:>4d}{m['coca'] / 1e9:>13.3f}{m['clip_plus_captioner'] / 1e9:>18.3f}"
          f"{m['coca'] / m['clip_plus_captioner']:>14.1%}{m['unimodal'] / m['coca']:>10.1%}")  # fmt: skip

# %% [markdown]
# At every size CoCa's one pass does about three quarters of the work of two text networks. The
# saving is a little smaller at the paper's sizes, where the multimodal half weighs more: its
# cross-attention reads 256 caption tokens instead of 64, and its LM head covers a vocabulary
# of 64,000 instead of 366.

# %% [markdown]
# **Check 2**: the formula equals what `torch.utils.flop_counter.FlopCounterMode` counts on the
# tiny model's text decoder for one batch: $2 \times B \times$ MACs, exactly (both are integer
# counts; tolerance 0). Two details make the comparison fair:
#
# - On a CPU, `F.scaled_dot_product_attention` runs a fused kernel that `FlopCounterMode` has no
#   formula for (it would count the projections and miss $QK^\top$ and the weighted sum), so we
#   select PyTorch's plain "math" attention, which is made of counted matrix products.
# - Both counts leave out the operations that are not matrix products: LayerNorm, softmax,
#   GELU, the residual additions, the masks and the embedding lookups. Each touches every
#   element of its tensor a few times; we count the elements and, allowing 10 operations per
#   element, bound their share below.

# %%
with torch.no_grad():
    _, caption_tokens = trained.encode_image(images)  # (8, 64, 128): what the multimodal layers read
    decoder = trained.text_decoder
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        text_emb, features = decoder.unimodal(tokens)  # (B, E), (B, T, D)
        logits = decoder.multimodal(features[:, :-1], tokens[:, :-1], caption_tokens)  # (B, T - 1, V)
B, T_batch = tokens.shape
counted = counter.get_total_flops()
formula = 2 * B * decoder_macs(config, T_batch)["coca"]  # FLOPs = 2 * MACs, per caption times B
print({str(op): n for op, n in counter.get_flop_counts()["Global"].items()})
print(f"FlopCounterMode {counted:,} FLOPs | formula 2 * {B} * MACs(T = {T_batch}) = {formula:,}")
assert counted == formula

D, N, heads = config.text_width, config.n_caption_queries, config.text_heads
Tu, Tm = T_batch + 1, T_batch - 1
elements = (config.n_uni * (2 * Tu * D + heads * Tu * Tu + Tu * config.text_mlp + 2 * Tu * D)  # 2 LN, softmax, GELU, 2 +
            + config.n_multi * (3 * Tm * D + heads * Tm * (Tm + N) + Tm * config.text_mlp + 3 * Tm * D)  # 3 of each
            + D + Tm * D)  # ln_cls, ln_final; fmt: skip
print(f"left out: {elements:,} elements per caption; at 10 operations each, "
      f"{10 * elements / (2 * decoder_macs(config, T_batch)['coca']):.1%} of the matrix products' FLOPs")

# %% [markdown]
# The saving carries over to training: a backward pass costs about twice a forward pass, so a
# training step costs about three forward passes, and the unimodal half that is not run twice
# forward is not run twice backward either.
#
# ## 3. A training step, from scratch
#
# One optimizer step of coca_min's trainer (`coca_min/trainer.py`) is: forward, the CoCa loss,
# backward, clip the gradient norm, set the learning rate of the step, an AdamW step, and keep
# the temperature's scale $s \le 100$ (lesson 06). We write each piece and check it against the
# project's own: `make_optimizer`, `Schedule`, `forward_backward`.
#
# ### 3.1 AdamW, with weight decay on matrices only
#
# AdamW (Loshchilov and Hutter) decays the weights apart from the gradient step:
# $\theta \leftarrow \theta - \eta\,(\hat m / (\sqrt{\hat v} + \epsilon) + \lambda\,\theta)$.
# Decay pulls matrices (linear layers, embeddings, the poolers' queries) towards zero; on
# biases, LayerNorm gains and the temperature it would only push them away from the values
# they need, so parameters with fewer than two dimensions get none. `make_optimizer` also puts
# the image encoder into groups of its own, to give it its own learning-rate scale
# (`--image-lr-scale`, 1 by default). It takes the parsed arguments of `train.py`; a
# `SimpleNamespace` with the three fields it reads stands in for them.

# %%
model = CoCa(config)  # a fresh, untrained tiny model: the one section 4 trains
args = types.SimpleNamespace(lr=2e-3, weight_decay=0.05, image_lr_scale=1.0)  # train.py's defaults
groups = []
for in_image_encoder in (True, False):
    params = [p for n, p in model.named_parameters() if n.startswith("image_encoder.") == in_image_encoder]
    groups.append({"params": [p for p in params if p.dim() >= 2], "weight_decay": args.weight_decay})  # matrices
    groups.append({"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0})  # biases, norms, scale
mine = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.98))
names = ["image encoder, matrices", "image encoder, others", "the rest, matrices", "the rest, others"]
for group, what in zip(mine.param_groups, names):
    print(f"{what:24s} {len(group['params']):3d} tensors {sum(p.numel() for p in group['params']):>9,} parameters, "
          f"weight decay {group['weight_decay']}")  # fmt: skip
print("parameters in all:", f"{count_parameters(model)['total']:,}")

# %% [markdown]
# **Check 3**: the from-scratch groups are `make_optimizer`'s: the same tensors in the same
# groups, the same weight decay, learning rate and betas (exact).

# %%
optimizer = make_optimizer(model, args)
assert len(optimizer.param_groups) == len(mine.param_groups)
for theirs, ours in zip(optimizer.param_groups, mine.param_groups):
    assert [id(p) for p in theirs["params"]] == [id(p) for p in ours["params"]]
    assert (theirs["weight_decay"], theirs["lr"], theirs["betas"]) == (ours["weight_decay"], ours["lr"], ours["betas"])
print(f"make_optimizer: {type(optimizer).__name__}, betas {optimizer.defaults['betas']}, the same four groups")

# %% [markdown]
# ### 3.2 Warm-up, then cosine decay
#
# In the first steps Adam's moment estimates rest on a few gradients only, so the learning
# rate rises linearly over $w$ (`warmup`) steps; then it follows half a cosine from the peak
# $\eta$ down to $m\eta$ ($m$ = `min_ratio`, 0.05) at the last of $T$ steps:
#
# $$\eta_t = \eta\,\frac{t+1}{w} \ (t < w), \qquad
# \eta_t = \eta\left(m + (1-m)\,\tfrac12\big(1 + \cos(\pi\,\tfrac{t - w}{T - w})\big)\right) \ (t \ge w).$$
#
# `Schedule` keeps the decay's progress as a state (so that a run with a time budget can
# re-plan $T$); with $T$ fixed, it must give this closed form.
#
# **Check 4**: the closed form equals `Schedule.lr`, advanced after each step as the trainer
# does, at every step of a 100-step plan (relative 1e-9).

# %%
def lr_at(t, peak, warmup, total, min_ratio=0.05):
    if t < warmup:
        return peak * (t + 1) / warmup  # linear warm-up
    progress = (t - warmup) / (total - warmup)  # 0 -> 1 over the decay
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))  # cosine


STEPS, WARMUP = 100, 10  # section 4's run
schedule, theirs = Schedule(args.lr, WARMUP), []
for t in range(STEPS):
    theirs.append(schedule.lr(t))
    schedule.advance(t + 1, STEPS)  # after step t: t + 1 steps done, STEPS planned
ours = [lr_at(t, args.lr, WARMUP, STEPS) for t in range(STEPS)]
assert np.allclose(ours, theirs, rtol=1e-9, atol=0)
print(f"lr: step 0 {ours[0]:.1e}, peak {max(ours):.1e} at step {int(np.argmax(ours))}, last {ours[-1]:.1e} "
      f"(= {ours[-1] / args.lr:.3f} of the peak)")  # fmt: skip

# %% [markdown]
# ### 3.3 Gradient clipping
#
# A rare batch with a huge gradient could undo many steps. Clipping rescales the whole
# gradient, all parameters together, when its norm exceeds $c$ (`--grad-clip`, 1.0):
#
# $$g \leftarrow g \cdot \min\Big(1, \frac{c}{\lVert g \rVert_2 + 10^{-6}}\Big), \qquad \lVert g\rVert_2 = \sqrt{\textstyle\sum_p \lVert g_p \rVert_2^2}.$$
#
# **Check 5**: the from-scratch clipping equals `torch.nn.utils.clip_grad_norm_`, which the
# trainer calls, on the first batch's gradients: the same norm and the same clipped gradients
# (relative 1e-6, absolute 1e-12).

# %%
def clip_by_hand(grads, max_norm):
    norm = torch.sqrt(sum((g**2).sum() for g in grads))  # one norm over every parameter
    scale = torch.clamp(max_norm / (norm + 1e-6), max=1.0)  # shrink only, never stretch
    return norm, [g * scale for g in grads]


probe = copy.deepcopy(model)  # a copy, so that the model section 4 trains stays untouched
coca_loss(probe(images, tokens), tokens, config.pad_id)["loss"].backward()
norm, clipped = clip_by_hand([p.grad for p in probe.parameters()], 1.0)
torch_norm = torch.nn.utils.clip_grad_norm_(probe.parameters(), 1.0)
assert torch.allclose(norm, torch_norm, rtol=1e-6)
assert all(torch.allclose(g, p.grad, rtol=1e-6, atol=1e-12) for g, p in zip(clipped, probe.parameters()))
clipped_norm = torch.sqrt(sum((g**2).sum() for g in clipped)).item()
print(f"gradient norm at the start: {norm.item():.2f} -> clipped to {clipped_norm:.2f}")

# %% [markdown]
# ### 3.4 The step
#
# The whole step, as `coca_min/trainer.py` runs it on one process. Its forward and backward
# pass is `coca_min.distributed.forward_backward`, which also handles several processes and
# gradient accumulation; on one process with one micro-batch it must compute the same loss
# and gradients as our two lines.
#
# **Check 6**: our forward + `coca_loss` + backward gives the same losses and gradients as
# `forward_backward` (relative 1e-5, absolute 1e-7), on the same model and batch.

# %%
def train_step(model, optimizer, schedule, images, tokens, step, total_steps, grad_clip=1.0):
    losses = coca_loss(model(images, tokens), tokens, config.pad_id)  # one pass, eq. 3
    losses["loss"].backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)  # as clip_by_hand
    lr = schedule.lr(step)
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"]  # make_optimizer's per-group scale (1 here)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    model.clamp_logit_scale_()  # s = exp(t) <= 100 (lesson 06)
    schedule.advance(step + 1, total_steps)
    return {"lr": lr, **{k: v.item() for k, v in losses.items()}}


probe.zero_grad()
ours = coca_loss(probe(images, tokens), tokens, config.pad_id)
ours["loss"].backward()
our_grads = [p.grad.clone() for p in probe.parameters()]
probe.zero_grad()
logged = forward_backward(probe, [(images, tokens)], config.pad_id)  # coca_min's, one micro-batch
for key in ("loss", "contrastive", "caption"):
    assert math.isclose(ours[key].item(), logged[key].item(), rel_tol=1e-5)
assert all(torch.allclose(g, p.grad, rtol=1e-5, atol=1e-7) for g, p in zip(our_grads, probe.parameters()))
print("the same losses and gradients as coca_min.distributed.forward_backward:",
      {k: round(v.item(), 4) for k, v in logged.items()})  # fmt: skip

# %% [markdown]
# ## 4. A short training run
#
# Now the fresh tiny model trains for 100 steps of 32 pairs, inside this notebook: 3,200
# `train` images (one pass over them), each with one of its captions drawn as the trainer draws
# them, shuffled by a seeded DataLoader and padded by `collate`; the optimizer is
# `make_optimizer`'s and the learning rate `Schedule`'s, warming up over 10 steps. The full run
# of section 5 uses 64 pairs a step; 32 keeps this one within about 15 s on a 2-core CPU.
# Everything is seeded, so the run, and every number below, is the same each time.

# %%
torch.manual_seed(0)
train_set = TinyShapes("train", train=True, seed=0, limit=32 * STEPS)
loader = DataLoader(train_set, batch_size=32, shuffle=True, collate_fn=collate, drop_last=True,
                    generator=torch.Generator().manual_seed(0))  # fmt: skip
schedule = Schedule(args.lr, WARMUP)
short_run = []
model.train()
for step, (batch_images, batch_tokens) in enumerate(loader):  # 100 batches of (32, 3, 48, 48), (32, T)
    short_run.append(train_step(model, optimizer, schedule, batch_images, batch_tokens, step, STEPS))
print(f"{len(short_run)} steps of {loader.batch_size} pairs")

# %% [markdown]
# The losses every 20 steps. Two reference levels tell what the numbers mean: a model that
# cannot tell the pairs apart scores $2 \ln B$ on the contrastive loss (a uniform softmax over
# the $B$ texts, in each of the two directions), and one that knows nothing of the words scores
# $\ln V$ on the captioning loss (a uniform guess over the vocabulary).

# %%
for row in short_run[::20] + short_run[-1:]:
    i = short_run.index(row)
    print(f"step {i + 1:3d}  lr {row['lr']:.1e}  loss {row['loss']:6.3f}  contrastive {row['contrastive']:6.3f}  "
          f"caption {row['caption']:6.3f}")  # fmt: skip
print(f"uniform guesses: contrastive 2 ln 32 = {2 * math.log(32):.3f}, "
      f"caption ln {config.vocab_size} = {math.log(config.vocab_size):.3f}")

# %% [markdown]
# **Check 7** (a stated property of this seeded run): both losses fell: the mean of the last 10
# steps is below half the mean of the first 10, for the contrastive and for the captioning loss.

# %%
first_ten = {k: np.mean([r[k] for r in short_run[:10]]) for k in ("contrastive", "caption")}
last_ten = {k: np.mean([r[k] for r in short_run[-10:]]) for k in ("contrastive", "caption")}
for k in first_ten:
    ratio = last_ten[k] / first_ten[k]
    print(f"{k:12s} first 10 steps {first_ten[k]:.3f} -> last 10 {last_ten[k]:.3f} (x {ratio:.2f})")
    assert last_ten[k] < 0.5 * first_ten[k]

steps = np.arange(1, len(short_run) + 1)
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
for ax, key, level, label in [(axes[0], "contrastive", 2 * math.log(32), "2 ln B: pairs not told apart"),
                              (axes[1], "caption", math.log(config.vocab_size), "ln V: a uniform guess")]:  # fmt: skip
    ax.plot(steps, [r[key] for r in short_run], label=f"{key} loss")
    ax.axhline(level, color="grey", linestyle="--", label=label)
    ax.set(xlabel="optimizer step (batch of 32 pairs)", ylabel="loss (nats)", ylim=(0, None))
    ax.grid(alpha=0.3)
    ax.legend()
axes[0].set_title("contrastive loss $\\mathcal{L}_{Con}$ (eq. 1)")
axes[1].set_title("captioning loss $\\mathcal{L}_{Cap}$ (eq. 2)")
fig.suptitle("this notebook's 100-step run of the tiny model")
fig.tight_layout()

# %% [markdown]
# The captioning loss falls fastest: much of a caption can be predicted without looking
# at the image (its grammar: "a", "and", "at the top"). The contrastive loss
# starts a little above $2\ln B$ (the initial scale $s = 1/0.07$ sharpens the softmax over
# random similarities), stays near it while the learning rate warms up, and falls only once the
# image and text embeddings start to tell the scenes apart.
#
# ## 5. What the full tiny run learns, and when
#
# The model of `assets/tiny_coca.pt` was trained by
# `python train.py --size tiny --steps 1123 --eval-every 40 --out out/lesson_run`: the same
# step as above, with train.py's defaults (64 pairs a step, peak learning rate 2e-3, weight
# decay 0.05, clipping at 1.0, warm-up over 5% of the steps). Its log, shipped as
# `assets/tiny_coca_history.json`, holds the losses of every step and, every 40 steps, quick
# evaluations on small subsets (`evaluate_during_training`: 256 `val` pairs for the loss and
# retrieval, 400 `classes` images for zero-shot, 128 images for captions).

# %%
log = json.loads((ASSETS / "tiny_coca_history.json").read_text())
history, evaluations = log["history"], log["evaluations"]
print(f"{len(history)} steps logged; {len(evaluations)} evaluations, at steps {evaluations[0]['step']}, "
      f"{evaluations[1]['step']}, ..., {evaluations[-1]['step']}")  # fmt: skip
print("a step's row:", {k: v if k == "step" else float(f"{v:.4g}") for k, v in history[0].items()})
print("an evaluation:", {k: round(v, 3) for k, v in evaluations[-1].items()})
print(f"first contrastive loss {history[0]['contrastive']:.2f} vs 2 ln 64 = {2 * math.log(64):.2f}")

# %% [markdown]
# The training losses of every step (pale) and their 25-step moving average, on a log scale,
# and the total loss on the validation subset at each evaluation.

# %%
def smooth(values, width=25):
    kernel = np.ones(width) / width
    return np.convolve(np.pad(values, (width // 2, width - 1 - width // 2), mode="edge"), kernel, mode="valid")


run_steps = np.array([h["step"] for h in history])
eval_steps = np.array([e["step"] for e in evaluations])
fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
for key, colour in [("contrastive", "C0"), ("caption", "C1")]:
    values = np.array([h[key] for h in history])
    axes[0].plot(run_steps, values, color=colour, alpha=0.25)
    axes[0].plot(run_steps, smooth(values), color=colour, label=f"{key} (25-step mean)")
axes[0].set(title="full tiny run: the two training losses", xlabel="optimizer step (64 pairs)",
            ylabel="loss (nats, log scale)", yscale="log")  # fmt: skip
total = np.array([h["loss"] for h in history])
axes[1].plot(run_steps, smooth(total), color="C2", label="training: 1 * con + 2 * cap (25-step mean)")
axes[1].plot(eval_steps, [e["val_loss"] for e in evaluations], "o-", color="C3", markersize=3,
             label="validation subset (256 pairs)")  # fmt: skip
axes[1].set(title="full tiny run: total loss", xlabel="optimizer step (64 pairs)",
            ylabel="loss (nats, log scale)", yscale="log")  # fmt: skip
for ax in axes:
    ax.grid(alpha=0.3, which="both")
    ax.legend()
fig.tight_layout()

# %% [markdown]
# Now what the evaluations measured, against the step: zero-shot classification into the 40
# colour–shape classes, and how often its answer has the right colour or the right shape;
# greedy captions' object-F1 on `val` (colour–shape pairs seen in training) and on `test_comp`
# (images of the 8 held-out pairs, lesson 00); and retrieval Recall@1 both ways.

# %%
def series(key):
    return [e[key] for e in evaluations]


fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
axes[0].plot(eval_steps, series("zero_shot_shape"), color="C1", linewidth=5, alpha=0.4, label="shape right")  # under top-1
for key, label, colour in [("zero_shot_colour", "colour right", "C0"), ("zero_shot_top1", "top-1 (both right)", "C2"),
                           ("zero_shot_top1_held_out", "top-1, held-out pairs", "C3")]:  # fmt: skip
    axes[0].plot(eval_steps, series(key), marker="o", markersize=3, color=colour, label=label)
axes[0].axhline(1 / 8, color="C0", linestyle=":", label="chance: colour 1/8")
axes[0].axhline(1 / 5, color="C1", linestyle=":", label="chance: shape 1/5")
axes[0].set(title="zero-shot on `classes`: colour before shape", ylabel="accuracy")
for key, label in [("caption_object_F1", "val (seen pairs)"), ("caption_object_F1_comp", "test_comp (held-out pairs)")]:
    axes[1].plot(eval_steps, series(key), marker="o", markersize=3, label=label)
axes[1].set(title="greedy captions: object-F1", ylabel="object-F1")
for key, label in [("image_to_text_R@1", "image -> text"), ("text_to_image_R@1", "text -> image")]:
    axes[2].plot(eval_steps, series(key), marker="o", markersize=3, label=label)
axes[2].set(title="retrieval on 256 val pairs: Recall@1", ylabel="Recall@1")
for ax in axes:
    ax.set(xlabel="optimizer step", ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
fig.tight_layout()

# %% [markdown]
# The figures in numbers: for each metric, the first evaluation at which it reached 0.5 and
# 0.9 ("never" if it did not within the run), and its value at the last one.

# %%
def first_step(key, threshold):
    return next((e["step"] for e in evaluations if e[key] >= threshold), None)


METRICS = ["zero_shot_colour", "zero_shot_shape", "zero_shot_top1", "zero_shot_top1_held_out", "image_to_text_R@1",
           "text_to_image_R@1", "caption_object_F1", "caption_object_F1_comp"]  # fmt: skip
print(f"{'metric':26s}{'first >= 0.5':>14s}{'first >= 0.9':>14s}{'last':>8s}")
for key in METRICS:
    a, b = first_step(key, 0.5), first_step(key, 0.9)
    print(f"{key:26s}{a or 'never':>14}{b or 'never':>14}{evaluations[-1][key]:>8.3f}")

# %% [markdown]
# **Check 8** (stated properties of the log, which the prose below relies on): zero-shot
# colour accuracy reaches 0.9 at an earlier evaluation than shape accuracy; greedy captions
# reach object-F1 0.5 on `val` (seen pairs) at an earlier evaluation than on `test_comp`
# (held-out pairs); and image→text Recall@1 reaches 0.5 before shape accuracy does. A metric
# that never gets there counts as later (exact: steps are integers).

# %%
later = lambda step: math.inf if step is None else step
assert later(first_step("zero_shot_colour", 0.9)) < later(first_step("zero_shot_shape", 0.9))
assert later(first_step("caption_object_F1", 0.5)) < later(first_step("caption_object_F1_comp", 0.5))
assert later(first_step("image_to_text_R@1", 0.5)) < later(first_step("zero_shot_shape", 0.5))
print("colour before shape; captions of seen pairs before held-out pairs; retrieval before shape")

# %% [markdown]
# What the log shows, read from the table above:
#
# - **Colour first, shape much later.** Zero-shot colour accuracy is above 0.5 at the first
#   evaluation (step 40; chance is 1/8) and passes 0.9 at step 80. Shape accuracy passes 0.5
#   only at step 160 and 0.9 at step 800. A colour can be read off single pixels; a shape only
#   from how the pixels of an object are arranged, across patches. Once the colour is right,
#   top-1 accuracy over the 40 classes *is* shape accuracy: after the first evaluations the two
#   curves of the figure coincide.
# - **Captions before compositions.** Greedy captions of `val` images, whose colour–shape pairs
#   were all seen in training, pass object-F1 0.5 at step 320 and 0.9 at step 920. On
#   `test_comp`, whose objects are the 8 held-out pairs, they pass 0.5 only at step 680 and end
#   at 0.685, never reaching 0.9. The contrastive side does better on the same held-out pairs:
#   zero-shot top-1 on them passes 0.9 at the same evaluation as over all classes (step 800).
#   Scoring a given prompt against an image composes colour and shape; *writing* an unseen
#   combination word by word is harder for the captioner.
# - **Retrieval looks good early.** Image→text Recall@1 on 256 `val` pairs passes 0.5 at step
#   120, before shape accuracy does: among 256 captions, colour, size, position and the number
#   of objects tell most scenes apart without the shapes. Retrieval alone overstates
#   what the model understands.
#
# ## 6. The schedule of the full run, and what changes at scale
#
# The log also holds each step's learning rate. With $T = 1123$ steps, train.py's defaults give
# a warm-up of $\text{round}(0.05\,T)$ steps and a peak of 2e-3.
#
# **Check 9**: the learning rate logged at every step of the full run equals the closed form of
# section 3.2 with those settings (relative 1e-9).

# %%
logged_lr = np.array([h["lr"] for h in history])
total_steps, peak = len(history), logged_lr.max()
warmup = round(0.05 * total_steps)
formula_lr = np.array([lr_at(t, peak, warmup, total_steps) for t in range(total_steps)])
assert np.allclose(logged_lr, formula_lr, rtol=1e-9, atol=0)
print(f"T = {total_steps}, peak {peak:.1e}, warm-up {warmup} steps, last lr {logged_lr[-1]:.2e}")

fig, ax = plt.subplots(figsize=(7, 3.4))
ax.plot(run_steps, logged_lr, label="logged by train.py")
ax.plot(run_steps[::40], formula_lr[::40], "o", markersize=3, label="closed form, every 40th step")
ax.axvline(warmup, color="grey", linestyle="--", label=f"end of warm-up (step {warmup})")
ax.set(title="learning rate of the full tiny run: warm-up, then cosine", xlabel="optimizer step",
       ylabel="learning rate")  # fmt: skip
ax.grid(alpha=0.3)
ax.legend()
fig.tight_layout()

# %% [markdown]
# The paper trains the same objective at a very different scale (§4.1). What the tiny run
# keeps and what it changes:
#
# | | the paper (§4.1) | the tiny run |
# |---|---|---|
# | data | JFT-3B and ALIGN: billions of web images | `tiny_data/`: 30,000 synthetic shape scenes |
# | model | CoCa 2.1B (Base 383M, Large 787M; Table 1) | `tiny`: 1.40M parameters |
# | images | 288 × 288 px, patch 18 (256 tokens), then one epoch at 576 px | 48 × 48 px, patch 8 (36 tokens) |
# | batch | 65,536 pairs | 64 pairs |
# | steps | 500k | 1,123 |
# | optimizer | Adafactor, β₁ 0.9, β₂ 0.999, decoupled weight decay 0.01 | AdamW, β (0.9, 0.98), weight decay 0.05 on matrices only, gradient clipping at norm 1.0 |
# | schedule | warm-up over the first 2%, then linear decay | warm-up over 5% (56 steps), then cosine to 5% of the peak 2e-3 |
# | compute | 5 days on 2,048 TPUv4 | minutes on a 2-core CPU |
#
# What changes at scale, beyond the numbers: a batch of 65,536 does not fit on one chip, so
# the contrastive loss must compare every image with the texts of *all* chips (an all-gather
# whose backward returns each chip its share of the gradient, `coca_min/distributed.py`).
# For short runs, AdamW with warm-up and cosine decay is the usual choice, which is what the
# tiny run uses.

# %% [markdown]
# ## Summary
# - One forward pass gives the image embedding, the text embedding and the logits, so both
#   losses are computed from it (checked against `encode_image`, `encode_text` and
#   `coca_loss`). Against a separate text encoder plus a captioner, that saves the second run
#   of the unimodal layers: counted in multiply-adds from the config, and checked against
#   PyTorch's FLOP counter.
# - A training step is forward, `coca_loss`, backward, clipping, a scheduled AdamW step with
#   weight decay on matrices only, and the clamp of the temperature; each piece was written
#   here and checked against coca_min's.
# - 100 steps in this notebook cut both losses to well under half (Check 7); the full run's log
#   shows what comes first: colour before shape, and captions of seen colour–shape pairs
#   before captions of held-out ones, which still lag at the end of the run.
#
# ## Exercises
# 1. Run section 4 again with `batch_size=64` and 50 steps (and `limit=64 * 50`). Does the
#    first contrastive loss sit near $2 \ln 64$? Which loss is lower after the same number of
#    *pairs* seen?
# 2. With `decoder_macs`, print the share of the unimodal layers, the multimodal layers and the
#    LM head in CoCa's one pass for `tiny` and for `base`. Which term grows most from one to
#    the other, and how does that explain the two savings of section 2? Then try `base` with
#    $n_\text{uni} = 18$, $n_\text{multi} = 6$ (`dataclasses.replace`).
# 3. Build an AdamW with weight decay 0.05 on every parameter (one group, with `"lr_scale": 1.0`)
#    and use it in section 4 instead of `make_optimizer`'s, on a fresh model. What happens to
#    `model.log_logit_scale` after 100 steps, compared with the run above?
# 4. From the log: how many training pairs (steps × 64) had the model seen when `val` caption
#    object-F1 first reached 0.5, and how many passes over the 30,000 `train` images is that?
#    The same for `test_comp` at 0.5.
