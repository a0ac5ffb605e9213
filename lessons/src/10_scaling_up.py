# %% [markdown]
# # Lesson 10 — Scaling up
#
# **What you will learn**
# - how the contrastive loss sees the *global* batch split over many GPUs (four ranks simulated
#   in one process), and the two traps that give wrong gradients;
# - where a GPU's memory goes: data parallel, sharded (FSDP) training, activation checkpointing;
# - mixed precision: what bf16 rounds away, and why coca_min computes both losses in float32;
# - the training FLOPs of the paper's models from their configs, and model FLOPs utilisation;
# - how to launch `train.py` with `torchrun` on one machine and on several.
#
# **Paper**: §4.1 (pretraining: batch 65,536 on 2,048 TPUv4 chips) and Table 1 (the sizes).
#
# **Assumes**: lesson 06 (the contrastive loss) and lesson 07 (the model and its training loop).

# %% [markdown]
# ## Set-up
# Imports, a fixed seed and thread count, the versions. Nothing here needs a GPU: the ranks are
# simulated in this process, and the big models are built on the *meta* device (shapes only).

# %%
import dataclasses
import math
import os
import subprocess
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

import matplotlib.pyplot as plt
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import checkpoint, set_checkpoint_early_stop
from torch.utils.flop_counter import FlopCounterMode

import coca_min
import coca_min.model.flops
from coca_min import PRESETS, CoCa, count_parameters
from coca_min.model.layers import Block
from coca_min.model.losses import caption_loss, coca_loss, contrastive_loss
from coca_min.train import distributed as D

torch.manual_seed(0)
torch.set_num_threads(2)
print("torch", torch.__version__)
ROOT = Path(coca_min.__file__).resolve().parents[1]  # the repository, from any working directory

# %% [markdown]
# ## 1. The contrastive loss over the global batch
#
# The contrastive loss (eq. 1, lesson 06) tells each image apart from every other text of the
# batch: the more pairs, the more negatives. The paper's 65,536 pairs fit on no one accelerator,
# so a batch of $N$ pairs is split over $W$ processes ("ranks"), $B = N / W$ each. Rank $r$ keeps
# its own rows $x_r, y_r \in \mathbb{R}^{B \times E}$ and gathers every rank's rows as columns
# $X, Y \in \mathbb{R}^{N \times E}$ (coca_min's `contrastive_loss` with a `gather`):
#
# $$L_r = \text{CE}\big(s\, x_r Y^\top, \ \ell_r\big) + \text{CE}\big(s\, y_r X^\top, \ \ell_r\big),
# \qquad \ell_r = (0, 1, \dots, B-1) + r B,$$
#
# each cross-entropy a mean over the $B$ rows; the labels $\ell_r$ point at rank $r$'s pairs
# among the $N$ columns. Then $\frac{1}{W}\sum_r L_r = L_\text{con}$: $W$ means of $B$ rows are
# one mean of $N$ rows. The reference: coca_min's single-process `contrastive_loss` on all
# $N = 32$ pairs, in float64 so that the comparisons can be tight.

# %%
N, E, W = 32, 16, 4
B = N // W  # pairs per rank
image_rows = F.normalize(torch.randn(N, E, dtype=torch.float64), dim=-1)  # x_i, unit norm
text_rows = F.normalize(image_rows + 0.8 * torch.randn(N, E, dtype=torch.float64), dim=-1)  # y_i, near x_i
log_scale = torch.tensor(math.log(1 / 0.07), dtype=torch.float64)  # log s, as the model starts

x, y, t = (v.clone().requires_grad_() for v in (image_rows, text_rows, log_scale))
reference_loss = contrastive_loss(x, y, t.exp())  # paper eq. 1 on the whole batch
reference = [reference_loss.detach(), *torch.autograd.grad(reference_loss, [x, y, t])]
print(f"N = {N} pairs, W = {W} ranks of B = {B}; single-batch loss {reference_loss.item():.6f}")
print("gradients:", [tuple(g.shape) for g in reference[1:]], "(image rows, text rows, log s)")

# %% [markdown]
# ### The gather with gradient, by hand
#
# `coca_min.train.distributed.AllGatherWithGrad` is an autograd function:
#
# - **forward**: every rank receives every rank's rows, $X = [x_0; x_1; \dots; x_{W-1}]$, $(N, E)$;
# - **backward**: rank $k$'s loss sends gradient $\partial L_k / \partial X$ to *every* row.
#   Rank $r$'s rows were used by all $W$ losses, so their gradient is the sum
#   $\sum_k \partial L_k / \partial X$ (an `all_reduce`), of which rank $r$ keeps its slice.
#
# Rank $r$'s rows also reach its own loss as the queries $x_r, y_r$. Last, DDP averages the
# parameter gradients over the $W$ replicas: the same as dividing the rows' gradients by $W$
# (each encoder's backward is linear in them). `simulate` does this in one process; `gather`
# picks the backward: the right one, or a trap of the next section.
#
# **Check 1**: the four simulated ranks give the single-batch loss and the single-batch
# gradients of the image rows, the text rows and $\log s$ (float64, 1e-12).

