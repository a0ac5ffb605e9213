"""CoCa's two training objectives and their weighted sum (paper §3.1, §3.2, eq. 1-3).

- Contrastive (eq. 1): with unit-norm image embeddings x_i and text embeddings y_j of a batch of
  N pairs, and a learnable scale s = 1/σ,

      L_con = -1/N ( Σ_i log softmax_j(s x_iᵀy_j)[i]  +  Σ_i log softmax_j(s y_iᵀx_j)[i] )

  the *sum* of the two directions' mean cross-entropies, image-to-text plus text-to-image, as
  the paper writes it. CLIP's pseudo-code and open_clip take their *mean*, exactly half of this:
  their λ_con = 1 is this project's λ_con = 0.5, and their contrastive term weighs half as much
  against λ_cap = 2 as the paper's does.
- Captioning (eq. 2): token-level cross-entropy of the next token given the image and the
  tokens before it; the paper sums over a caption's tokens, this project averages over the
  non-padding target tokens of the batch.
- CoCa (eq. 3): L = λ_con L_con + λ_cap L_cap with λ_cap = 2, λ_con = 1 (paper §4.1).

Under bf16 autocast the captioning loss goes through `LowMemoryCaptionLoss`: the same value,
without the float32 copies of the (B, T, V) logits that dominate memory at a 64k vocabulary.

Data-parallel training calls the same `coca_loss`: its contrastive loss takes a `gather` that
collects the embeddings of every process (`coca_min/train/distributed.py` makes it), and its
captioning loss the count of the whole step's tokens (`step_tokens`). Left out: label smoothing, and the JFT
classification loss.
"""

import torch
import torch.nn.functional as F


def contrastive_loss(image_embedding, text_embedding, logit_scale, gather=None, rank=0):
    """Paper eq. 1: (B, E) unit-norm embeddings, scalar scale s -> scalar loss, the sum of the
    image-to-text and text-to-image cross-entropies (each a mean over the batch).

    In data-parallel training each of W processes holds B of the W·B pairs. Then `gather` is a
    function (B, E) -> (W·B, E) that collects every process's rows in rank order, with
    gradient (`coca_min.train.distributed.gather_with_grad`), and `rank` is this process's
    place: its rows are contrasted with the texts (images) of all W·B pairs, and pair i's
    column is rank·B + i."""
    # at least float32, even under bf16 autocast: near s = 100, bf16 logits are 0.5 apart
    # BEGIN EXERCISE contrastive_loss
    dtype = torch.promote_types(image_embedding.dtype, torch.float32)
    with torch.autocast(image_embedding.device.type, enabled=False):
        x, y, s = image_embedding.to(dtype), text_embedding.to(dtype), logit_scale.to(dtype)
        if gather is None:  # one process: every pair is here
            image_to_text = s * x @ y.T  # (B, B): image i against text j
            text_to_image = image_to_text.T  # (B, B): text i against image j
        else:  # this process's rows against the columns of every process
            image_to_text = s * x @ gather(y).T  # (B, W·B)
            text_to_image = s * y @ gather(x).T  # (B, W·B)
    labels = torch.arange(len(x), device=x.device) + rank * len(x)  # pair i's column
    loss_i2t = F.cross_entropy(image_to_text, labels)  # each row: which text is image i's?
    loss_t2i = F.cross_entropy(text_to_image, labels)  # each row: which image is text i's?
    return loss_i2t + loss_t2i  # eq. 1: the sum, not CLIP's mean
    # END EXERCISE


def caption_loss(logits, targets, pad_id):
    """Cross-entropy over non-padding targets: logits (B, T, V), targets (B, T) -> scalar, the
    mean over the real (non-`pad_id`) target tokens of the whole batch (not a mean of each
    caption's mean). Computed in at least float32 (float64 stays float64); all padding gives 0."""
    if logits.shape[:2] != targets.shape:
        raise ValueError(
            f"logits (batch, positions, vocab) {tuple(logits.shape)} do not match targets "
            f"(batch, positions) {tuple(targets.shape)}"
        )
    # BEGIN EXERCISE caption_loss
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # not in bf16
    total = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=pad_id,
                            reduction="sum")  # fmt: skip
    n_real = (targets != pad_id).sum().clamp(min=1)  # all padding -> 0 / 1, not 0 / 0
    return total / n_real
    # END EXERCISE


def text_log_likelihood(logits, targets, pad_id):
    """log p(text | image) of each text, teacher forcing: logits (B, T, V), targets (B, T) ->
    (B,) summed over the non-padding targets (the captioner as a scorer)."""
    log_p = logits.float().log_softmax(-1).gather(-1, targets[..., None])[..., 0]  # (B, T)
    return (log_p * (targets != pad_id)).sum(-1)


