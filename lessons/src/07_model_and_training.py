# %% [markdown]
# # Lesson 07 — The whole model and training
#
# **What you will learn**
# - that one forward pass of CoCa feeds both losses, and what that saves, counted in the text
#   decoder's multiply-adds;
# - a training step from scratch: loss, backward, gradient clipping, AdamW with weight decay on
#   matrices only, warm-up and cosine decay;
# - a short training run in this notebook, with both losses falling;
# - what the full tiny run learns and when, from its own metrics log;
# - how the paper's training differs at scale.
#
# **Paper**: §3.2 (one pass for both losses), eq. 3 (their weighted sum), §4.1 (training).
#
# **Assumes**: lessons 03–05 (image encoder, poolers, decoupled decoder) and 06 (the losses).

# %% [markdown]
# ## Set-up
# Imports, a fixed seed, one thread (the tiny model's matrix products are small, and on a busy
# machine a second thread mostly waits: the short run of section 4 then takes minutes, not
# seconds), the version; the trained tiny model and its
# training log, shipped in `lessons/assets/` (section 5 says how they were made), and 8 `val`
# pairs padded by `collate` as the trainer pads them.

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
from coca_min import PRESETS, CoCa, count_parameters, load_model
from coca_min.data.datasets import TinyShapes, collate
from coca_min.model.losses import coca_loss
from coca_min.schedule import Schedule
from coca_min.train.step import forward_backward, make_optimizer

torch.manual_seed(0)
torch.set_num_threads(1)
print("torch", torch.__version__)
ASSETS = Path(coca_min.__file__).resolve().parents[1] / "lessons" / "assets"  # from any working directory

config = PRESETS["tiny"]
trained = load_model(ASSETS / "tiny_coca.pt")
log = json.loads((ASSETS / "tiny_coca_history.json").read_text())  # the metrics log of its training run
history, evaluations = log["history"], log["evaluations"]
val = TinyShapes("val", limit=8)
images, tokens = collate([val[i] for i in range(8)])  # tokens right-padded with [PAD] = 0
print("images", tuple(images.shape), "| tokens", tuple(tokens.shape))

# %% [markdown]
# ## 1. One forward pass, both losses
#
# CoCa's objective is a weighted sum of two losses (paper eq. 3, $\lambda_\text{Con} = 1$,
# $\lambda_\text{Cap} = 2$):
#
# $$\mathcal{L}_\text{CoCa} = \lambda_\text{Con}\,\mathcal{L}_\text{Con}(x, y) + \lambda_\text{Cap}\,\mathcal{L}_\text{Cap}(\text{logits}, \text{next tokens}).$$
#
# The contrastive loss needs the image embedding $x$ and the text embedding $y$, the captioning
# loss the next-token logits. One call `model(images, tokens)` gives all three: the image goes
# once through the ViT and the two poolers, the text once through the unimodal layers (their
# [CLS] output is $y$), and the multimodal layers go on from the same token features (lesson 05).

# %%
with torch.no_grad():
    outputs = trained(images, tokens)  # the one forward pass
    losses = coca_loss(outputs, tokens, pad_id=config.pad_id)  # eq. 3: 1 * L_con + 2 * L_cap
for name, value in outputs.items():
    print(f"{name:16s} {tuple(value.shape)}")
print({name: round(value.item(), 4) for name, value in losses.items()})

