"""The FLOPs of CoCa, counted from its config (bench.py prints it beside torch's own count).

Not in the paper (which reports no throughput). Two FLOPs per multiply-add of the matrix
products, the way MFU is usually counted (PaLM, nanoGPT); the elementwise work (LayerNorm,
GELU, softmax) is left out. `tests/test_bench.py` checks both formulas against
`torch.utils.flop_counter.FlopCounterMode` on the tiny model, exactly.

    block(n, d, m) = 2n(4d² + 2dm) + 4n²d      q, k, v, out projections and the MLP; QKᵀ and AV

for n tokens of width d with an MLP of width m. One image-text pair of T tokens (N image
tokens of width Dv, text width D, S caption queries, embedding E, vocabulary V):

    image encoder   2N·3p²Dv + L_v · block(N, Dv, M_v)
    poolers         caption: 2S·2D² + 2N·2DvD + 4SND
                    contrastive (1 query over n_src tokens of width D_src: the S caption
                    pooler outputs, or in "parallel" mode the N ViT tokens):
                    2·2D² + 2n_src·2D_src·D + 4n_src·D, projection 2DE
    unimodal        n_uni · block(T + 1, D, M_t) + 2DE                  the text and [CLS]
    multimodal      n_multi · (block(T - 1, D, M_t) + 2(T-1)·2D² + 2S·2D² + 4(T-1)SD)
                    + 2(T - 1)DV                                        teacher forcing: T - 1 positions
"""

from coca_min.config import CoCaConfig


def forward_flops(c: CoCaConfig, T: int | None = None) -> dict:
    """Forward FLOPs of one image-text pair of T tokens (default: the context length), by part."""
    T = c.context_length if T is None else T
    N, Dv, D, S, E, V = c.n_image_tokens, c.vision_width, c.text_width, c.n_caption_queries, c.embed_dim, c.vocab_size

    def block(n, d, m):
        return 2 * n * (4 * d * d + 2 * d * m) + 4 * n * n * d

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


def training_flops(c: CoCaConfig, batch_size: int, T: int | None = None) -> int:
    """FLOPs of one training step (forward and backward) per image-text pair: three forwards
    (the backward computes two products for each one of the forward), less the gradient of the
    pixels (never needed), plus the contrastive logits x @ yᵀ (2BE per pair, three times)."""
    pixels_gradient = 2 * c.n_image_tokens * 3 * c.patch_size**2 * c.vision_width
    return 3 * sum(forward_flops(c, T).values()) - pixels_gradient + 3 * 2 * batch_size * c.embed_dim
