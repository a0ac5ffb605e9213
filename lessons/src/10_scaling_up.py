# %% [markdown]
# # Lesson 10 — Scaling up
#
# **What you will learn**
# - how the contrastive loss sees the *global* batch when the batch is split over many GPUs:
#   an all-gather whose backward sums the gradient over ranks and keeps this rank's slice,
#   checked by simulating four ranks in one process, and the two traps that give wrong
#   gradients;
# - where a GPU's memory goes (weights, gradients, AdamW's moments, activations), what data
#   parallel, sharded (FSDP) training and activation checkpointing change;
# - mixed precision: what bf16 rounds away, and why coca_min computes both losses in float32;
# - the training FLOPs of the paper's models from their configs, and model FLOPs utilisation;
# - how to launch this project's `train.py` with `torchrun` on one machine and on several.
#
# **Paper**: §4.1 (pretraining: batch 65,536 on 2,048 TPUv4 chips) and Table 1 (the sizes).
#
# **Assumes**: lesson 06 (the contrastive loss) and lesson 07 (the model and its training loop).

# %% [markdown]
# ## Set-up
# Imports, a fixed seed and thread count, the versions. Nothing here needs a GPU: the ranks
# of section 1 are simulated in this one process, and the big models of sections 2 and 4 are
# built on PyTorch's *meta* device (shapes, no memory).

# %%
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
import torch.distributed.run
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import checkpoint, set_checkpoint_early_stop
from torch.utils.flop_counter import FlopCounterMode

import coca_min
from coca_min import PRESETS, CoCa, count_parameters
from coca_min import distributed as D
from coca_min.layers import Block
from coca_min.losses import caption_loss, coca_loss, contrastive_loss

torch.manual_seed(0)
torch.set_num_threads(2)
print("torch", torch.__version__)
ROOT = Path(coca_min.__file__).resolve().parents[1]  # the repository, from any working directory

# %% [markdown]
# ## 1. The contrastive loss over the global batch
#
# The paper trains with a batch of 65,536 image–text pairs. The contrastive loss (eq. 1,
# lesson 06) compares every image of the batch with every text: the more pairs, the more
# negatives each image is told apart from. No accelerator holds 65,536 pairs, so the batch is
# split over $W$ processes ("ranks"), $B = N / W$ pairs each, and every rank runs the model on
# its own $B$ pairs.
#
# For the loss to be the one of the whole batch, rank $r$ needs the embeddings of *all* $N$
# pairs. It keeps its own rows $x_r, y_r \in \mathbb{R}^{B \times E}$ as queries and gathers
# every rank's rows as columns $X, Y \in \mathbb{R}^{N \times E}$ (coca_min's
# `global_contrastive_loss`):
#
# $$L_r = \text{CE}\big(s\, x_r Y^\top, \ \ell_r\big) + \text{CE}\big(s\, y_r X^\top, \ \ell_r\big),
# \qquad \ell_r = (0, 1, \dots, B-1) + r B,$$
#
# each cross-entropy a mean over rank $r$'s $B$ rows; the labels $\ell_r$ point at rank $r$'s
# own pairs among the $N$ columns. The average over ranks is the loss of the whole batch:
# $\frac{1}{W}\sum_r L_r = L_\text{con}$, because the $W$ rank means of $B$ rows are one mean
# of $N$ rows.
#
# We simulate $W = 4$ ranks in this process. First the reference: coca_min's single-process
# `contrastive_loss` on all $N = 32$ pairs, in float64 so that the comparisons below can be
# tight.

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
# `coca_min.distributed.AllGatherWithGrad` is an autograd function:
#
# - **forward**: every rank receives the rows of every rank, concatenated in rank order:
#   $X = [x_0; x_1; \dots; x_{W-1}]$, shape $(N, E)$;
# - **backward**: on rank $k$, autograd hands it $\partial L_k / \partial X$, shape $(N, E)$:
#   what rank $k$'s loss sends to *every* row. Rank $r$'s rows were used by all $W$ losses, so
#   their gradient is the sum over ranks, $\sum_k \partial L_k / \partial X$ (an `all_reduce`),
#   of which rank $r$ keeps its own slice $[rB, (r+1)B)$.
#
# Rank $r$'s rows also reach its loss directly, as the queries $x_r$, $y_r$. Last, DDP
# averages the parameter gradients over the $W$ replicas: since each rank's encoder backward is
# linear in the gradient of its rows, that is the same as dividing the rows' gradients by $W$.
#
# The function below does all of that in one process. `gather` picks the gather's backward:
# the right one, or one of the traps of the next cells.