# %%
def simulate(gather="with_grad", global_labels=True):
    """W ranks in one process -> [mean of the W rank losses, the gradients that DDP leaves for
    the image rows (N, E), the text rows (N, E) and log s]."""
    mine = [slice(r * B, (r + 1) * B) for r in range(W)]  # rank r's rows
    losses, own, sent = [], [], []
    for r in range(W):
        x_r, y_r = image_rows[mine[r]].clone().requires_grad_(), text_rows[mine[r]].clone().requires_grad_()  # (B, E)
        t_r = log_scale.clone().requires_grad_()  # rank r's replica of log s
        X, Y = image_rows.clone().requires_grad_(), text_rows.clone().requires_grad_()  # the gather's forward, (N, E)
        labels = torch.arange(B) + (r * B if global_labels else 0)  # ℓ_r: my pairs' columns
        loss = F.cross_entropy(t_r.exp() * x_r @ Y.T, labels) + F.cross_entropy(t_r.exp() * y_r @ X.T, labels)  # L_r
        *through_own, g_X, g_Y = torch.autograd.grad(loss, [x_r, y_r, t_r, X, Y])
        losses.append(loss.detach())
        own.append(through_own)  # through my rows as queries, and through s
        sent.append((g_X, g_Y))  # ∂L_r/∂X, ∂L_r/∂Y: to every rank's rows
    summed = [sum(g[i] for g in sent) for i in (0, 1)]  # the all_reduce: Σ_k ∂L_k/∂X, Σ_k ∂L_k/∂Y
    rows = []
    for r in range(W):
        through_gather = {"with_grad": [g[mine[r]] for g in summed],  # AllGatherWithGrad: every rank's gradient
                          "own_rows": [g[mine[r]] for g in sent[r]],  # a backward that only slices: my loss's
                          "no_grad": [0, 0]}[gather]  # the gathered rows are constants, as dist.all_gather's are
        rows.append([a + b for a, b in zip(own[r][:2], through_gather)])
    grad_x, grad_y = (torch.cat([row[i] for row in rows]) / W for i in (0, 1))  # DDP: the average over W replicas
    return [torch.stack(losses).mean(), grad_x, grad_y, sum(o[2] for o in own) / W]


def errors(result):  # the largest difference from the single-batch reference, per quantity
    return [(a - b).abs().max().item() for a, b in zip(result, reference)]


simulated = simulate()
print("max |difference| from the single batch (loss, image rows, text rows, log s):",
      ", ".join(f"{e:.1e}" for e in errors(simulated)))  # fmt: skip
assert all(e < 1e-12 for e in errors(simulated))

# %% [markdown]
# ### The traps
#
# **(a) Gathering without gradient.** `torch.distributed.all_gather` returns tensors without
# gradient. Used as is (`"no_grad"`), a rank's rows get gradient only as queries, none from the
# losses that used them as negatives. A backward that only slices, with no `all_reduce`
# (`"own_rows"`, CoCa-pytorch's), keeps its own loss's share and loses the other $W - 1$. In
# both the **loss is right**: the logged loss shows nothing.
#
# **(b) Labels from the local batch.** Rank $r$'s pairs sit at columns $rB \dots (r+1)B - 1$;
# labels `arange(B)` point every rank but rank 0 at rank 0's texts.
#
# **Check 2**: both gathers of trap (a) give the single-batch loss (1e-12) and a wrong gradient:
# the relative error $\lVert g - g_\text{ref} \rVert / \lVert g_\text{ref} \rVert$ of the image
# rows' gradient is above 0.1. **Check 3**: with local labels the loss itself is wrong (by more
# than 1) and so is that gradient (relative error above 0.1).

# %%
def relative_error(g, g_ref):
    return ((g - g_ref).norm() / g_ref.norm()).item()


for gather in ["no_grad", "own_rows"]:
    wrong = simulate(gather)
    rel = relative_error(wrong[1], reference[1])
    print(f"(a) {gather:8s}: loss error {errors(wrong)[0]:.1e}; image-row gradient: relative error {rel:.2f}, "
          f"norm {wrong[1].norm() / reference[1].norm():.2f} x the right one")  # fmt: skip
    assert errors(wrong)[0] < 1e-12 and rel > 0.1

wrong = simulate(global_labels=False)
rel = relative_error(wrong[1], reference[1])
print(f"(b) local labels: loss {wrong[0].item():.4f} instead of {reference[0].item():.4f}; "
      f"image-row gradient: relative error {rel:.2f}")  # fmt: skip
assert errors(wrong)[0] > 1 and rel > 0.1

# %% [markdown]
# ### The real code path
#
# One process can join a process group of its own (world size 1, *gloo*, a rendezvous through a
# file). That cannot test the summing (`tests/test_distributed.py` runs 2 and 4 processes), but
# it runs `contrastive_loss` with `gather_with_grad` (`AllGatherWithGrad`) and the labels end
# to end: the same function as in one process, handed the gather and this process's rank.
#
# **Check 4**: in a world of one, the gathered `contrastive_loss` and its gradients equal the
# plain one's (float64, 1e-12).

# %%
with tempfile.TemporaryDirectory() as folder:  # a file store for the rendezvous: no network port to collide on
    store = Path(folder) / "rendezvous"
    dist.init_process_group("gloo", rank=0, world_size=1, init_method=f"file://{store}", timeout=timedelta(seconds=60))
    try:
        print(f"process group: backend {dist.get_backend()}, world size {D.world_size()}, rank {D.rank()}")
        x, y, t = (v.clone().requires_grad_() for v in (image_rows, text_rows, log_scale))
        loss = contrastive_loss(x, y, t.exp(), gather=D.gather_with_grad, rank=D.rank())  # AllGatherWithGrad, rank offsets
        library = [loss.detach(), *torch.autograd.grad(loss, [x, y, t])]
    finally:
        dist.destroy_process_group()
