"""CoCa assembled: image encoder, two attentional poolers, decoupled text decoder (paper Figure 2).

    images ─ image_encoder (ViT) ─ tokens (B, N, Dv) ─┬─ caption_pooler ─ (B, n_queries, D) ─┐
                                                      │     └─ contrastive_pooler ─ (B, E)  │ cascade
    tokens ─ text_decoder.unimodal ─ text embedding (B, E)                                  │
                   └─ token features ─ text_decoder.multimodal ◄───────────────────────────┘
                                             └─ logits (B, T-1, V)

In the paper's default **cascade** the 1-query contrastive pooler attends over the caption
pooler's output; in **parallel** (the ablation) it attends over the ViT tokens. open_clip
instead reuses query 0 of a single 256-query pooler, and CoCa-pytorch uses one 257-query
pooler; neither is the paper's design.

Inputs are checked before any tensor work, so a wrong shape or token id fails with a message in
the user's terms. Left out: the losses (`losses.py`), caption decoding (`generate.py`), and
loading a checkpoint (`coca_min.checkpoint.load_model`: checkpoints hold a tokenizer too).
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from coca_min.config import CoCaConfig

from .decoder import TextDecoder
from .layers import init_weights, standard_init_weights
from .pooler import AttentionalPooler
from .vit import VisionTransformer


class CoCa(nn.Module):
    def __init__(self, config: CoCaConfig):
        super().__init__()
        c = self.config = config
        self.image_encoder = VisionTransformer(
            c.image_size, c.patch_size, c.vision_width, c.vision_layers, c.vision_heads, c.vision_mlp
        )
        # caption queries start out looking at different places (a start of identical queries,
        # all averaging the whole image, hides where things are and is slow to break); the one
        # contrastive query starts as a plain average (see AttentionalPooler)
        self.caption_pooler = AttentionalPooler(
            c.text_width, c.n_caption_queries, c.pooler_heads, context_dim=c.vision_width, query_std=3.0
        )
        contrastive_source = c.text_width if c.pooler_mode == "cascade" else c.vision_width
        self.contrastive_pooler = AttentionalPooler(
            c.text_width, 1, c.pooler_heads, context_dim=contrastive_source, query_std=0.02
        )
        self.image_projection = nn.Linear(c.text_width, c.embed_dim, bias=False)
        self.text_decoder = TextDecoder(c)
        # learnable temperature: s = exp(log_logit_scale) = 1/σ, starting at 1/0.07, at most 100
        # (`clamp_logit_scale_`, after each optimizer step). Shape (1,), not a 0-d scalar: FSDP2
        # (`fully_shard`) shards and averages it like any other parameter; a 0-d one it cannot
        self.log_logit_scale = nn.Parameter(torch.empty(1))
        self.reset_parameters()

    def reset_parameters(self):
        """(Re)initialise every parameter, e.g. after building on the meta device:
        `with torch.device("meta"): m = CoCa(c)`, then `m.to_empty(device="cuda").reset_parameters()`."""
        init = init_weights if self.config.init == "tuned" else standard_init_weights  # see CoCaConfig.init
        for module in self.modules():
            if module is not self:
                init(module)  # each module's own parameters (this ties the LM head again)
        with torch.no_grad():
            self.log_logit_scale.fill_(math.log(1 / 0.07))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        upgrade_state_dict(state_dict, prefix)  # an older checkpoint's 0-d temperature
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    max_logit_scale = 100.0  # CLIP's cap on s = 1/σ: the temperature never goes below 0.01

    @torch.no_grad()
    def clamp_logit_scale_(self):
        """Keep s = exp(log_logit_scale) <= 100 by clamping the parameter itself; call it after
        every optimizer step (as CLIP and open_clip do). Clamping s in the forward pass instead
        would give it zero gradient above 100, so it could never come back down."""
        self.log_logit_scale.clamp_(max=math.log(self.max_logit_scale))

    def encode_image(self, images):
        """(B, 3, H, W) normalised pixels -> image embedding (B, E) unit norm, caption tokens
        (B, n_caption_queries, D) for the multimodal decoder."""
        self._check_images(images)
        return self._encode_image(images)

    def _encode_image(self, images):  # encode_image without the input check
        return self.pool(self.image_encoder(images))  # ViT tokens (B, N, Dv)

    def pool(self, vit_tokens):
        """Image tokens (B, N, Dv) -> image embedding (B, E) unit norm, caption tokens
        (B, n_caption_queries, D): the two poolers and the projection. N is free: the video model
        (`coca_min/eval/video.py`) gives it the tokens of every frame of a clip, and probes reuse it."""
        caption_tokens = self.caption_pooler(vit_tokens)  # (B, n_queries, D)
        source = caption_tokens if self.config.pooler_mode == "cascade" else vit_tokens
        pooled = self.contrastive_pooler(source)[:, 0]  # (B, D): the single query's output
        image_embedding = F.normalize(self.image_projection(pooled), dim=-1)  # (B, E)
        return image_embedding, caption_tokens

    def encode_text(self, tokens):
        """(B, T) token ids -> text embedding (B, E) unit norm, unimodal token features (B, T, D)."""
        self._check_tokens(tokens)
        return self.text_decoder.unimodal(tokens)

    def forward(self, images, tokens):
        """One pass for both losses. tokens (B, T) are `[BOS] w1 … wn [EOS] [PAD] …`.

        Returns a dict: image_embedding (B, E), text_embedding (B, E), logits (B, T-1, V) where
        position t predicts tokens[:, t+1], and logit_scale (s = exp(log_logit_scale), one number
        of shape (1,), differentiable everywhere; training keeps it <= 100 with `clamp_logit_scale_`).
        """
        self._check_images(images)
        self._check_tokens(tokens)
        if images.shape[0] != tokens.shape[0]:
            raise ValueError(
                f"expected as many texts as images; got {images.shape[0]} images and "
                f"{tokens.shape[0]} texts"
            )
        if tokens.shape[1] < 2:
            raise ValueError(f"expected texts of at least 2 tokens ([BOS] and one target); got {tokens.shape[1]}")
        image_embedding, caption_tokens = self._encode_image(images)  # inputs checked above, once
        text_embedding, token_features = self.text_decoder.unimodal(tokens)
        logits = self.caption_logits(caption_tokens, tokens, token_features)
        return {
            "image_embedding": image_embedding,
            "text_embedding": text_embedding,
            "logits": logits,
            "logit_scale": self.log_logit_scale.exp(),
        }

    def caption_logits(self, caption_tokens, tokens, token_features=None):
        """The captioner's scores of texts given images, by teacher forcing: the caption pooler's
        output (B, n_queries, D) and texts (B, T) -> next-token logits (B, T-1, V), where
        position t predicts tokens[:, t+1]. `token_features`: the unimodal features (B, T, D) of
        `tokens`, when they are already computed (`forward`, or one text scored against many
        images); the unimodal half is causal, so the features of tokens[:, :-1] within the whole
        text are those of tokens[:, :-1] alone."""
        if token_features is None:
            _, token_features = self.text_decoder.unimodal(tokens)
        return self.text_decoder.multimodal(token_features[:, :-1], tokens[:, :-1], caption_tokens)

    # --- input checks: clear errors in the user's terms before any tensor op ---------------

    def _check_images(self, images):
        c = self.config
        expected = f"(batch, 3, {c.image_size}, {c.image_size}) [batch, channels, height, width in pixels]"
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images: expected a 4-D tensor {expected}; got {got}")
        if images.shape[1] != 3:
            raise ValueError(f"images: expected 3 colour channels, shape {expected}; got {tuple(images.shape)}")
        if images.shape[2:] != (c.image_size, c.image_size):
            raise ValueError(
                f"images: expected {c.image_size}x{c.image_size} pixels, shape {expected}; "
                f"got {images.shape[2]}x{images.shape[3]} pixels"
            )
        if not images.is_floating_point():
            raise ValueError(f"images: expected floating-point normalised pixels; got {images.dtype}")

    def _check_tokens(self, tokens):
        c = self.config
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2:
            got = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise ValueError(f"tokens: expected a 2-D tensor (batch, tokens) of token ids; got {got}")
        if tokens.is_floating_point() or tokens.dtype == torch.bool:
            raise ValueError(f"tokens: expected integer token ids; got {tokens.dtype}")
        if tokens.shape[1] > c.context_length:
            raise ValueError(
                f"tokens: expected at most context_length = {c.context_length} tokens per text; "
                f"got {tokens.shape[1]}"
            )
        # Reading the ids makes the CPU wait for a GPU, but an out-of-range id on a GPU is otherwise
        # a cryptic device-side assert. So the ids are read on the CPU, where it costs nothing, and
        # in eval mode (a user's call); a training step on a GPU skips it (train.py's ids come from
        # the tokenizer the config was made with), and so does torch.compile (no branch on data).
        training_on_gpu = self.training and tokens.device.type != "cpu"
        if tokens.numel() == 0 or tokens.is_meta or training_on_gpu or torch.compiler.is_compiling():
            return
        low, high = torch.aminmax(tokens)
        if low < 0 or high >= c.vocab_size:
            raise ValueError(
                f"tokens: expected ids in [0, vocab_size = {c.vocab_size}); got ids from "
                f"{low.item()} to {high.item()}"
            )


def upgrade_state_dict(state_dict: dict, prefix: str = "") -> dict:
    """A CoCa state dict of an older coca_min, in place: its temperature `log_logit_scale` was a
    0-d parameter, and is now of shape (1,). `CoCa.load_state_dict` calls it; call it yourself
    before loading a state dict some other way (FSDP2's `set_model_state_dict`). -> the dict."""
    key = prefix + "log_logit_scale"
    value = state_dict.get(key)
    if isinstance(value, torch.Tensor) and value.dim() == 0:
        state_dict[key] = value.reshape(1)
    return state_dict


def count_parameters(model: CoCa) -> dict:
    """Parameter counts as Table 1 counts them: image encoder, text decoder, and the poolers
    (both poolers, the image projection and the temperature) apart. Tied weights count once."""
    encoder = sum(p.numel() for p in model.image_encoder.parameters())
    decoder = sum(p.numel() for p in model.text_decoder.parameters())
    total = sum(p.numel() for p in model.parameters())
    return {"encoder": encoder, "decoder": decoder, "poolers": total - encoder - decoder, "total": total}