# %%
def simulate(gather="with_grad", global_labels=True):
    """W ranks in one process -> (mean of the W local losses, the gradients of the image rows
    (N, E), of the text rows (N, E) and of log s that DDP leaves in every replica)."""
    xs = [image_rows[r * B : (r + 1) * B].clone().requires_grad_() for r in range(W)]  # rank r's encoder output
    ys = [text_rows[r * B : (r + 1) * B].clone().requires_grad_() for r in range(W)]
    log_ss = [log_scale.clone().requires_grad_() for _ in range(W)]  # each rank's replica of the parameter
    losses, own, sent = [], [], []
    for r in range(W):
        # the gather's forward: all ranks' rows, as a tensor that rank r's loss sends gradient to
        all_x = torch.cat([p.detach() for p in xs]).requires_grad_()  # (N, E) = X
        all_y = torch.cat([p.detach() for p in ys]).requires_grad_()  # (N, E) = Y
        labels = torch.arange(B) + (r * B if global_labels else 0)  # ℓ_r: my pairs' columns
        s = log_ss[r].exp()
        loss = F.cross_entropy(s * xs[r] @ all_y.T, labels) + F.cross_entropy(s * ys[r] @ all_x.T, labels)  # L_r, (B, N) logits
        g_all_x, g_all_y, g_x, g_y, g_log_s = torch.autograd.grad(loss, [all_x, all_y, xs[r], ys[r], log_ss[r]])
        losses.append(loss.detach())
        own.append((g_x, g_y, g_log_s))  # through rank r's own rows as queries, and through s
        sent.append((g_all_x, g_all_y))  # ∂L_r/∂X, ∂L_r/∂Y: to every rank's rows
    summed_x, summed_y = sum(g for g, _ in sent), sum(g for _, g in sent)  # the all_reduce: Σ_k ∂L_k/∂X
    grad_x, grad_y = [], []
    for r in range(W):
        mine = slice(r * B, (r + 1) * B)
        if gather == "with_grad":  # AllGatherWithGrad: all ranks' gradients for my rows
            through_gather = summed_x[mine], summed_y[mine]
        elif gather == "own_rows":  # no all_reduce: only my own loss's gradient for my rows
            through_gather = sent[r][0][mine], sent[r][1][mine]
        else:  # "no_grad": the gathered rows are a constant, as dist.all_gather returns them
            through_gather = 0, 0
        grad_x.append(own[r][0] + through_gather[0])
        grad_y.append(own[r][1] + through_gather[1])
    # DDP: the average over the W replicas
    return [torch.stack(losses).mean(), torch.cat(grad_x) / W, torch.cat(grad_y) / W, sum(g for *_, g in own) / W]


def errors(result):  # the largest difference from the single-batch reference, per quantity
    return [(a - b).abs().max().item() for a, b in zip(result, reference)]


simulated = simulate()
print("mean of the 4 rank losses", f"{simulated[0].item():.6f}")
print("max |difference| from the single batch (loss, image rows, text rows, log s):",
      ", ".join(f"{e:.1e}" for e in errors(simulated)))  # fmt: skip

# %% [markdown]
# **Check 1**: the simulated ranks give the single-batch loss and the single-batch gradients of
# the image rows, the text rows and $\log s$ (float64, 1e-12).

# %%
assert all(e < 1e-12 for e in errors(simulated))
print("4 ranks with the gather's summed backward = one batch of 32 pairs")

# %% [markdown]
# ### Trap (a): gathering without gradient
#
# `torch.distributed.all_gather` fills tensors that carry no gradient. Used as is, each rank's
# columns are constants: its rows get gradient only through themselves as queries, and every
# other rank's loss, which used them as negatives, sends them nothing (`"no_grad"`). Putting
# the rank's own rows back into the gathered matrix with their gradient (`"own_rows"`) is closer
# but still wrong: the gradients from the other $W-1$ ranks' losses are still lost; only the
# all_reduce in the backward brings them. In both traps the **loss is right**, so nothing in
# the logged loss shows the error.
#
# **Check 2**: both give the single-batch loss (1e-12) and wrong gradients: the relative error
# $\lVert g - g_\text{ref} \rVert / \lVert g_\text{ref} \rVert$ of the image rows' gradient is
# above 0.1.

# %%
def relative_error(g, g_ref):
    return ((g - g_ref).norm() / g_ref.norm()).item()


for gather in ["no_grad", "own_rows"]:
    wrong = simulate(gather)
    rel = relative_error(wrong[1], reference[1])
    print(f"{gather:8s}: loss error {errors(wrong)[0]:.1e}; image-row gradient: relative error {rel:.2f}, "
          f"norm {wrong[1].norm() / reference[1].norm():.2f} x the right one")  # fmt: skip
    assert errors(wrong)[0] < 1e-12 and rel > 0.1

# %% [markdown]
# ### Trap (b): labels from the local batch
#
# Rank $r$'s logits have $N$ columns, and its pairs sit at columns $rB \dots (r+1)B - 1$. Labels
# made from the local batch, `arange(B)`, point every rank but rank 0 at rank 0's texts.
#
# **Check 3**: with local labels the loss itself is wrong (by more than 1) and so are the
# gradients (relative error above 0.1).

# %%
wrong = simulate(global_labels=False)
rel = relative_error(wrong[1], reference[1])
print(f"local labels: loss {wrong[0].item():.4f} instead of {reference[0].item():.4f}; "
      f"image-row gradient: relative error {rel:.2f}")  # fmt: skip
assert errors(wrong)[0] > 1 and rel > 0.1

# %% [markdown]
# ### The real code path
#
# coca_min's `global_contrastive_loss` runs `AllGatherWithGrad` through `torch.distributed`.
# One process can join a process group of its own (world size 1, the CPU's *gloo* backend, a
# rendezvous through a file): that does not test the summing (there is only one rank), but it
# runs the real functions, labels and collectives end to end. The multi-process test is
# `tests/test_distributed.py`, which spawns 2 and 4 gloo processes and compares the loss and
# every parameter's gradient with one process.
#
# **Check 4**: in a world of one, `global_contrastive_loss` equals `contrastive_loss`, and so do
# its gradients (float64, 1e-12).

# %%
with tempfile.TemporaryDirectory() as folder:  # a file store for the rendezvous: no network port to collide on
    store = Path(folder) / "rendezvous"
    dist.init_process_group("gloo", rank=0, world_size=1, init_method=f"file://{store}", timeout=timedelta(seconds=60))
    try:
        print(f"process group: backend {dist.get_backend()}, world size {D.world_size()}, rank {D.rank()}, "
              f"collectives on {D.device()}")  # fmt: skip
        x, y, t = (v.clone().requires_grad_() for v in (image_rows, text_rows, log_scale))
        loss = D.global_contrastive_loss(x, y, t.exp())  # AllGatherWithGrad, rank offsets, autocast off
        library = [loss.detach(), *torch.autograd.grad(loss, [x, y, t])]
    finally:
        dist.destroy_process_group()