assert all((a - b).abs().max() < 1e-12 for a, b in zip(library, reference))
print(f"gathered contrastive_loss {library[0].item():.6f} = contrastive_loss {reference[0].item():.6f}")

# %% [markdown]
# The caption loss has its own global-batch detail: each rank's sum of token losses is divided
# by the number of real tokens of the *whole* step, all-reduced (`coca_loss`'s `step_tokens`).
#
# ## 2. Memory per GPU: data parallel, sharded, checkpointed
#
# On a GPU, `train.py` keeps the parameters in float32 and computes in bf16 under autocast
# (section 3). For each of its $P$ parameters a GPU holds the **model states**: the weight (4
# bytes), its gradient (4) and AdamW's two moments $m$ and $v$ (8), all float32: **16 bytes**.
#
# - **Data parallel** (DDP, what `train.py` does under `torchrun`) keeps all of them on every
#   GPU and all-reduces the gradients (plus DDP's gradient buckets, about one more gradient, and
#   autocast's bf16 copies of the weights, kept for the backward).
# - **Sharded data parallel** (FSDP, ZeRO stage 3) splits weights, gradients and moments into
#   $W$ shards, one per GPU: $16P / W$ bytes each. A layer's full weights are all-gathered just
#   before it runs and freed after; gradients are reduce-scattered, so each GPU keeps and updates
#   only its shard. The price: the weights travel in the forward and again in the backward.
#
# ### Activations, counted
#
# The rest is what autograd saves for the backward: the *activations*. With
# `torch.autograd.graph.saved_tensors_hooks` we count the elements of the distinct saved tensors
# (parameters left out) of coca_min's `Block` (lesson 03). For width $D$, MLP width $M$ and $h$
# heads, per token: self-attention saves the block input and its LayerNorm's output ($2D$), the
# LayerNorm's mean and inverse standard deviation (2), $q, k, v$ and the attention output ($4D$)
# and the fused kernel's log-sum-exp ($h$); the MLP the residual stream and its LayerNorm's output
# ($2D$), two statistics (2), the first linear's output and the GELU's ($2M$). In all
# $8D + 2M + 4 + h$. Cross-attention adds $4D + 2 + h$ per text token, and per pair the
# context ($S$ caption-pooler tokens, $SD$) and its keys and values ($2SD$).
#
# **Check 5** (exact, a count of elements): the formulas give the elements saved by a tiny ViT
# block and a tiny multimodal block. The blocks run here without an attention mask; with one
# (the decoder's causal mask), the mask is saved as well.

# %%
def saved_elements(run, parameters):
    """Run `run()` and count the elements of the distinct tensors autograd saves for backward,
    parameters left out."""
    skip = {p.untyped_storage().data_ptr() for p in parameters}
    found = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in skip:
            found[storage.data_ptr()] = storage.nbytes() // tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        run()
    return sum(found.values())


c = PRESETS["tiny"]
Dv, Mv, hv, Nv, pairs = c.vision_width, c.vision_mlp, c.vision_heads, c.n_image_tokens, 2
vit_block = Block(Dv, hv, Mv)  # one block of the tiny image encoder
tokens_in = torch.randn(pairs, Nv, Dv, requires_grad=True)  # (2, 36, 64)
vit_saved = saved_elements(lambda: vit_block(tokens_in), vit_block.parameters())
vit_formula = pairs * Nv * (8 * Dv + 2 * Mv + 4 + hv)
print(f"ViT block, {pairs} x {Nv} tokens of width {Dv}: {vit_saved:,} elements saved; formula {vit_formula:,}")

Dt, Mt, ht, T, S = c.text_width, c.text_mlp, c.text_heads, 10, c.n_caption_queries
text_block = Block(Dt, ht, Mt, cross_attention=True)  # a multimodal block of the tiny decoder
text_in, context = torch.randn(pairs, T, Dt, requires_grad=True), torch.randn(pairs, S, Dt, requires_grad=True)
text_saved = saved_elements(lambda: text_block(text_in, context=context), text_block.parameters())
text_formula = pairs * (T * (12 * Dt + 2 * Mt + 6 + 2 * ht) + 3 * S * Dt)  # (8D + 2M + 4 + h) + (4D + 2 + h); SD + 2SD
print(f"multimodal block, {pairs} x {T} tokens, {S} context tokens: {text_saved:,} elements saved; formula {text_formula:,}")
assert vit_saved == vit_formula and text_saved == text_formula

# %% [markdown]
# ### Activation checkpointing
#
# `torch.utils.checkpoint.checkpoint(block, x)` saves only the block's input and runs the
# block's forward again in the backward: memory for compute, $8D + 2M + 4 + h$ elements saved
# per token become $D$.
#
# **Check 6**: on the tiny ViT block, checkpointing gives the same gradients (input and every
# parameter, 1e-6) and saves exactly the input's elements. Its FLOPs of forward and backward
# (`FlopCounterMode`, section 4) grow from 3 forwards to 4 less the block's last linear layer
# (exact): the default checkpoint stops recomputing once it has every tensor the backward
# needs, and none needs that layer's output. With early stopping off, exactly 4.

# %%
def input_and_parameter_grads(run):
    x = tokens_in.detach().clone().requires_grad_()
    return torch.autograd.grad(run(x).square().sum(), [x, *vit_block.parameters()])


def flops(run):
    with sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter:  # the plain kernel: all matmuls visible
        run()
    return counter.get_total_flops()