# %% [markdown]
# **Check 1**: the pass's embeddings are those of the separate encoders `encode_image` and
# `encode_text` (1e-6), and its loss is $1 \cdot \mathcal{L}_\text{Con} + 2 \cdot \mathcal{L}_\text{Cap}$ (1e-6).

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
# Without the decoupled decoder the two losses would need two text networks: a text encoder
# (as in CLIP) for $y$, and a captioner that reads the image. In CoCa the unimodal layers serve
# as both, run once. We count what that saves in multiply-adds (MACs; one MAC is two FLOPs) of
# the decoder's matrix products for one caption of $T$ tokens: width $D$, MLP width
# $D_\text{mlp}$, $N$ caption tokens from the pooler, vocabulary $V$, embedding size $E$.
#
# - A **unimodal layer** on $t$ positions: Q, K, V and output projections $4tD^2$; scores
#   $QK^\top$ and the weighted sum of $V$, $2t^2D$; the MLP, $2tDD_\text{mlp}$.
# - A **multimodal layer** adds cross-attention: Q and output projections $2tD^2$, K and V of
#   the $N$ image tokens $2ND^2$, scores and sum $2tND$.
# - [CLS]'s projection to the embedding, $DE$; the LM head, $tDV$.
#
# The unimodal half reads $T + 1$ positions (the caption, then [CLS]), the multimodal half
# $T - 1$ (teacher forcing reads `tokens[:, :-1]`). A captioner of its own would run the
# unimodal layers again, on its $T - 1$ positions. With $U(t) = 4tD^2 + 2t^2D + 2tDD_\text{mlp}$
# and $M(t) = U(t) + 2tD^2 + 2ND^2 + 2tND$:
#
# $$\text{CoCa} = \underbrace{n_\text{uni}\,U(T{+}1) + DE}_\text{unimodal half} + \underbrace{n_\text{multi}\,M(T{-}1) + (T{-}1)DV}_\text{multimodal half},
# \qquad \text{CLIP + captioner} = \text{CoCa} + n_\text{uni}\,U(T{-}1).$$
#
# The image side (ViT, poolers) runs once in both designs, so it is left out. The counts for
# the tiny model and Table 1's sizes, on captions of their full context:

# %%
def decoder_macs(c, T):
    """Multiply-adds of the matrix products of CoCa's text decoder for one caption of T tokens."""
    D, Dm, N, V, E = c.text_width, c.text_mlp, c.n_caption_queries, c.vocab_size, c.embed_dim
    U = lambda t: 4 * t * D * D + 2 * t * t * D + 2 * t * D * Dm  # U(t) = 4tD² + 2t²D + 2tD·Dmlp
    M = lambda t: U(t) + 2 * t * D * D + 2 * N * D * D + 2 * t * N * D  # M(t) = U(t) + 2tD² + 2ND² + 2tND
    unimodal = c.n_uni * U(T + 1) + D * E  # caption + [CLS]; [CLS]'s projection
    multimodal = c.n_multi * M(T - 1) + (T - 1) * D * V  # teacher forcing: T - 1 positions; the LM head
    return {"unimodal": unimodal, "multimodal": multimodal, "coca": unimodal + multimodal,
            "clip_plus_captioner": unimodal + multimodal + c.n_uni * U(T - 1)}  # fmt: skip


print(f"GMAC per caption {'T':>3s}{'unimodal':>10s}{'multimodal':>12s}{'CoCa':>8s}{'CLIP + captioner':>18s}{'CoCa / other':>14s}")
for name in ["tiny", "base", "large", "coca"]:
    c = PRESETS[name]
    m = decoder_macs(c, c.context_length)
    print(f"{name:16s}{c.context_length:>4d}{m['unimodal'] / 1e9:>10.3f}{m['multimodal'] / 1e9:>12.3f}{m['coca'] / 1e9:>8.3f}"
          f"{m['clip_plus_captioner'] / 1e9:>18.3f}{m['coca'] / m['clip_plus_captioner']:>14.1%}")  # fmt: skip

# %% [markdown]
# At every size one pass does about three quarters of the work of two text networks. The
# share saved is a little smaller at the paper's sizes, where the multimodal half weighs more:
# its cross-attention reads 256 image tokens instead of 64, its LM head covers 64,000 tokens
# instead of 366.
#
# **Check 2**: the formula equals what `torch.utils.flop_counter.FlopCounterMode` counts on the
# tiny decoder for one batch, $2 \times B \times$ MACs, exactly (tolerance 0). On a CPU,
# `F.scaled_dot_product_attention` runs a fused kernel that `FlopCounterMode` has no formula
# for (it would miss $QK^\top$ and the weighted sum), so we select PyTorch's plain "math"
# attention, made of counted matrix products. Both counts leave out what is not a matrix
# product (LayerNorm, softmax, GELU, residual additions, embedding lookups): a few operations
# per element, where a matrix product does $D$ or more multiply-adds per output element.

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