assert all((a - b).abs().max() < 1e-12 for a, b in zip(library, reference))
print(f"global_contrastive_loss {library[0].item():.6f} = contrastive_loss {reference[0].item():.6f}; "
      f"process group closed: {not D.is_distributed()}")  # fmt: skip

# %% [markdown]
# The caption loss has its own global-batch detail (lesson 06's token mean): each rank's sum
# of token losses is divided by the number of real tokens of the *whole* step, all-reduced
# (`global_coca_loss`), not by its own count.
#
# ## 2. Memory per GPU: data parallel, sharded, checkpointed
#
# ### Model states
#
# `train.py` keeps the parameters in float32 and computes in bf16 under autocast (section 3).
# Per parameter, every GPU then holds
#
# | what | bytes |
# |---|---|
# | the float32 weight | 4 |
# | its float32 gradient | 4 |
# | AdamW's two moments, $m$ and $v$, float32 | 8 |
# | **model states** | **16** |
#
# **Data parallel** (DDP, what `train.py` does today under `torchrun`) keeps a full copy of all
# of it on every GPU, and all-reduces the gradients after each backward. (DDP's gradient
# buckets add up to one more gradient-sized buffer; autocast keeps bf16 copies of the weights
# for the length of a forward.)
#
# **Sharded data parallel** (FSDP, ZeRO stage 3) splits every parameter, gradient and optimizer
# moment into $W$ shards, one per GPU: $16P / W$ bytes each. Before a layer runs, its full
# weights are all-gathered (in bf16 with a mixed-precision policy) and freed after; in the
# backward, the gradients are reduce-scattered, so that each GPU keeps only its shard's, and the
# optimizer steps only its shard. Its price is communication: the weights travel in the
# forward and again in the backward.

# %% [markdown]
# ### Activations, counted
#
# The other half is what autograd saves in the forward for the backward: the *activations*.
# `torch.autograd.graph.saved_tensors_hooks` lets us see every tensor it saves. We count the
# elements of the distinct tensors saved, leaving out the parameters (saved by reference, not
# new memory), for coca_min's `Block` (lesson 03) at the tiny ViT's width, and compare with a
# formula per token. For a block of width $D$, MLP width $M$, $h$ heads:
#
# - self-attention: the block input and its LayerNorm's output ($2D$), the mean and inverse
#   standard deviation (2), $q, k, v$ and the attention output ($4D$), the log-sum-exp of the
#   fused attention kernel ($h$);
# - MLP: the residual stream and its LayerNorm's output ($2D$), two statistics (2), the first
#   linear's output and the GELU's ($2M$).
#
# That is $8D + 2M + 4 + h$ per token. A multimodal block adds cross-attention: $4D + 2 + h$ per
# text token, and per pair the context ($S \times D$, the caption pooler's $S$ tokens) and its keys
# and values ($2SD$).

# %%
def saved_elements(run, parameters):
    """Run `run()` and count the elements of the distinct tensors autograd saves for backward,
    parameters left out. -> (its output, the count)."""
    skip = {p.untyped_storage().data_ptr() for p in parameters}
    found = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in skip:
            found[storage.data_ptr()] = storage.nbytes() // tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = run()
    return out, sum(found.values())


c = PRESETS["tiny"]
Dv, Mv, hv, Nv, pairs = c.vision_width, c.vision_mlp, c.vision_heads, c.n_image_tokens, 2
vit_block = Block(Dv, hv, Mv)  # one block of the tiny image encoder
tokens_in = torch.randn(pairs, Nv, Dv, requires_grad=True)  # (2, 36, 64)
_, vit_saved = saved_elements(lambda: vit_block(tokens_in), vit_block.parameters())
print(f"ViT block, {pairs} x {Nv} tokens of width {Dv}: {vit_saved:,} elements saved; "
      f"formula {pairs * Nv * (8 * Dv + 2 * Mv + 4 + hv):,}")  # fmt: skip

Dt, Mt, ht, T, S = c.text_width, c.text_mlp, c.text_heads, 10, c.n_caption_queries
text_block = Block(Dt, ht, Mt, cross_attention=True)  # a multimodal block of the tiny decoder
text_in, context = torch.randn(pairs, T, Dt, requires_grad=True), torch.randn(pairs, S, Dt, requires_grad=True)
_, text_saved = saved_elements(lambda: text_block(text_in, context=context), text_block.parameters())
text_formula = pairs * (T * (12 * Dt + 2 * Mt + 6 + 2 * ht) + 3 * S * Dt)
print(f"multimodal block, {pairs} x {T} tokens, {S} context tokens: {text_saved:,} elements saved; formula {text_formula:,}")

# %% [markdown]
# **Check 5** (exact, a count of elements): the formulas give the elements saved by coca_min's
# blocks. (On a CPU, a causal mask is also saved, as floats: $T^2$ per pair; the multimodal
# block was measured without one, and the table below leaves masks out.)

# %%
assert vit_saved == pairs * Nv * (8 * Dv + 2 * Mv + 4 + hv)
assert text_saved == text_formula
print("saved activations per token: 8D + 2M + 4 + h (+ 4D + 2 + h for cross-attention)")

# %% [markdown]
# ### Activation checkpointing
#
# `torch.utils.checkpoint.checkpoint(block, x)` saves only the block's input. In the backward
# it runs the block's forward again to rebuild what it needs, then back-propagates through
# it: memory for compute. Per block, the saved activations go from $(8D + 2M + 4 + h)$ to $D$
# elements per token.
#
# **Check 6**: on the tiny ViT block, checkpointing gives the same gradients (for the input and
# every parameter, 1e-6); it saves exactly the input's elements; and the FLOPs of forward and
# backward (counted by `FlopCounterMode`, section 4) grow from 3 to 4 forwards, less the
# block's last linear layer: the default non-reentrant checkpoint stops recomputing as soon as
# it has every tensor the backward needs, and nothing needs that layer's output (exact, in
# FLOPs; with early stopping off, exactly 4).