plain_grads = input_and_parameter_grads(vit_block)
checkpointed_grads = input_and_parameter_grads(lambda x: checkpoint(vit_block, x, use_reentrant=False))
checkpointed_saved = saved_elements(lambda: checkpoint(vit_block, tokens_in, use_reentrant=False), vit_block.parameters())
forward = flops(lambda: vit_block(tokens_in))
plain = flops(lambda: vit_block(tokens_in).sum().backward())
checkpointed = flops(lambda: checkpoint(vit_block, tokens_in, use_reentrant=False).sum().backward())
with set_checkpoint_early_stop(False):
    no_early_stop = flops(lambda: checkpoint(vit_block, tokens_in, use_reentrant=False).sum().backward())
last_linear = 2 * pairs * Nv * Mv * Dv  # fc_out: (36 x 256) @ (256 x 64) per pair, 2 FLOPs per multiply-add
print(f"saved: {vit_saved:,} -> {checkpointed_saved:,} elements ({vit_saved / checkpointed_saved:.1f}x fewer)")
print(f"FLOPs of forward + backward: {plain / forward:.2f} -> {checkpointed / forward:.2f} forwards "
      f"(+{checkpointed / plain - 1:.0%}); without early stopping {no_early_stop / forward:.2f}")  # fmt: skip
assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain_grads, checkpointed_grads))
assert checkpointed_saved == tokens_in.numel()
assert plain == 3 * forward and checkpointed == 4 * forward - last_linear and no_early_stop == 4 * forward

# %% [markdown]
# ### The presets, per GPU
#
# Over every block of a preset, the formulas give the activations of one pair (poolers, masks
# and logits left out), here at 2 bytes each: an estimate, as some saved tensors stay float32
# under autocast. Texts fill the context (64 tokens in the paper's sizes): $T + 1$ positions in
# the unimodal half ([CLS]), $T - 1$ in the multimodal half. Checkpointed, each block keeps its
# input, plus one block's activations while it is recomputed. Parameters: `count_parameters`.
# The paper's batch, 65,536 pairs over 2,048 chips, is 32 pairs per chip: the figure adds it all
# up for 32 pairs per GPU on 8 GPUs.

# %%
with torch.device("meta"):  # shapes only: CoCa-2.1B needs no memory here
    n_params = {name: count_parameters(CoCa(config))["total"] for name, config in PRESETS.items()}


def activations(c, T=None):
    """Elements saved per pair by the blocks -> (without, with activation checkpointing)."""
    T = c.context_length if T is None else T
    N, Dv, D, S = c.n_image_tokens, c.vision_width, c.text_width, c.n_caption_queries
    block = lambda tokens, d, m, h: tokens * (8 * d + 2 * m + 4 + h)  # Check 5's formula
    multi_block = (T - 1) * (12 * D + 2 * c.text_mlp + 6 + 2 * c.text_heads)  # with cross-attention
    full = (c.vision_layers * block(N, Dv, c.vision_mlp, c.vision_heads) + c.n_uni * block(T + 1, D, c.text_mlp, c.text_heads)
            + c.n_multi * (multi_block + 2 * S * D) + S * D)  # each layer's keys and values; the context once
    inputs = c.vision_layers * N * Dv + c.n_uni * (T + 1) * D + c.n_multi * (T - 1) * D  # every block's input
    return full, inputs + max(block(N, Dv, c.vision_mlp, c.vision_heads), multi_block)  # fmt: skip


GB, MB, BF16 = 1e9, 1e6, 2
print(f"{'preset':7s} {'parameters':>11s} {'states (DDP)':>13s} {'FSDP over 8':>12s} {'activations/pair':>17s} {'checkpointed':>13s}")
for name, config in PRESETS.items():
    full, kept = activations(config)
    print(f"{name:7s} {n_params[name] / 1e6:10.1f}M {16 * n_params[name] / GB:10.2f} GB {16 * n_params[name] / 8 / GB:9.2f} GB "
          f"{full * BF16 / MB:13.1f} MB {kept * BF16 / MB:7.1f} MB (1/{full / kept:.1f})")  # fmt: skip

per_gpu, world = 32, 8
names = ["base", "large", "coca"]
setups = {"DDP": (1, 0), "FSDP (8 GPUs)": (world, 0), "FSDP + checkpointing": (world, 1)}  # (shards, checkpointed)
fig, ax = plt.subplots(figsize=(8, 3.8))
for i, (label, (shards, ckpt)) in enumerate(setups.items()):
    states = [16 * n_params[n] / shards / GB for n in names]
    acts = [per_gpu * activations(PRESETS[n])[ckpt] * BF16 / GB for n in names]
    where = [k + (i - 1) * 0.26 for k in range(len(names))]
    ax.bar(where, states, 0.26, color=f"C{i}", label=f"{label}: model states")
    ax.bar(where, acts, 0.26, bottom=states, color=f"C{i}", alpha=0.45, hatch="//", label=f"{label}: activations")
ax.axhline(80, color="k", linestyle="--", linewidth=1)
ax.text(2.45, 82, "80 GB", ha="right", fontsize=8)
ax.set_xticks(range(len(names)), ["CoCa-Base", "CoCa-Large", "CoCa (2.1B)"])
ax.set(title=f"memory per GPU, {per_gpu} pairs per GPU (estimate: blocks' activations in bf16)",
       xlabel="preset", ylabel="GB per GPU", ylim=(0, 100))  # fmt: skip
ax.legend(fontsize=7, ncol=3, loc="upper left")
ax.grid(axis="y", alpha=0.3)
fig.tight_layout()

