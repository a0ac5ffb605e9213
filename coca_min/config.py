"""Model sizes: the `CoCaConfig` dataclass and the named `PRESETS`.

Implements the model-size part of the paper: Table 1 (CoCa-Base, CoCa-Large and CoCa, all at
288 x 288 pixels, patch 18, a 64k vocabulary). `tiny` and `small` are this project's own sizes:
`tiny` trains on a 2-core laptop CPU in minutes, `small` on one GPU in about an hour.

Table 1 counts the image encoder (the ViT) and the text decoder; the two attentional poolers and
the image projection come on top. The counts in the comments below were measured with
`count_parameters` in `coca_min/model/coca.py` and are checked by `tests/test_config.py`.

Initialisation: the paper does not state it. The paper sizes (and `small`) start as transformers
usually do (`init="standard"`); `tiny` keeps the start tuned for it (`init="tuned"`, see below).

Left out: dropout and stochastic depth (the paper trains without them at this scale), and the
one epoch at 576 px that ends the paper's pretraining (change `image_size` and interpolate the
position embedding).
"""

from dataclasses import dataclass, fields


@dataclass
class CoCaConfig:
    # --- image encoder (ViT, paper §3.2 "image encoder") ---
    image_size: int = 48  # pixels, square images (tiny_data: a 3x3 grid of 16 px cells)
    patch_size: int = 8  # pixels; (image_size / patch_size)² image tokens
    vision_width: int = 64  # narrow: on a CPU it learns shapes faster per second than 128
    vision_layers: int = 4
    vision_heads: int = 4
    vision_mlp: int = 256
    # --- attentional poolers (paper §3.2 "attentional poolers") ---
    n_caption_queries: int = 64  # 256 in the paper (as many as image tokens); 32 bound attributes
    # to the wrong object more often (object-F1 0.58 vs 0.76 at 320 steps). Contrastive: 1 query
    pooler_heads: int = 4
    pooler_mode: str = "cascade"  # "cascade" (paper default) or "parallel" (ablation, Table 8e)
    # --- text decoder (paper §3.2 "decoupled text decoder") ---
    vocab_size: int = 366  # the size of tiny_data's tokenizer
    context_length: int = 32  # most tokens in one text, [BOS] and [EOS] included
    text_width: int = 128
    text_heads: int = 4
    n_uni: int = 2  # unimodal layers: causal self-attention only
    n_multi: int = 2  # multimodal layers: causal self-attention + cross-attention to the image
    text_mlp: int = 512
    tie_embeddings: bool = False  # share the input embedding and the LM head (the `coca` size)
    # --- shared embedding space of the contrastive loss ---
    embed_dim: int = 128
    # --- initialisation (`CoCa.reset_parameters`) ---
    # "tuned": this project's start for narrow models (layers.init_weights): Linear std 1/√fan_in,
    # the ViT's position embedding at std 1, the caption queries at std 3 (tiny learns where
    # things are, and binds attributes, several times faster). "standard": the usual transformer
    # start (BERT, ViT, GPT-2; layers.standard_init_weights): truncated normal std 0.02 (cut at
    # ±2σ) for every weight matrix, embedding, position embedding and query, zero biases,
    # LayerNorm at ones and zeros. Both start the temperature at 1/0.07.
    init: str = "tuned"
    # --- special tokens: ids 0, 1, 2 are reserved and never stand for real text ---
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size ({self.image_size} px) must be a multiple of patch_size "
                f"({self.patch_size} px)"
            )
        for width, heads, what in [
            (self.vision_width, self.vision_heads, "vision"),
            (self.text_width, self.text_heads, "text"),
            (self.text_width, self.pooler_heads, "pooler"),
        ]:
            if width % heads:
                raise ValueError(f"{what} width {width} must be divisible by its {heads} heads")
        if self.init not in ("tuned", "standard"):
            raise ValueError(f"init must be 'tuned' or 'standard', got {self.init!r}")
        if self.pooler_mode not in ("cascade", "parallel"):
            raise ValueError(f"pooler_mode must be 'cascade' or 'parallel', got {self.pooler_mode!r}")
        specials = (self.pad_id, self.bos_id, self.eos_id)
        if len(set(specials)) < 3 or min(specials) < 0 or max(specials) >= self.vocab_size:
            raise ValueError(
                f"pad_id, bos_id, eos_id must be three different ids in [0, vocab_size = "
                f"{self.vocab_size}); got {specials}"
            )
        if self.context_length < 2:
            raise ValueError("context_length must be at least 2 ([BOS] and [EOS])")

    @property
    def n_image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def differences(self, other: "CoCaConfig") -> dict:
        """Fields whose values differ: {name: (self's, other's)}."""
        return {
            f.name: (getattr(self, f.name), getattr(other, f.name))
            for f in fields(self)
            if getattr(self, f.name) != getattr(other, f.name)
        }


def _paper_size(width, heads, vision_layers, vision_mlp, n_uni, text_mlp, tie_embeddings=False):
    """A Table 1 model: 288 px images, patch 18 (256 tokens), 256 + 1 pooler queries, 64k vocab."""
    return CoCaConfig(
        image_size=288, patch_size=18,
        vision_width=width, vision_layers=vision_layers, vision_heads=heads, vision_mlp=vision_mlp,
        n_caption_queries=256, pooler_heads=heads,
        vocab_size=64000, context_length=64,
        text_width=width, text_heads=heads, n_uni=n_uni, n_multi=n_uni, text_mlp=text_mlp,
        tie_embeddings=tie_embeddings, embed_dim=width, init="standard",
    )  # fmt: skip


# Parameter counts, measured: image encoder + text decoder (as Table 1 counts them), then the
# poolers (both attentional poolers, the image projection and the temperature) and the total.
PRESETS: dict[str, CoCaConfig] = {
    # tiny: encoder 0.21M + decoder 1.04M = 1.26M; poolers 0.14M; total 1.40M parameters
    "tiny": CoCaConfig(),
    # small: encoder 21.7M + decoder 49.6M = 71.3M; poolers 1.4M; total 72.6M parameters
    "small": CoCaConfig(
        image_size=224, patch_size=16,
        vision_width=384, vision_layers=12, vision_heads=6, vision_mlp=1536,
        n_caption_queries=64, pooler_heads=6,
        vocab_size=32000, context_length=64,
        text_width=384, text_heads=6, n_uni=6, n_multi=6, text_mlp=1536, embed_dim=384,
        init="standard",
    ),  # fmt: skip
    # base: encoder 86.0M + decoder 297.4M = 383.4M; poolers 5.5M; total 388.9M parameters
    "base": _paper_size(768, 12, vision_layers=12, vision_mlp=3072, n_uni=12, text_mlp=3072),
    # large: encoder 303.6M + decoder 484.9M = 788.5M; poolers 9.7M; total 798.2M parameters
    "large": _paper_size(1024, 16, vision_layers=24, vision_mlp=4096, n_uni=12, text_mlp=4096),
    # coca: encoder 1011.7M + decoder 1092.2M = 2103.9M; poolers 18.2M; total 2122.1M parameters
    "coca": _paper_size(
        1408, 16, vision_layers=40, vision_mlp=6144, n_uni=18, text_mlp=5632, tie_embeddings=True
    ),
}