# %% [markdown]
# The saving carries over to training: a backward pass costs about two forward passes, and a
# unimodal half not run twice forward is not run twice backward either.
#
# ## 3. A training step, from scratch
#
# One step of coca_min's trainer (`coca_min/train/step.py`): forward, the CoCa loss, backward,
# clip the gradient norm, set the step's learning rate, an AdamW step, and keep the scale
# $s \le 100$ (lesson 06). We write each piece and check it against coca_min's.
#
# ### 3.1 AdamW, with weight decay on matrices only
#
# AdamW divides the gradient's running mean $\hat m$ by the root of its running square
# $\hat v$, and applies weight decay $\lambda$ apart from that:
# $\theta \leftarrow \theta - \eta\,(\hat m / (\sqrt{\hat v} + \epsilon) + \lambda\,\theta)$.
# Decay pulls matrices (linear layers, embeddings, the poolers' queries) towards zero. Biases,
# LayerNorm gains, the [CLS] vector and the temperature need values away from zero (a LayerNorm
# gain of 0 switches its layer off), so tensors of fewer than two dimensions get none.
# `make_optimizer` also gives the image encoder groups of its own, for `--image-lr-scale` (1 by
# default). It reads three of train.py's arguments; a `SimpleNamespace` stands in for them.

# %%
model = CoCa(config)  # a fresh, untrained tiny model: the one section 4 trains
args = types.SimpleNamespace(lr=2e-3, weight_decay=0.05, image_lr_scale=1.0)  # train.py's defaults
groups = []
for in_image_encoder in (True, False):
    params = [p for n, p in model.named_parameters() if n.startswith("image_encoder.") == in_image_encoder]
    groups.append({"params": [p for p in params if p.dim() >= 2], "weight_decay": args.weight_decay})  # matrices
    groups.append({"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0})  # biases, norms, [CLS], scale
mine = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.98))
for group, what in zip(mine.param_groups, ["image encoder, matrices", "image encoder, others", "the rest, matrices",
                                           "the rest, others"]):  # fmt: skip
    print(f"{what:24s} {len(group['params']):3d} tensors {sum(p.numel() for p in group['params']):>9,} parameters, "
          f"weight decay {group['weight_decay']}")  # fmt: skip
print("parameters in all:", f"{count_parameters(model)['total']:,}")

# %% [markdown]
# **Check 3**: these are `make_optimizer`'s groups: the same tensors in the same groups, the
# same weight decay, learning rate and betas (exact).

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
# Adam's running means rest on few gradients in the first steps, so the learning rate rises
# linearly over $w$ (`warmup`) steps, then follows half a cosine from the peak $\eta$ towards
# $m\eta$ ($m$ = `min_ratio`, 0.05), reached at $t = T$, just after the last step $T - 1$:
#
# $$\eta_t = \eta\,\frac{t+1}{w} \ (t < w), \qquad
# \eta_t = \eta\left(m + (1-m)\,\tfrac12\big(1 + \cos(\pi\,\tfrac{t - w}{T - w})\big)\right) \ (t \ge w).$$
#
# `Schedule` keeps the decay's progress as a state (a run with a time budget re-plans $T$);
# with $T$ fixed it must give this closed form.
#
# **Check 4**: the closed form equals `Schedule.lr`, advanced after each step as the trainer
# does, at every step of a 100-step plan; and it equals the learning rate logged at every step
# of the full tiny run of section 5, with train.py's defaults: $T = 1123$,
# $w = \text{round}(0.05\,T)$, peak 2e-3 (relative 1e-9 for both). The figure shows the latter.

# %%
def lr_at(t, peak, warmup, total, min_ratio=0.05):
    if t < warmup:
        return peak * (t + 1) / warmup  # eta (t + 1) / w
    progress = (t - warmup) / (total - warmup)  # (t - w) / (T - w): 0 -> 1 over the decay
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))  # m + (1 - m) cosine


STEPS, WARMUP = 100, 10  # section 4's run
schedule, theirs = Schedule(args.lr, WARMUP), []
for t in range(STEPS):
    theirs.append(schedule.lr(t))
    schedule.advance(t + 1, STEPS)  # after step t: t + 1 steps done, STEPS planned
ours = [lr_at(t, args.lr, WARMUP, STEPS) for t in range(STEPS)]
assert np.allclose(ours, theirs, rtol=1e-9, atol=0)
print(f"100-step plan: step 0 {ours[0]:.1e}, peak {max(ours):.1e} at step {int(np.argmax(ours))}, "
      f"last {ours[-1]:.2e} (= {ours[-1] / args.lr:.4f} of the peak)")  # fmt: skip