# %% [markdown]
# With DDP, CoCa's model states alone take 34 GB per GPU; sharding over 8 GPUs divides them by
# 8, and checkpointing keeps 1/9.6 (base) to 1/13.2 (coca) of the activations.
#
# ### What `train.py` does
#
# `train.py` wraps the model in `DistributedDataParallel` under `torchrun`, or with `--fsdp`
# shards it with FSDP2 as torchtitan does (`coca_min/train/sharding.py`): it builds the model on
# the meta device, calls `torch.distributed.fsdp.fully_shard` on each block (one all-gather per
# block) and then on the whole model, moves it with `to_empty(device="cuda")` and initialises
# each shard with `CoCa.reset_parameters`; no GPU ever holds the whole model. In bf16 the
# blocks' weights are gathered in bf16 and their gradients reduced in fp32, the shards staying
# fp32. `--activation-checkpointing` wraps each block's call in `checkpoint` (Check 6). The
# learned scale `log_logit_scale` has shape (1,), not (): `fully_shard` cannot shard a
# 0-dimensional parameter. The contrastive loss needs nothing new: FSDP is still data parallel.

# %% [markdown]
# ## 3. Mixed precision
#
# ### What bf16 rounds away
#
# bfloat16 keeps float32's 8 exponent bits (the same range) but only 8 significant bits (7
# stored), against float32's 24. Between 64 and 128, bf16 numbers are $2^{6-7} = 0.5$ apart,
# float32 numbers $2^{6-23} \approx 7.6 \times 10^{-6}$. The contrastive logits $s\, x_i^\top y_j$
# lie anywhere in $[-100, 100]$ once the scale $s$ reaches its cap of 100. The figure shows the
# rounding error of every such logit against its bound: half the spacing of the numbers around it.
#
# **Check 7** (exact): no logit in $[-100, 100]$ is rounded by more than that bound.

# %%
hundred = torch.tensor(100.0)
spacing_bf16 = (torch.nextafter(hundred.bfloat16(), torch.tensor(200.0).bfloat16()) - hundred.bfloat16()).item()
spacing_fp32 = (torch.nextafter(hundred, torch.tensor(200.0)) - hundred).item()
print(f"spacing just above 100: bf16 {spacing_bf16}, float32 {spacing_fp32:.2e}; 100.0, 100.2, 100.3, 100.7 in bf16:",
      torch.tensor([100.0, 100.2, 100.3, 100.7]).bfloat16().tolist())  # fmt: skip

logit = torch.linspace(-100, 100, 20001)  # every logit a scale of 100 can give
half_spacing = 2.0 ** (torch.floor(torch.log2(logit.abs().clamp(min=1e-3))) - 8)  # 8 significant bits
fig, ax = plt.subplots(figsize=(7, 3.2))
ax.plot(logit, (logit.bfloat16().float() - logit).abs(), linewidth=0.3, label="|bf16(z) − z|, 20,001 logits")
ax.plot(logit, half_spacing, color="k", linewidth=1, label="half the bf16 spacing (the bound)")
ax.set(title="rounding error of a contrastive logit in bf16", xlabel="logit z = s·xᵀy (s = 100)",
       ylabel="absolute rounding error")  # fmt: skip
ax.legend(fontsize=8, loc="upper center")
ax.grid(alpha=0.3)
fig.tight_layout()
assert ((logit.bfloat16().float() - logit).abs() <= half_spacing).all()

# %% [markdown]
# ### Autocast
#
# `torch.autocast(device, dtype=torch.bfloat16)` runs matrix products (linear layers, attention)
# in bf16 and precision-sensitive operations, the cross-entropy among them, in float32; the
# weights stay float32. It works on the CPU. A coca_min block returns float32 under it: each
# residual adds a bf16 branch to the float32 stream.
#
# **Check 8**: under bf16 autocast the tiny ViT block's output is within 1e-2 of float32's
# (relative error, $\lVert \Delta \rVert / \lVert \text{out} \rVert$).

# %%
with torch.no_grad():
    out_fp32 = vit_block(tokens_in)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_bf16 = vit_block(tokens_in)
        inside = vit_block.mlp.fc_in(vit_block.ln_mlp(tokens_in))  # a linear layer's own output
rel_block = ((out_bf16.float() - out_fp32).norm() / out_fp32.norm()).item()
print(f"block output under autocast: {out_bf16.dtype} (a linear layer inside: {inside.dtype}); relative error {rel_block:.1e}")
assert rel_block < 1e-2

# %% [markdown]
# ### Why coca_min computes both losses in float32
#
# Under autocast the embeddings leave their projections in bf16. `contrastive_loss` converts
# them to float32 and turns autocast off for the logits (its comment: "near s = 100, bf16
# logits are 0.5 apart"), also when it gathers; `caption_loss` converts the logits
# to float32 before the cross-entropy. No second rounding is added to the embeddings' own.
#
# **Check 9**: on bf16 embeddings, `contrastive_loss` under bf16 autocast equals the float32
# computation on the same values (1e-6), and `caption_loss` on bf16 logits equals the one on
# their float32 values (1e-6). The all-bf16 versions are printed beside them.

# %%
x_bf16 = F.normalize(torch.randn(256, 128), dim=-1).bfloat16()  # as the projection gives them under autocast
y_bf16 = F.normalize(x_bf16.float() + 0.3 * torch.randn(256, 128), dim=-1).bfloat16()
s, labels = torch.tensor(100.0), torch.arange(256)
with torch.autocast("cpu", dtype=torch.bfloat16):
    con_library = contrastive_loss(x_bf16, y_bf16, s)