# %%
def input_and_parameter_grads(run):
    vit_block.zero_grad()
    x = tokens_in.detach().clone().requires_grad_()
    run(x).square().sum().backward()
    return [x.grad, *(p.grad.clone() for p in vit_block.parameters())]


plain_grads = input_and_parameter_grads(vit_block)
checkpointed_grads = input_and_parameter_grads(lambda x: checkpoint(vit_block, x, use_reentrant=False))
assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain_grads, checkpointed_grads))

_, checkpointed_saved = saved_elements(lambda: checkpoint(vit_block, tokens_in, use_reentrant=False), vit_block.parameters())
assert checkpointed_saved == tokens_in.numel()


def flops(run):
    with sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter:  # the plain kernel: all matmuls visible
        run()
    return counter.get_total_flops()


forward = flops(lambda: vit_block(tokens_in))
plain = flops(lambda: vit_block(tokens_in).sum().backward())
checkpointed = flops(lambda: checkpoint(vit_block, tokens_in, use_reentrant=False).sum().backward())
with set_checkpoint_early_stop(False):
    no_early_stop = flops(lambda: checkpoint(vit_block, tokens_in, use_reentrant=False).sum().backward())
last_linear = 2 * pairs * Nv * Mv * Dv  # fc_out: (36 x 256) @ (256 x 64) per pair, 2 FLOPs per multiply-add
assert plain == 3 * forward and checkpointed == 4 * forward - last_linear and no_early_stop == 4 * forward
print(f"saved: {vit_saved:,} -> {checkpointed_saved:,} elements ({vit_saved / checkpointed_saved:.1f}x fewer)")
print(f"FLOPs of forward + backward: {plain / forward:.2f} -> {checkpointed / forward:.2f} forwards "
      f"(+{checkpointed / plain - 1:.0%}); gradients equal")  # fmt: skip

# %% [markdown]
# ### The presets, per GPU
#
# The formulas, applied to every block of a preset (the poolers, the patch embedding, the masks
# and the logits left out), give the activations of one pair, here in bf16 (2 bytes; an
# estimate: under autocast some saved tensors, such as the residual stream, stay float32). The
# text is the full context (64 tokens for the paper's sizes): the unimodal half runs $T + 1$
# tokens ([CLS] appended), the multimodal half $T - 1$ (teacher forcing). With checkpointing
# every block keeps only its input, plus one block's full activations while it is recomputed.
#
# The parameter counts come from coca_min's `count_parameters`, on models built on the meta
# device.

# %%
with torch.device("meta"):  # shapes only: CoCa-2.1B needs no memory here
    n_params = {name: count_parameters(CoCa(config))["total"] for name, config in PRESETS.items()}


def activations(c, T=None):
    """Elements saved per pair by the blocks -> (without, with activation checkpointing)."""
    T = c.context_length if T is None else T
    N, Dv, D, S = c.n_image_tokens, c.vision_width, c.text_width, c.n_caption_queries
    block = lambda tokens, d, m, h: tokens * (8 * d + 2 * m + 4 + h)  # Check 5's formula
    vit = c.vision_layers * block(N, Dv, c.vision_mlp, c.vision_heads)
    uni = c.n_uni * block(T + 1, D, c.text_mlp, c.text_heads)
    multi = c.n_multi * ((T - 1) * (12 * D + 2 * c.text_mlp + 6 + 2 * c.text_heads) + 2 * S * D) + S * D  # context once
    inputs = c.vision_layers * N * Dv + c.n_uni * (T + 1) * D + c.n_multi * (T - 1) * D  # every block's input
    one_block = max(block(N, Dv, c.vision_mlp, c.vision_heads), (T - 1) * (12 * D + 2 * c.text_mlp + 6 + 2 * c.text_heads))
    return vit + uni + multi, inputs + one_block


GB, MB, BF16 = 1e9, 1e6, 2
print(f"{'preset':7s} {'parameters':>11s} {'states (DDP)':>13s} {'FSDP over 8':>12s} {'activations/pair':>17s} {'checkpointed':>13s}")
for name, config in PRESETS.items():
    full, kept = activations(config)
    print(f"{name:7s} {n_params[name] / 1e6:10.1f}M {16 * n_params[name] / GB:10.2f} GB {16 * n_params[name] / 8 / GB:9.2f} GB "
          f"{full * BF16 / MB:13.1f} MB {kept * BF16 / MB:10.1f} MB")  # fmt: skip
base = PRESETS["base"]
print(f"left out, e.g. for base: the logits, {(base.context_length - 1) * base.vocab_size / 1e6:.1f}M elements per pair "
      "(bf16, and again float32 in the loss)")  # fmt: skip

# %% [markdown]
# The paper's batch, 65,536 pairs over 2,048 chips, is 32 pairs per chip. The figure puts the
# table together for 32 pairs per GPU and 8 GPUs, with a line at 80 GB for scale. With DDP,
# CoCa's 2.1B parameters need 34 GB per GPU of model states before a single activation;
# sharding divides those by 8, and checkpointing divides the activations by the factors
# printed below.

# %%
per_gpu, world = 32, 8
names = ["base", "large", "coca"]
setups = {"DDP": (1, 0), "FSDP (8 GPUs)": (world, 0), "FSDP + checkpointing": (world, 1)}
fig, ax = plt.subplots(figsize=(8, 3.8))
width = 0.26
for i, (label, (shards, ckpt)) in enumerate(setups.items()):
    states = [16 * n_params[n] / shards / GB for n in names]
    acts = [per_gpu * activations(PRESETS[n])[ckpt] * BF16 / GB for n in names]
    where = [k + (i - 1) * width for k in range(len(names))]
    ax.bar(where, states, width, color=f"C{i}", label=f"{label}: model states")
    ax.bar(where, acts, width, bottom=states, color=f"C{i}", alpha=0.45, hatch="//", label=f"{label}: activations")