logged_lr, total_steps = np.array([h["lr"] for h in history]), len(history)
warmup = round(0.05 * total_steps)
formula_lr = np.array([lr_at(t, args.lr, warmup, total_steps) for t in range(total_steps)])
assert np.allclose(logged_lr, formula_lr, rtol=1e-9, atol=0)
print(f"full run: T = {total_steps}, peak {logged_lr.max():.1e}, warm-up {warmup} steps, last {logged_lr[-1]:.2e}")

fig, ax = plt.subplots(figsize=(7, 3.4))
ax.plot(np.arange(total_steps), logged_lr, label="logged by train.py")
ax.plot(np.arange(0, total_steps, 40), formula_lr[::40], "o", markersize=3, label="closed form, every 40th step")
ax.axvline(warmup, color="grey", linestyle="--", label=f"warm-up ends: t = w = {warmup}")
ax.set(title="learning rate of the full tiny run: warm-up, then cosine", xlabel="optimizer step t", ylabel="learning rate")
ax.grid(alpha=0.3)
ax.legend()
fig.tight_layout()

# %% [markdown]
# ### 3.3 Gradient clipping, and the whole step
#
# One batch with a huge gradient could undo many steps. Clipping rescales the whole gradient,
# all parameters together, when its norm exceeds $c$ (`--grad-clip`, 1.0):
#
# $$g \leftarrow g \cdot \min\Big(1, \frac{c}{\lVert g \rVert_2 + 10^{-6}}\Big), \qquad \lVert g\rVert_2 = \sqrt{\textstyle\sum_p \lVert g_p \rVert_2^2}.$$
#
# `train_step` below is the whole step as the trainer runs it on one process. The trainer's
# forward and backward pass is `coca_min.train.step.forward_backward`, which also serves
# several processes and gradient accumulation; on one process and one micro-batch it must
# match our two lines.
#
# **Check 5**: on the first batch, our forward + `coca_loss` + backward gives the same losses
# and gradients as `forward_backward` (relative 1e-5; gradients also absolute 1e-7).
#
# **Check 6**: the from-scratch clipping of those gradients equals
# `torch.nn.utils.clip_grad_norm_`, which the trainer calls: the same norm (relative 1e-6) and
# the same clipped gradients (relative 1e-6, absolute 1e-12).

# %%
def clip_by_hand(grads, max_norm):
    norm = torch.sqrt(sum((g**2).sum() for g in grads))  # one norm over every parameter
    scale = torch.clamp(max_norm / (norm + 1e-6), max=1.0)  # min(1, c / (norm + 1e-6)): never stretch
    return norm, [g * scale for g in grads]


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


probe = copy.deepcopy(model)  # a copy: the model that section 4 trains stays untouched
our_losses = coca_loss(probe(images, tokens), tokens, config.pad_id)
our_losses["loss"].backward()
our_grads = [p.grad.clone() for p in probe.parameters()]
probe.zero_grad()
logged = forward_backward(probe, [(images, tokens)], config.pad_id)  # coca_min's, one micro-batch
for key in ("loss", "contrastive", "caption"):
    assert math.isclose(our_losses[key].item(), logged[key].item(), rel_tol=1e-5)
assert all(torch.allclose(g, p.grad, rtol=1e-5, atol=1e-7) for g, p in zip(our_grads, probe.parameters()))
print("the same losses and gradients as forward_backward:", {k: round(v.item(), 4) for k, v in logged.items()})

norm, clipped = clip_by_hand([p.grad for p in probe.parameters()], 1.0)
torch_norm = torch.nn.utils.clip_grad_norm_(probe.parameters(), 1.0)  # in place, on the same gradients
assert torch.allclose(norm, torch_norm, rtol=1e-6, atol=0)
assert all(torch.allclose(g, p.grad, rtol=1e-6, atol=1e-12) for g, p in zip(clipped, probe.parameters()))
clipped_norm = torch.sqrt(sum((g**2).sum() for g in clipped)).item()
print(f"gradient norm at the start: {norm.item():.2f} -> clipped to {clipped_norm:.2f}")