con_fp32 = contrastive_loss(x_bf16.float(), y_bf16.float(), s)
logits_fp32 = s * x_bf16.float() @ y_bf16.float().T  # (256, 256)
logits_bf16 = s.bfloat16() * x_bf16 @ y_bf16.T  # the same logits, rounded to bf16
con_bf16 = F.cross_entropy(logits_bf16, labels) + F.cross_entropy(logits_bf16.T, labels)  # all in bf16
print(f"contrastive: coca_min under autocast {con_library.item():.6f} ({con_library.dtype}), float32 {con_fp32.item():.6f}, "
      f"all-bf16 {con_bf16.item():.4f}; bf16 logits off by up to {(logits_bf16.float() - logits_fp32).abs().max():.3f}")  # fmt: skip

caption_logits, targets = (3 * torch.randn(8, 31, c.vocab_size)).bfloat16(), torch.randint(1, c.vocab_size, (8, 31))  # (B, T - 1, V)
cap_library, cap_fp32 = caption_loss(caption_logits, targets, 0), caption_loss(caption_logits.float(), targets, 0)
cap_bf16 = F.cross_entropy(caption_logits.flatten(0, 1), targets.flatten(), ignore_index=0)  # all in bf16
print(f"caption: coca_min {cap_library.item():.6f}, float32 {cap_fp32.item():.6f}, all-bf16 {cap_bf16.item():.4f}")
assert abs(con_library - con_fp32) < 1e-6 and abs(cap_library - cap_fp32) < 1e-6

# %% [markdown]
# The all-bf16 losses are close: the logits' rounding errors partly average out over the
# 2 × 256 × 256 terms. The harm is in the logits, where the gradient comes from: near ±100 a
# bf16 logit may be off by 0.25, which scales its softmax weight against an exactly stored
# neighbour's by up to $e^{0.25} \approx 1.28$, in just the comparison that matters, the
# positive against the closest negatives.
#
# ## 4. FLOPs and model FLOPs utilisation
#
# ### Training FLOPs per pair, from the config
#
# A $d_\text{in} \times d_\text{out}$ weight applied to $n$ tokens costs
# $n\, d_\text{in} d_\text{out}$ multiply-adds, $2 n\, d_\text{in} d_\text{out}$ FLOPs; attention adds
# $QK^\top$ and $AV$, $2 \cdot 2\, T_q T_k d$ FLOPs; embedding lookups cost none (the LM head does). The
# backward costs about twice the forward (the input's gradient and the weight's): training
# $\approx 3\times$ the forward. For one pair with a $T$-token text ($N$ image tokens, $S$
# caption queries, widths $D_v, D$, MLP widths $M_v, M$, embedding $E$, vocabulary $V$, patch
# $p$), a block of $n$ tokens, width $d$, MLP width $m$ costs ($4d^2$: the attention's four
# projections; $2dm$: the MLP)
#
# $$\text{block}(n, d, m) = 2n\,(4d^2 + 2dm) + 4n^2 d$$
#
# | part | forward FLOPs |
# |---|---|
# | image encoder | $2N \cdot 3p^2 D_v + L_v\, \text{block}(N, D_v, M_v)$ |
# | caption pooler | $2S \cdot 2D^2 + 2N \cdot 2 D_v D + 4 S N D$ |
# | contrastive pooler (cascade: reads the $S$ caption tokens), projection | $2 \cdot 2D^2 + 2S \cdot 2D^2 + 4SD + 2DE$ |
# | unimodal half ($T + 1$ tokens, [CLS]), projection | $n_\text{uni}\, \text{block}(T+1, D, M) + 2DE$ |
# | multimodal half ($T - 1$ tokens), LM head | $n_\text{multi}\big[\text{block}(T-1, D, M) + 2(T-1) \cdot 2D^2 + 2S \cdot 2D^2 + 4(T-1) S D\big] + 2(T-1) D V$ |
#
# In cross-attention the query and output projections see the $T - 1$ text tokens, the keys
# and values the $S$ caption tokens.

# %%
def forward_flops(c, T=None):
    """Forward FLOPs of one image-text pair, by part (2 FLOPs per multiply-add)."""
    T = c.context_length if T is None else T
    N, Dv, D, S, E, V = c.n_image_tokens, c.vision_width, c.text_width, c.n_caption_queries, c.embed_dim, c.vocab_size
    block = lambda n, d, m: 2 * n * (4 * d * d + 2 * d * m) + 4 * n * n * d  # projections and MLP; QKᵀ and AV
    # what the contrastive pooler reads: the caption pooler's S outputs, or the ViT's N tokens
    n_source, source = (S, D) if c.pooler_mode == "cascade" else (N, Dv)
    return {
        "image encoder": 2 * N * 3 * c.patch_size**2 * Dv + c.vision_layers * block(N, Dv, c.vision_mlp),
        "poolers": (2 * S * 2 * D * D + 2 * N * 2 * Dv * D + 4 * S * N * D  # caption pooler
                    + 2 * 2 * D * D + 2 * n_source * 2 * source * D + 4 * n_source * D + 2 * D * E),  # contrastive, projection
        "unimodal": c.n_uni * block(T + 1, D, c.text_mlp) + 2 * D * E,
        "multimodal": c.n_multi * (block(T - 1, D, c.text_mlp) + 2 * (T - 1) * 2 * D * D + 2 * S * 2 * D * D
                                   + 4 * (T - 1) * S * D) + 2 * (T - 1) * D * V,
    }  # fmt: skip


