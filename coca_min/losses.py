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

Left out: the all-gather across GPUs that lets the contrastive loss see the global batch (it
belongs with distributed training), label smoothing, and the JFT classification loss.
"""

import torch
import torch.nn.functional as F


def contrastive_loss(image_embedding, text_embedding, logit_scale):
    """Paper eq. 1: (B, E) unit-norm embeddings, scalar scale s -> scalar loss, the sum of the
    image-to-text and text-to-image cross-entropies (each a mean over the batch)."""
    # at least float32, even under bf16 autocast: near s = 100, bf16 logits are 0.5 apart
    # BEGIN EXERCISE contrastive_loss
    dtype = torch.promote_types(image_embedding.dtype, torch.float32)
    with torch.autocast(image_embedding.device.type, enabled=False):
        x, y = image_embedding.to(dtype), text_embedding.to(dtype)
        logits = logit_scale.to(dtype) * x @ y.T  # (B, B): image i against text j
    labels = torch.arange(logits.shape[0], device=logits.device)  # pair i is on the diagonal
    image_to_text = F.cross_entropy(logits, labels)  # each row: which text is image i's?
    text_to_image = F.cross_entropy(logits.T, labels)  # each column: which image is text j's?
    return image_to_text + text_to_image  # eq. 1: the sum, not CLIP's mean
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


def coca_loss(outputs, tokens, pad_id, caption_weight=2.0, contrastive_weight=1.0):
    """The CoCa objective from `CoCa.forward`'s outputs and the (B, T) tokens it was given.

    Returns {"loss": weighted sum, "contrastive": L_con, "caption": L_cap}.
    """
    targets = tokens[:, 1:]  # (B, T - 1): position t predicts token t + 1 (teacher forcing)
    l_con = contrastive_loss(
        outputs["image_embedding"], outputs["text_embedding"], outputs["logit_scale"]
    )
    l_cap = caption_loss(outputs["logits"], targets, pad_id)
    loss = contrastive_weight * l_con + caption_weight * l_cap
    return {"loss": loss, "contrastive": l_con, "caption": l_cap}