# %% [markdown]
# ## 4. A short training run
#
# The fresh tiny model trains for 100 steps of 32 pairs (the full run of section 5 takes 64;
# 32 keeps this one short on a CPU): 3,200 `train` images, one pass, each with a caption drawn
# as the trainer draws them, shuffled by a seeded DataLoader, padded by `collate`; the
# optimizer is `make_optimizer`'s, the learning rate `Schedule`'s (10 warm-up steps). It is
# seeded: on one machine the run, and every number below, is the same each time.
#
# Two levels give the losses a meaning: a model that cannot tell the pairs apart scores
# $2 \ln B$ on the contrastive loss (a uniform softmax over the $B$ texts, in both directions),
# one that knows no words $\ln V$ on the captioning loss (a uniform guess over the vocabulary).

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
for i in [*range(0, STEPS, 20), STEPS - 1]:
    row = short_run[i]
    print(f"step {i + 1:3d}  lr {row['lr']:.1e}  loss {row['loss']:6.3f}  contrastive {row['contrastive']:6.3f}  "
          f"caption {row['caption']:6.3f}")  # fmt: skip
print(f"uniform guesses: contrastive 2 ln 32 = {2 * math.log(32):.3f}, "
      f"caption ln {config.vocab_size} = {math.log(config.vocab_size):.3f}")

# %% [markdown]
# **Check 7** (a stated property of this seeded run): both losses fell, the mean of the last 10
# steps being below half the mean of the first 10, for the contrastive and the captioning loss.

# %%
first_ten = {k: np.mean([r[k] for r in short_run[:10]]) for k in ("contrastive", "caption")}
last_ten = {k: np.mean([r[k] for r in short_run[-10:]]) for k in ("contrastive", "caption")}
for k in first_ten:
    print(f"{k:12s} first 10 steps {first_ten[k]:.3f} -> last 10 {last_ten[k]:.3f} (x {last_ten[k] / first_ten[k]:.2f})")
    assert last_ten[k] < 0.5 * first_ten[k]

# %% [markdown]
# The two losses of every step, against their reference levels.

# %%
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
# The captioning loss falls first: much of a caption can be predicted without looking at the
# image (its grammar: "a", "and", "at the top"). The contrastive loss starts a little above
# $2\ln B$ (the initial scale $s = 1/0.07$ sharpens the softmax over random similarities), stays
# there while the learning rate warms up, and falls only once the two embeddings begin to tell
# the scenes apart.
#
# ## 5. What the full tiny run learns, and when
#
# The model in `assets/tiny_coca.pt` was trained by
# `python train.py --size tiny --steps 1123 --eval-every 40 --out out/lesson_run`: the step
# above with train.py's defaults of that day (64 pairs a step, peak learning rate 2e-3, weight
# decay 0.05, clipping at 1.0, warm-up over 5% of the steps; its scenes were not yet recombined,
# and the canonical caption came two times in three). Its log, `assets/tiny_coca_history.json`,
# holds every step's losses and learning rate and, every 40 steps and at the end, quick
# evaluations on small subsets (`evaluate_during_training`): the loss on 256 `val` pairs and
# retrieval among their images' 768 captions, zero-shot on 400 `classes` images, and greedy
# captions of 128 `val` and 128 `test_comp` images.

# %%
run_steps, eval_steps = np.array([h["step"] for h in history]), np.array([e["step"] for e in evaluations])
print(f"{len(history)} steps logged; {len(evaluations)} evaluations, at steps {eval_steps[0]}, {eval_steps[1]}, ..., {eval_steps[-1]}")
print("a step's row:", {k: v if k == "step" else float(f"{v:.4g}") for k, v in history[0].items()})
print("an evaluation's keys:", list(evaluations[0])[1:])
print(f"first contrastive loss {history[0]['contrastive']:.2f} vs 2 ln 64 = {2 * math.log(64):.2f}")

# %% [markdown]
# The loss curves: each step's training losses (pale) with their 25-step moving average, and
# the total loss on the validation subset at each evaluation, on a log scale.