print({part: f"{value / 1e6:.2f} MFLOP" for part, value in forward_flops(PRESETS["tiny"]).items()}, "per pair, tiny")

# %% [markdown]
# **Check** (exact): our formula is `coca_min.model.flops.forward_flops`, the one `bench.py` divides
# by for its MFU, part by part, for every preset and both pooler modes.

# %%
for name, preset in PRESETS.items():
    for mode in ["cascade", "parallel"]:
        c_mode = dataclasses.replace(preset, pooler_mode=mode)
        assert forward_flops(c_mode) == coca_min.model.flops.forward_flops(c_mode), (name, mode)
print(f"forward_flops equals coca_min.model.flops.forward_flops for {len(PRESETS)} presets x 2 pooler modes")

# %% [markdown]
# `torch.utils.flop_counter.FlopCounterMode` counts the FLOPs of the matrix products that run:
# here the tiny model on 2 pairs of 32-token texts, attention on the plain ("math") kernel,
# whose products it sees (not the CPU's fused kernel).
#
# **Check 10** (exact, they are integers): the formula gives the counted forward FLOPs per pair.
# **Check 11** (exact): the counted forward and backward of the loss are 3 forwards, less the
# patch embedding's input gradient (pixels need none: $2N \cdot 3p^2 D_v$ per pair), plus the
# contrastive logits ($2B^2E$ for a batch of $B$, once forward and twice backward).

# %%
tiny_parts = forward_flops(PRESETS["tiny"])
model = CoCa(PRESETS["tiny"])
batch = 2
images = torch.randn(batch, 3, 48, 48)
tokens = torch.randint(3, c.vocab_size, (batch, c.context_length))  # full-length texts: no padding
counted_forward = flops(lambda: model(images, tokens))  # FLOPs of the whole batch
counted_training = flops(lambda: coca_loss(model(images, tokens), tokens, 0)["loss"].backward())
pixels_gradient = batch * 2 * c.n_image_tokens * 3 * c.patch_size**2 * c.vision_width  # never computed
loss_logits = 2 * batch * batch * c.embed_dim  # x @ yᵀ, (B, E) @ (E, B)
print(f"tiny forward per pair: formula {sum(tiny_parts.values()):,}, counted {counted_forward // batch:,}")
print(f"forward + backward per pair: counted {counted_training // batch:,} = {counted_training / counted_forward:.4f} forwards; "
      f"3 forwards - pixel gradient + loss logits = {(3 * counted_forward - pixels_gradient + 3 * loss_logits) // batch:,}")  # fmt: skip
assert counted_forward == batch * sum(tiny_parts.values())
assert counted_training == 3 * counted_forward - pixels_gradient + 3 * loss_logits

# %% [markdown]
# Left out of both: LayerNorms, GELUs, softmaxes, residual adds (a few operations per element),
# the optimizer step (per step, not per pair) and the contrastive logits of a large global
# batch ($2NE$ per pair and direction; printed below for the paper's). Causal attention is
# counted in full, $T^2$, as a kernel that does not skip the masked half runs it. Checkpointing's
# recomputation is not model work and is not counted either.
#
# ### The presets
#
# Parameters, FLOPs per pair from the formula (full-context texts: 32 tokens for tiny, 64 for
# the others), and the image encoder's share of them.

# %%
print(f"{'preset':7s} {'parameters':>11s} {'forward/pair':>13s} {'training/pair':>14s} {'image encoder':>14s}")
training_flops = {}
for name, config in PRESETS.items():
    parts = forward_flops(config)
    training_flops[name] = 3 * sum(parts.values())
    print(f"{name:7s} {n_params[name] / 1e6:10.1f}M {sum(parts.values()) / 1e9:8.2f} GFLOP {training_flops[name] / 1e9:9.1f} GFLOP "
          f"{parts['image encoder'] / sum(parts.values()):13.0%}")  # fmt: skip
logits_per_pair = 3 * 2 * 2 * 65536 * PRESETS["base"].embed_dim  # (1, E) @ (E, N) both ways; x 3: and backward
print(f"base, the contrastive logits at the paper's batch of 65,536: {logits_per_pair / 1e9:.2f} GFLOP per pair "
      f"({logits_per_pair / training_flops['base']:.2%} of the model's)")  # fmt: skip

# %% [markdown]
# In the paper's sizes most of the work is the image encoder's: 256 image tokens against 64 text
# tokens. The tiny model is the other way round: 36 image tokens, 33 + 31 decoder positions.
#
# ### Model FLOPs utilisation
#
# MFU is the share of the accelerator's peak that the model's own FLOPs use:
#
# $$\text{MFU} = \frac{\text{pairs per second} \times \text{training FLOPs per pair}}{\text{peak FLOP/s}}.$$
#
# A worked example: CoCa-Base at 288 px on one H100 (dense bf16 peak 989 TFLOP/s). The
# project's issue on scaling up (its `bench.py` targets) quotes 1,011 to 1,020 images per
# second for the open implementations at batch 128 with `torch.compile`, and 413 eager:
# **figures measured elsewhere, not here**, with texts of unknown length (we assume 64 tokens).

# %%
peak = 989e12  # H100 SXM, dense bf16, FLOP/s
per_pair = training_flops["base"]
for label, rate in [("torch.compile, reported", 1011), ("torch.compile, reported", 1020), ("eager, reported", 413)]:
    achieved = rate * per_pair  # FLOP/s of model work
    print(f"{label:24s} {rate:5d} pairs/s x {per_pair / 1e9:.1f} GFLOP = {achieved / 1e12:5.1f} TFLOP/s: MFU {achieved / peak:.1%}")