ax.axhline(80, color="k", linestyle="--", linewidth=1)
ax.text(2.45, 82, "80 GB", ha="right", fontsize=8)
ax.set_xticks(range(len(names)), [f"CoCa-{n.capitalize()}" if n != "coca" else "CoCa (2.1B)" for n in names])
ax.set(title=f"memory per GPU, {per_gpu} pairs per GPU (estimate: blocks' activations in bf16)",
       xlabel="preset", ylabel="GB per GPU")  # fmt: skip
ax.legend(fontsize=7, ncol=3, loc="upper left")
ax.set_ylim(0, 100)
ax.grid(axis="y", alpha=0.3)
fig.tight_layout()
for n in names:
    full, kept = activations(PRESETS[n])
    totals = [(16 * n_params[n] / shards + per_gpu * (full, kept)[ckpt] * BF16) / GB for shards, ckpt in setups.values()]
    print(f"{n:5s}: " + ", ".join(f"{label} {total:.1f} GB" for label, total in zip(setups, totals))
          + f"; checkpointing keeps 1/{full / kept:.1f} of the activations")  # fmt: skip

# %% [markdown]
# ### What `train.py` does, and the path to sharding
#
# Today `train.py` wraps the model in `DistributedDataParallel` when it runs under `torchrun`,
# and nothing else: it has no FSDP option and no activation-checkpointing option. The path for
# both is PyTorch's own (FSDP2, `torch.distributed.fsdp.fully_shard`), not code in this
# lesson; a sketch of what it would take:
#
# ```python
# from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
#
# with torch.device("meta"):                     # no full copy of the weights anywhere
#     model = CoCa(PRESETS["coca"])
# policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
# decoder = model.text_decoder
# for block in [*model.image_encoder.blocks, *decoder.unimodal_layers, *decoder.multimodal_layers]:
#     fully_shard(block, mp_policy=policy)       # one all-gather per block, freed after use
# fully_shard(model, mp_policy=policy)           # the rest: embeddings, poolers, heads
# model.to_empty(device="cuda")
# model.reset_parameters()                       # CoCa's own initialisation, on each shard
# optimizer = torch.optim.AdamW(model.parameters())   # sees only this GPU's shards
# ```
#
# `CoCa.reset_parameters` exists for this (its docstring: build on the meta device, then
# `to_empty` and `reset_parameters`). Checkpointing would wrap each block's call in
# `checkpoint`, as in Check 6. The contrastive loss needs nothing new: FSDP is still data
# parallel, and `global_contrastive_loss` gathers the embeddings as before.

# %% [markdown]
# ## 3. Mixed precision
#
# ### What bf16 rounds away
#
# bfloat16 keeps float32's 8 exponent bits (the same range) but only 8 significant bits (7
# stored), against float32's 24. Between 64 and 128, bf16 numbers are therefore
# $2^{6-7} = 0.5$ apart, float32 numbers $2^{6-23} \approx 7.6 \times 10^{-6}$ apart. That
# matters for the contrastive logits $s\, x_i^\top y_j$: the learned scale $s$ may grow up to its
# cap of 100, and the logits then lie anywhere in $[-100, 100]$.

# %%
hundred = torch.tensor(100.0)
spacing_bf16 = (torch.nextafter(hundred.bfloat16(), torch.tensor(200.0).bfloat16()) - hundred.bfloat16()).item()
spacing_fp32 = (torch.nextafter(hundred, torch.tensor(200.0)) - hundred).item()
print(f"spacing of the numbers just above 100: bf16 {spacing_bf16}, float32 {spacing_fp32:.2e}")
print("100.0, 100.2, 100.3, 100.7 in bf16:", torch.tensor([100.0, 100.2, 100.3, 100.7]).bfloat16().tolist())

# %% [markdown]
# The figure shows both: on the left, bf16 near 100 as a staircase of steps of 0.5; on the
# right, the rounding error of every logit a scale of 100 can give, and its bound, half the
# spacing of the numbers around it.
#
# **Check 7** (exact): no logit in $[-100, 100]$ is rounded by more than that bound.

# %%
near = torch.linspace(98, 102, 2001)
logit = torch.linspace(-100, 100, 20001)  # every logit a scale of 100 can give
half_spacing = 2.0 ** (torch.floor(torch.log2(logit.abs().clamp(min=1e-3))) - 8)  # 8 significant bits
fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.2))
left.plot(near, near, color="k", linewidth=1, label="float32")
left.plot(near, near.bfloat16().float(), label="bf16")
left.set(title="a logit near 100, stored", xlabel="logit z", ylabel="stored value")
left.legend(fontsize=8)
right.plot(logit, (logit.bfloat16().float() - logit).abs(), linewidth=0.3, label="|bf16(z) − z|, 20,001 logits")
right.plot(logit, half_spacing, color="k", linewidth=1, label="half the bf16 spacing (the bound)")
right.set(title="rounding error of a contrastive logit in bf16", xlabel="logit z = s·xᵀy (s = 100)",
          ylabel="absolute rounding error")  # fmt: skip
right.legend(fontsize=8, loc="upper center")
for ax in (left, right):
    ax.grid(alpha=0.3)
fig.tight_layout()
assert ((logit.bfloat16().float() - logit).abs() <= half_spacing).all()