# %%
def smooth(values, width=25):  # moving average, the ends padded with the end values
    padded = np.pad(values, (width // 2, width - 1 - width // 2), mode="edge")
    return np.convolve(padded, np.ones(width) / width, mode="valid")


fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
for key, colour in [("contrastive", "C0"), ("caption", "C1")]:
    values = np.array([h[key] for h in history])
    axes[0].plot(run_steps, values, color=colour, alpha=0.25)
    axes[0].plot(run_steps, smooth(values), color=colour, label=f"{key} (25-step mean)")
axes[1].plot(run_steps, smooth(np.array([h["loss"] for h in history])), color="C2", label="training (25-step mean)")
axes[1].plot(eval_steps, [e["val_loss"] for e in evaluations], "o-", color="C3", markersize=3, label="256 val pairs")
for ax, title in zip(axes, ["full tiny run: the two training losses", "full tiny run: total loss 1 * con + 2 * cap"]):
    ax.set(title=title, xlabel="optimizer step (64 pairs)", ylabel="loss (nats, log scale)", yscale="log")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
fig.tight_layout()

# %% [markdown]
# What the evaluations measured, against the step: zero-shot classification into the 40
# colour–shape classes, and how often its answer has the right colour or the right shape;
# greedy captions' object-F1 on `val` (colour–shape pairs seen in training) and on `test_comp`
# (the 8 held-out pairs, lesson 00); retrieval Recall@1 both ways.

# %%
def series(key):
    return [e[key] for e in evaluations]


fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
axes[0].plot(eval_steps, series("zero_shot_shape"), color="C1", linewidth=5, alpha=0.4, label="shape right")  # under top-1
for key, label, colour in [("zero_shot_colour", "colour right", "C0"), ("zero_shot_top1", "top-1 (both right)", "C2"),
                           ("zero_shot_top1_held_out", "top-1, held-out pairs", "C3")]:  # fmt: skip
    axes[0].plot(eval_steps, series(key), marker="o", markersize=3, color=colour, label=label)
for level, colour, text in [(1 / 8, "C0", "chance: colour 1/8"), (1 / 5, "C1", "chance: shape 1/5")]:
    axes[0].axhline(level, color=colour, linestyle=":")
    axes[0].text(eval_steps[-1], level + 0.01, text, color=colour, ha="right", va="bottom", fontsize=8)
for ax, keys, labels in [(axes[1], ("caption_object_F1", "caption_object_F1_comp"), ("val (seen pairs)", "test_comp (held-out pairs)")),
                         (axes[2], ("image_to_text_R@1", "text_to_image_R@1"), ("image -> text", "text -> image"))]:  # fmt: skip
    for key, label in zip(keys, labels):
        ax.plot(eval_steps, series(key), marker="o", markersize=3, label=label)
for ax, title, ylabel in [(axes[0], "zero-shot on classes: colour before shape", "accuracy"),
                          (axes[1], "greedy captions: object-F1", "object-F1"),
                          (axes[2], "retrieval on 256 val images: Recall@1", "Recall@1")]:  # fmt: skip
    ax.set(title=title, xlabel="optimizer step", ylabel=ylabel, ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, **({"loc": "center right", "bbox_to_anchor": (1, 0.42)} if ax is axes[0] else {}))
fig.tight_layout()

# %% [markdown]
# The figure in numbers: for each metric, the first evaluation at which it reached 0.5 and 0.9
# ("never" if it did not), and its value at the last one.

# %%
def first_step(key, threshold):
    return next((e["step"] for e in evaluations if e[key] >= threshold), None)


print(f"{'metric':26s}{'first >= 0.5':>14s}{'first >= 0.9':>14s}{'last':>8s}")
for key in list(evaluations[-1])[2:]:  # every metric but the step and the validation loss
    a, b = first_step(key, 0.5), first_step(key, 0.9)
    print(f"{key:26s}{a or 'never':>14}{b or 'never':>14}{evaluations[-1][key]:>8.3f}")

# %% [markdown]
# **Check 8** (stated properties of the log, which the reading below relies on): zero-shot
# colour accuracy reaches 0.9 at an earlier evaluation than shape accuracy; greedy captions
# reach object-F1 0.5 earlier on `val` (seen pairs) than on `test_comp` (held-out pairs); and
# image→text Recall@1 reaches 0.5 before shape accuracy does. A metric that never gets there
# counts as later (exact: steps are integers).

# %%
later = lambda step: math.inf if step is None else step
assert later(first_step("zero_shot_colour", 0.9)) < later(first_step("zero_shot_shape", 0.9))
assert later(first_step("caption_object_F1", 0.5)) < later(first_step("caption_object_F1_comp", 0.5))
assert later(first_step("image_to_text_R@1", 0.5)) < later(first_step("zero_shot_shape", 0.5))
print("colour before shape; captions of seen pairs before held-out pairs; retrieval before shape")

# %% [markdown]
# What the log shows:
#
# - **Colour first, shape much later.** Zero-shot colour accuracy is above 0.5 at the first
#   evaluation (step 40; chance is 1/8) and passes 0.9 at step 80; shape accuracy passes 0.5
#   only at step 160, and 0.9 at step 800. A likely reason: a colour can be read off single
#   pixels, a shape only from how an object's pixels are arranged, across patches. With the
#   colour always right, top-1 over the 40 classes *is* shape accuracy: the curves coincide.
# - **Captions before compositions.** Greedy captions of `val` images (seen pairs only) pass
#   object-F1 0.5 at step 320 and 0.9 at step 920. On `test_comp` (held-out pairs) they pass
#   0.5 only at step 680 and end at 0.685. Zero-shot top-1 on the same held-out pairs passes
#   0.9 at step 800, with top-1 over all classes: scoring a given prompt composes colour and
#   shape, *writing* an unseen combination word by word is harder.
# - **Retrieval looks good early.** Image→text Recall@1 passes 0.5 at step 120, before shape
#   accuracy does: among 768 captions of 256 scenes, colour, size, position and the number of
#   objects tell most scenes apart without the shapes. Retrieval alone overstates what the
#   model understands.
#
# ## 6. What changes at scale
#
# The paper trains the same objective at a very different scale (§4.1):
#
# | | the paper (§4.1) | the tiny run |
# |---|---|---|
# | data | JFT-3B and ALIGN (private) | `tiny_data/`: 30,000 synthetic shape scenes |
# | model | CoCa 2.1B (Base 383M, Large 787M; Table 1) | `tiny`: 1.40M parameters |
# | images | 288 × 288 px, patch 18 (256 tokens), then one epoch at 576 px | 48 × 48 px, patch 8 (36 tokens) |
# | batch | 65,536 pairs | 64 pairs |
# | steps | 500k | 1,123 |
# | optimizer | Adafactor, β₁ 0.9, β₂ 0.999, decoupled weight decay 0.01 | AdamW, β (0.9, 0.98), weight decay 0.05 on matrices only, gradient clipping at norm 1.0 |
# | schedule | warm-up over the first 2%, then linear decay | warm-up over 5% (56 steps), then cosine to 5% of the peak 2e-3 |
# | compute | 5 days on 2,048 TPUv4 | minutes on a 2-core CPU |
#
# Beyond the numbers: a batch of 65,536 is spread over many chips, so the contrastive loss must
# compare every image with the texts of *all* chips, through an all-gather whose backward
# returns each chip its share of the gradient (`coca_min/train/distributed.py`, lesson 10). For
# short runs, AdamW with warm-up and cosine decay is the usual choice, and the tiny run's.

# %% [markdown]
# ## Summary
# - One forward pass gives the image embedding, the text embedding and the logits, and both
#   losses are computed from it. Against a text encoder plus a captioner that saves a second
#   run of the unimodal layers, about a quarter of the two networks' multiply-adds at every
#   size (a formula checked against PyTorch's FLOP counter).
# - A training step is forward, `coca_loss`, backward, clipping, a scheduled AdamW step with
#   weight decay on matrices only, and the clamp of the temperature; each piece was checked
#   against coca_min's.
# - 100 steps in this notebook cut both losses to well under half. The full run's log shows
#   colour learnt before shape, and captions of seen colour–shape pairs before held-out ones,
#   which still lag at the end.
#
# ## Exercises
# 1. Run section 4 again from a fresh start (a new `CoCa(config)`, its `make_optimizer`, and
#    `STEPS = 50`, `WARMUP = 5`) with `batch_size=64` and `limit=64 * 50`. Does the first
#    contrastive loss sit near $2 \ln 64$? Which loss is lower after the same number of *pairs*?
# 2. With `decoder_macs`, find the shares of the unimodal layers, the multimodal layers and the
#    LM head in CoCa's pass for `tiny` and `base`. Then try `base` with $n_\text{uni} = 18$,
#    $n_\text{multi} = 6$ (`dataclasses.replace`): how much more does one pass save?
# 3. Build an AdamW with weight decay 0.05 on every parameter (one group, with `"lr_scale": 1.0`)
#    and train a fresh model as in section 4. What happens to `model.log_logit_scale`?