target = 0.40 * peak / per_pair
print(f"a 40% MFU target: {target:,.0f} pairs/s ({target / 1011:.2f}x the compiled figure), "
      f"{target / 128:.1f} steps/s of 128 pairs")  # fmt: skip

# %% [markdown]
# ## 5. Launching with `torchrun`
#
# `torchrun` starts one process per GPU and sets each one's `RANK`, `LOCAL_RANK` and
# `WORLD_SIZE`. `train.py` (`coca_min.train.distributed.join_process_group`) then joins the process group with
# **NCCL** on CUDA and **gloo** otherwise, wraps the model in DDP and gives each rank its shard
# of the data (a `DistributedSampler`). Only rank 0 evaluates and writes checkpoints.
#
# **One machine, 8 GPUs**:
#
# ```bash
# torchrun --standalone --nproc-per-node=8 train.py --size base --data coco.json --images train2017/ \
#     --batch-size 1024 --steps 100000
# ```
#
# **Two machines, 8 GPUs each**: the same command on both, with the address of one of them
# (HOST) as the rendezvous point; the c10d rendezvous hands out the ranks.
#
# ```bash
# torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29400 --rdzv-id coca-base \
#     train.py --size base --data coco.json --images train2017/ --batch-size 1024 --steps 100000
# ```
#
# (With the *static* rendezvous instead, `--node-rank 0` on HOST and `--node-rank 1` on the other
# say which machine is which.) Both machines need the data at the same paths. On CPUs, the same
# commands with `--device cpu` run gloo, each process with cores ÷ processes threads.
#
# **A known limitation: `--resume` on several machines needs `--out` on a filesystem that every
# machine sees.** Only rank 0 writes `OUT/ckpt.pt`, and every process reads it when a run is
# resumed (`--resume`, `--resume auto`).
#
# ### What `--batch-size` means
#
# `--batch-size` is the global batch of one optimizer step ("pairs per optimizer step, over all
# processes", says `--help`): each process runs `batch_size ÷ (processes × --accum)` pairs per
# micro-batch, and the contrastive loss sees all of them (section 1).
#
# **Check 12**: told that it is one of 16 processes (the variables `torchrun` sets),
# `train.py --batch-size 1000` stops at its argument check, before importing torch, with exit
# status 2 (1000 is not a multiple of 16).

# %%
env = {**os.environ, "RANK": "0", "WORLD_SIZE": "16"}  # what torchrun would set; nothing is launched
refused = subprocess.run([sys.executable, str(ROOT / "train.py"), "--batch-size", "1000"], env=env,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
print(refused.stderr.strip(), f"(exit status {refused.returncode})")
assert refused.returncode == 2
print("--batch-size 1024, pairs per micro-batch:", "; ".join(f"{n} processes, --accum {a}: {1024 // (n * a)}"
                                                       for n, a in [(1, 1), (8, 1), (16, 1), (16, 2)]))  # as trainer.py computes it

# %% [markdown]
# So 1, 8 or 16 GPUs train the same problem: the same pairs per step, `--steps` and learning-rate
# schedule (warm-up over `--warmup` steps, cosine to `--min-lr-ratio` × `--lr`); more GPUs make a
# step faster. The learning rate is not rescaled: a larger `--batch-size` needs its own `--lr`
# and `--warmup`. For $n$ epochs, `--steps` = $n$ × pairs ÷ `--batch-size`.
#
# ## Summary
# - The global-batch contrastive loss: local rows against every rank's columns, labels offset by
#   $rB$, a gather whose backward sums the gradients over ranks and keeps its slice (the
#   single-batch loss and gradients to 1e-12). A gather without gradient, or a backward that only
#   slices, keeps the loss right and the gradients wrong; local labels break both.
# - 16 bytes of model states per parameter: DDP replicates them, FSDP divides them by the GPUs.
#   A block saves $8D + 2M + 4 + h$ elements per token; checkpointing keeps $D$ and recomputes.
#   `train.py` does DDP.
# - bf16 numbers near 100 are 0.5 apart; coca_min computes both losses in float32.
# - Forward FLOPs follow exactly from the config; training is about 3 forwards, 258.5 GFLOP per
#   pair for CoCa-Base, so 40% MFU on an H100 is about 1,530 pairs per second.
# - `torchrun --standalone` on one machine, a c10d rendezvous on several (`--out` shared, to
#   resume); `--batch-size` is global.
#
# ## Exercises
# 1. Split the same 32 pairs unevenly: rank 0 takes 2 and the other three 10 each (change
#    `simulate`'s slicing to those sizes). Is the average of the four rank losses still the
#    single-batch loss? What weight per rank would make it so?
# 2. With `activations` and `n_params`, find the most pairs per GPU that fit CoCa (2.1B) in
#    80 GB with DDP, FSDP over 8 GPUs, and FSDP with checkpointing.
# 3. With 16-token texts (`forward_flops(config, T=16)`), what MFU would the reported 1,011
#    images/s of CoCa-Base be?
#
# **Coursework.** This lesson teaches the graded exercise `all_gather_backward`
# (`AllGatherWithGrad.backward` in `coca_min/train/distributed.py`, 10 points, about 30 min). In the
# student version (`python -m coca_min.coursework make-student`, see
# `coca_min/coursework/README.md`) its code is blanked; write it between the `# BEGIN EXERCISE`
# and `# END EXERCISE` markers, and run the tests named in `coca_min/coursework/exercises.py`.