# %% [markdown]
# ### Autocast on a block
#
# `torch.autocast(device, dtype=torch.bfloat16)` runs the matrix multiplications (linear
# layers, attention) in bf16 and a list of precision-sensitive operations, the cross-entropy
# among them, in float32; anything else runs in the type of its input. The weights stay float32
# (section 2). It works on the CPU too. A coca_min block returns float32 under it: each
# residual adds a bf16 branch to the float32 stream, so the stream, and the LayerNorms that
# read it, stay float32.
#
# **Check 8**: under bf16 autocast the tiny ViT block's output is within 1e-2 of float32
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
# Under autocast the embeddings come out of their projections in bf16. `contrastive_loss`
# converts them to float32 and turns autocast off for the logits (the comment in `losses.py`:
# "near s = 100, bf16 logits are 0.5 apart"); `global_contrastive_loss` does the same, and
# `caption_loss` converts the logits to float32 before the cross-entropy. The rounding of the
# embeddings themselves is not undone, but no second rounding is added on top.
#
# **Check 9**: on bf16 embeddings, `contrastive_loss` under bf16 autocast equals the float32
# computation on the same (bf16-valued) embeddings (1e-6), and `caption_loss` on bf16 logits
# equals the one on their float32 values (1e-6). The bf16 alternatives are printed beside
# them.

# %%
x_bf16 = F.normalize(torch.randn(256, 128), dim=-1).bfloat16()  # as the projection gives them under autocast
y_bf16 = F.normalize(x_bf16.float() + 0.3 * torch.randn(256, 128), dim=-1).bfloat16()
s = torch.tensor(100.0)
labels = torch.arange(256)
with torch.autocast("cpu", dtype=torch.bfloat16):
    con_library = contrastive_loss(x_bf16, y_bf16, s)
con_fp32 = contrastive_loss(x_bf16.float(), y_bf16.float(), s)
logits_fp32 = s * x_bf16.float() @ y_bf16.float().T  # (256, 256)
logits_bf16 = s.bfloat16() * x_bf16 @ y_bf16.T  # the same logits, rounded to bf16
con_bf16 = F.cross_entropy(logits_bf16, labels) + F.cross_entropy(logits_bf16.T, labels)  # all in bf16
print(f"contrastive: coca_min under autocast {con_library.item():.6f} ({con_library.dtype}), float32 {con_fp32.item():.6f}, "
      f"all-bf16 {con_bf16.item():.4f}; bf16 logits off by up to {(logits_bf16.float() - logits_fp32).abs().max():.3f}")  # fmt: skip

caption_logits = (3 * torch.randn(8, 31, c.vocab_size)).bfloat16()  # (B, T - 1, V), as the LM head gives them
targets = torch.randint(1, c.vocab_size, (8, 31))
cap_library, cap_fp32 = caption_loss(caption_logits, targets, 0), caption_loss(caption_logits.float(), targets, 0)
cap_bf16 = F.cross_entropy(caption_logits.flatten(0, 1), targets.flatten(), ignore_index=0)
print(f"caption: coca_min {cap_library.item():.6f}, float32 {cap_fp32.item():.6f}, all-bf16 {cap_bf16.item():.4f}")
for name, value in [("contrastive", con_fp32), ("caption", cap_fp32)]:
    print(f"bf16 numbers near the {name} loss, {value.item():.2f}, are {2.0 ** (math.floor(math.log2(value.item())) - 7)} apart")
assert abs(con_library - con_fp32) < 1e-6 and abs(cap_library - cap_fp32) < 1e-6

# %% [markdown]
# The all-bf16 losses differ from float32 by less than one bf16 spacing of the loss value: the
# logits' rounding errors are random and partly average out over the 2 × 256 × 256 terms.
# The harm is in the logits themselves, where the gradient comes from: near ±100 a bf16 logit
# may be off by 0.25, which multiplies its softmax weight, against a neighbour's, by up to
# $e^{0.25} \approx 1.28$: a large error in what the loss compares, the positive against the
# closest negatives.
#
# ## 4. FLOPs, memory and model FLOPs utilisation
#
# ### Training FLOPs per pair, from the config
#
# A linear layer with a $d_\text{in} \times d_\text{out}$ weight applied to $n$ tokens costs
# $n\, d_\text{in} d_\text{out}$ multiply-adds, $2 n\, d_\text{in} d_\text{out}$ FLOPs. So a
# forward pass costs twice the sum, over every weight matrix, of its size times the number of
# tokens it is applied to (embedding tables do no multiply-adds; the LM head does), plus
# attention's two products $QK^\top$ and $AV$: $2 \cdot 2\, T_q T_k d$ FLOPs per attention
# layer. The backward costs about twice the forward (one product for the input's gradient,
# one for the weight's), so training costs $\approx 3\times$ the forward. In coca_min's
# terms, for one pair with a text of $T$ tokens ($N$ image tokens, $S$ caption queries, widths
# $D_v$ and $D$, MLP widths $M_v$, $M$, embedding size $E$, vocabulary $V$, patch $p$):
#
# $$\text{block}(n, d, m) = 2n\,(4d^2 + 2dm) + 4n^2 d$$
#
# | part | forward FLOPs |
# |---|---|
# | image encoder | $2N \cdot 3p^2 D_v + L_v\, \text{block}(N, D_v, M_v)$ |
# | caption pooler | $2S \cdot 2D^2 + 2N \cdot 2 D_v D + 4 S N D$ |
# | contrastive pooler, projection | $2 \cdot 2D^2 + 2S \cdot 2D^2 + 4SD + 2DE$ (cascade: it reads the $S$ caption tokens) |
# | unimodal half ($T + 1$ tokens, [CLS]) | $n_\text{uni}\, \text{block}(T+1, D, M) + 2DE$ |
# | multimodal half ($T - 1$ tokens) | $n_\text{multi}\big[\text{block}(T-1, D, M) + 2(T-1) \cdot 2D^2 + 2S \cdot 2D^2 + 4(T-1) S D\big] + 2(T-1) D V$ |
#
# In each block, $4d^2$ is the four attention projections, $2dm$ the MLP's two matrices; the
# cross-attention's queries and output projection see the text tokens, its keys and values the
# $S$ caption tokens.