class LowMemoryCaptionLoss(torch.autograd.Function):
    """`caption_loss` for half-precision logits (bf16 autocast) without their float32 copy.

    At the paper's sizes the logits are the largest tensor of a step: batch 128 x 63 positions x
    64,000 words is 516M numbers, 1 GB in bf16. `caption_loss` makes a float32 copy (2 GB) and
    cross-entropy keeps a float32 log-softmax for the backward pass (2 GB more). This Function
    keeps only the bf16 logits and a float32 log-sum-exp per position: the forward pass computes
    the log-sum-exp in float32 a chunk of rows at a time, and the backward pass the softmax the
    same way, (softmax - one-hot) / n_real, written into a gradient of the logits' dtype.
    """

    @staticmethod
    def forward(ctx, logits, targets, pad_id, chunk_rows):  # (M, V), (M,) -> scalar, at least float32
        work = torch.promote_types(logits.dtype, torch.float32)  # float32 (float64 stays float64)
        real = targets != pad_id
        n_real = real.sum().clamp(min=1)  # all padding -> 0 / 1, not 0 / 0
        lse = torch.empty(logits.shape[0], dtype=work, device=logits.device)
        for start in range(0, logits.shape[0], chunk_rows):
            lse[start : start + chunk_rows] = torch.logsumexp(logits[start : start + chunk_rows].to(work), dim=-1)
        picked = logits.gather(1, targets[:, None])[:, 0].to(work)  # the target's logit at each position
        ctx.save_for_backward(logits, targets, lse, real, n_real)
        ctx.chunk_rows = chunk_rows
        return ((lse - picked) * real).sum() / n_real  # -log p(target), mean over real tokens

    @staticmethod
    def backward(ctx, grad):
        logits, targets, lse, real, n_real = ctx.saved_tensors
        grad_logits = torch.empty_like(logits)
        for start in range(0, logits.shape[0], ctx.chunk_rows):
            rows = slice(start, start + ctx.chunk_rows)
            p = (logits[rows].to(lse.dtype) - lse[rows, None]).exp()  # softmax, (rows, V) float32
            p[torch.arange(p.shape[0], device=p.device), targets[rows]] -= 1.0  # minus the one-hot
            grad_logits[rows] = (p * (real[rows, None] * (grad / n_real))).to(logits.dtype)
        return grad_logits, None, None, None


def caption_loss_for_training(logits, targets, pad_id, chunk_elements=2**26):
    """`caption_loss`, through `LowMemoryCaptionLoss` when the logits are half precision (bf16
    autocast: where their float32 copies would dominate memory); the same value either way."""
    if logits.dtype not in (torch.bfloat16, torch.float16) or logits.shape[:2] != targets.shape:
        return caption_loss(logits, targets, pad_id)  # (a shape mismatch: its error message)
    flat = logits.flatten(0, 1)  # (B·T, V)
    return LowMemoryCaptionLoss.apply(flat, targets.flatten(), pad_id, max(1, chunk_elements // flat.shape[1]))


def coca_loss(outputs, tokens, pad_id, caption_weight=2.0, contrastive_weight=1.0, *,
              gather=None, rank=0, world_size=1, step_tokens=None):  # fmt: skip
    """The CoCa objective (eq. 3) from `CoCa.forward`'s outputs and the (B, T) tokens it was given.

    Returns {"loss": weighted sum, "contrastive": L_con, "caption": L_cap}.

    For an optimizer step of several micro-batches or processes (`coca_min.train.step`):
    `gather` and `rank` as in `contrastive_loss`; `step_tokens`, the real target tokens of the
    whole step (every micro-batch of every process), and `world_size` W. Each process's caption
    loss is then W · (its token sum) / step_tokens: DDP averages the W processes' gradients and
    the micro-batches' gradients add up, so the step's gradient is that of the mean over all of
    its real tokens. The image and text embeddings may hold more rows than `tokens` (the cached
    rows of the step's other micro-batches).
    """
    if (gather is not None or world_size > 1) and step_tokens is None:
        raise ValueError("a loss over several processes needs step_tokens, the real target tokens of the whole step "
                         "(coca_min.train.step.step_token_count): each process's caption loss is its share of their mean")
    if world_size > 1 and gather is None:
        raise ValueError(f"world_size {world_size}: the contrastive loss needs the gather of every process's embeddings "
                         "(gather=coca_min.train.distributed.gather_with_grad)")  # fmt: skip
    targets = tokens[:, 1:]  # (B, T - 1): position t predicts token t + 1 (teacher forcing)
    l_con = contrastive_loss(outputs["image_embedding"], outputs["text_embedding"], outputs["logit_scale"],
                             gather, rank)  # fmt: skip
    l_cap = caption_loss_for_training(outputs["logits"], targets, pad_id)  # the mean over these tokens
    if step_tokens is not None:  # this share of the step's token mean: the sum, · W / the step's count
        l_cap = l_cap * (targets != pad_id).sum().clamp(min=1) * world_size / step_tokens.clamp(min=1)
    loss = contrastive_weight * l_con + caption_weight * l_cap
    return {"loss": loss, "contrastive": l_con, "caption": l_cap}