# %%
def forward_flops(c, T=None):
    """Forward FLOPs of one image-text pair, by part (2 FLOPs per multiply-add)."""
    T = c.context_length if T is None else T
    N, Dv, D, S, E, V = c.n_image_tokens, c.vision_width, c.text_width, c.n_caption_queries, c.embed_dim, c.vocab_size
    block = lambda n, d, m: 2 * n * (4 * d * d + 2 * d * m) + 4 * n * n * d  # projections and MLP; QKᵀ and AV
    source = D if c.pooler_mode == "cascade" else Dv  # what the contrastive pooler reads
    return {
        "image encoder": 2 * N * 3 * c.patch_size**2 * Dv + c.vision_layers * block(N, Dv, c.vision_mlp),
        "poolers": (2 * S * 2 * D * D + 2 * N * 2 * Dv * D + 4 * S * N * D  # caption pooler
                    + 2 * 2 * D * D + 2 * S * 2 * source * D + 4 * S * D + 2 * D * E),  # contrastive pooler, projection
        "unimodal": c.n_uni * block(T + 1, D, c.text_mlp) + 2 * D * E,
        "multimodal": c.n_multi * (block(T - 1, D, c.text_mlp) + 2 * (T - 1) * 2 * D * D + 2 * S * 2 * D * D
                                   + 4 * (T - 1) * S * D) + 2 * (T - 1) * D * V,
    }  # fmt: skip


tiny_parts = forward_flops(PRESETS["tiny"])
print({part: f"{value / 1e6:.2f} MFLOP" for part, value in tiny_parts.items()}, "per pair, tiny, 32-token text")

# %% [markdown]
# `torch.utils.flop_counter.FlopCounterMode` counts the FLOPs of the matrix products that
# actually run. We count the tiny model's forward on 2 pairs with 32-token texts, with
# attention on PyTorch's plain ("math") kernel, whose products it sees (it does not count the
# CPU's fused attention kernel).
#
# **Check 10**: the formula equals the counted forward FLOPs per pair, exactly (they are
# integers). **Check 11** (exact): the counted forward and backward of the loss are 3 forwards,
# less the patch embedding's input gradient (pixels need none: $2N \cdot 3p^2 D_v$ per pair),
# plus the contrastive loss's logits ($2B^2E$ for a batch of $B$, once forward and twice
# backward).

# %%
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
# What neither the formula nor the counter includes: LayerNorms, GELUs, softmaxes, residual
# adds and the embedding lookups (a few operations per element, no multiply-adds), the
# contrastive loss's logits ($2NE$ per pair and direction for a global batch of $N$: printed
# below for the paper's batch), the optimizer step (a few per parameter, per step, not per
# pair), and masked attention: the formula counts
# the full $T^2$ of causal attention, as a kernel that does not skip the masked half computes
# it. And activation checkpointing's recomputation (section 2) is not in it: it is hardware
# work, not model work.
#
# ### The presets
#
# Parameters from `count_parameters`, FLOPs per pair from the formula (texts of the full
# context: 32 tokens for tiny, 64 for the others), and the model states of section 2.

# %%
print(f"{'preset':7s} {'parameters':>11s} {'forward/pair':>13s} {'training/pair':>14s} {'weights+grads+AdamW':>20s}")
training_flops = {}
for name, config in PRESETS.items():
    forward_total = sum(forward_flops(config).values())
    training_flops[name] = 3 * forward_total
    print(f"{name:7s} {n_params[name] / 1e6:10.1f}M {forward_total / 1e9:8.2f} GFLOP {training_flops[name] / 1e9:9.1f} GFLOP "
          f"{16 * n_params[name] / GB:15.2f} GB")  # fmt: skip
logits_per_pair = 3 * 2 * 2 * 65536 * base.embed_dim  # per pair, (1, E) @ (E, N) in both directions; x 3: and backward
print(f"base, the contrastive logits at the paper's batch of 65,536: {logits_per_pair / 1e9:.2f} GFLOP per pair "
      f"({logits_per_pair / training_flops['base']:.2%} of the model's)")  # fmt: skip

# %% [markdown]
# Where the work goes, by part: the image encoder's share is much larger in the paper's sizes
# than in the tiny model, whose 36 image tokens are fewer than its 32-token texts' 33 + 31
# decoder positions; the paper's 256 image tokens each pass through every encoder layer while
# the text has 64.

# %%
fig, ax = plt.subplots(figsize=(7, 3.2))
left = [0.0] * len(PRESETS)
for k, part in enumerate(tiny_parts):
    share = [forward_flops(config)[part] / sum(forward_flops(config).values()) for config in PRESETS.values()]
    ax.barh(list(PRESETS), share, left=left, color=f"C{k}", label=part)
    left = [a + b for a, b in zip(left, share)]
ax.set(title="share of the forward FLOPs by part (full-length texts)", xlabel="share of the FLOPs per pair",
       ylabel="preset", xlim=(0, 1))  # fmt: skip
ax.invert_yaxis()
ax.legend(fontsize=8, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.28))
fig.tight_layout()
print("image encoder's share:", ", ".join(f"{n} {forward_flops(cfg)['image encoder'] / sum(forward_flops(cfg).values()):.0%}"
                                           for n, cfg in PRESETS.items()))  # fmt: skip

# %% [markdown]
# ### Model FLOPs utilisation
#
# MFU is the share of the accelerator's peak that the model's own FLOPs use:
#
# $$\text{MFU} = \frac{\text{pairs per second} \times \text{training FLOPs per pair}}{\text{peak FLOP/s}}.$$
#
# A worked example with CoCa-Base at 288 px on one H100 (dense bf16 peak 989 TFLOP/s). The
# project's issue on scaling up reports, for open implementations at batch 128: 1,011 to 1,020
# images per second with `torch.compile`, 413 eager. These are **reported figures, not measured
# here**, and the text length behind them is not known here: the computation assumes each
# image comes with a full 64-token text.

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
# `torchrun` starts one process per GPU and gives each its `RANK`, `LOCAL_RANK` and
# `WORLD_SIZE`; `train.py` (through `coca_min.distributed.setup`) joins the process group with
# **NCCL** when it trains on CUDA and **gloo** otherwise, wraps the model in DDP, and gives
# each rank its own shard of the data (a `DistributedSampler`). Only rank 0 evaluates and
# writes checkpoints.
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
# With the *static* rendezvous instead, each machine says which it is: `--node-rank 0` on HOST,
# `--node-rank 1` on the other, with `--master-addr HOST --master-port 29500` on both. Under
# c10d `--node-rank` is ignored, as torchrun's own help says:

# %%
for action in torch.distributed.run.get_args_parser()._actions:
    if {"--standalone", "--node-rank", "--rdzv-endpoint"} & set(action.option_strings):
        print(f"{action.option_strings[0]}: {action.help}")

# %% [markdown]
# Both machines need the data at the same paths, and `--out` on a filesystem both see: every
# process reads `OUT/ckpt.pt` when a run is resumed (`--resume`, `--resume auto`), and only rank
# 0 writes it. On CPUs, the same commands with `--device cpu` run gloo, each process with
# cores ÷ processes threads (`--threads`).
#
# ### What `--batch-size` means
#
# `--batch-size` is the global batch of one optimizer step, **over all processes** (its
# `--help`: "pairs per optimizer step, over all processes"). Each process runs
# `batch_size ÷ (processes × --accum)` pairs per micro-batch, and the contrastive loss sees all
# of them as negatives (section 1). `train.py` refuses a batch that does not divide, before it
# imports torch. Here it is told it is one of 16 processes (the variables `torchrun` sets).
#
# **Check 12**: `train.py --batch-size 1000` among 16 processes stops at its argument check
# with exit status 2 (1000 is not a multiple of 16), having started nothing.

# %%
env = {**os.environ, "RANK": "0", "WORLD_SIZE": "16"}  # what torchrun would set; nothing is launched
refused = subprocess.run([sys.executable, str(ROOT / "train.py"), "--batch-size", "1000"], env=env,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
print(refused.stderr.strip(), f"(exit status {refused.returncode})")
assert refused.returncode == 2
for processes, accum in [(1, 1), (8, 1), (16, 1), (16, 2)]:
    micro_batch = 1024 // (processes * accum)  # as coca_min/trainer.py computes it
    print(f"--batch-size 1024 on {processes:2d} processes, --accum {accum}: {micro_batch:4d} pairs per micro-batch")

# %% [markdown]
# So the same command on 1, 8 or 16 GPUs trains the same optimisation problem: the same
# number of pairs per step, the same `--steps`, the same learning-rate schedule (warm-up over
# `--warmup` steps, cosine to `--min-lr-ratio` × `--lr`). More GPUs make each step faster; they
# do not change what a step is.
# `train.py` does not rescale the learning rate for you: a larger `--batch-size` is a new
# setting, and its `--lr` and `--warmup` are yours to choose. To train for a number of epochs,
# `--steps` = epochs × pairs in the data ÷ `--batch-size`.
#
# ## Summary
# - The global-batch contrastive loss: each rank's rows against every rank's columns, labels
#   offset by $rB$, and a gather whose backward sums the gradients over ranks and keeps its own
#   slice. Four simulated ranks gave the single-batch loss and gradients to 1e-12; a gather
#   without gradient keeps the loss and breaks the gradients, local labels break both.
# - Per parameter, training holds 16 bytes of model states; DDP replicates them, FSDP divides
#   them by the number of GPUs. Activations are $8D + 2M + 4 + h$ elements per token per block
#   (counted on coca_min's blocks); checkpointing keeps $D$ and recomputes the rest in the
#   backward. `train.py` does DDP today.
# - bf16 numbers near 100 are 0.5 apart; coca_min computes the contrastive logits and both
#   losses in float32 under autocast.
# - The forward FLOPs follow exactly from the config (checked against `FlopCounterMode`), and
#   training costs about 3 forwards: 258.5 GFLOP per pair for CoCa-Base with 64-token texts;
#   a 40 % MFU on an H100 then means about 1,530 pairs per second.
# - `torchrun --standalone --nproc-per-node=8 train.py …` on one machine, a c10d rendezvous on
#   several; `--batch-size` is global.
#
# ## Exercises
# 1. In `simulate`, give rank 0 a batch of 4 and the others 12 each, with the loss still the
#    mean over each rank's rows. Is the average of the four losses still the single-batch loss?
#    What weight per rank would make it so, and what does that say about uneven shards?
# 2. Trap (a) `"no_grad"` gave an image-row gradient whose norm was a fraction of the right
#    one. Split the right gradient into the part through the rows as queries and the part
#    through them as columns (use `own` and `sent` inside `simulate`), and compare the sizes.
# 3. With `activations` and `n_params`, find the largest number of pairs per GPU that fits CoCa
#    (2.1B) in 80 GB with DDP, with FSDP over 8 GPUs, and with FSDP and checkpointing.
# 4. Recompute the table of section 4 with 16-token texts (`forward_flops(config, T=16)`): how
#    much of CoCa-Base's training cost is the text side, and what would the MFU of the reported
#    1,011 images/s be if the benchmark's texts were that short?
