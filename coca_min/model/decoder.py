"""The decoupled text decoder (paper §3.2 "Decoupled text decoder", Figure 2).

The decoder is cut in two halves:

- `n_uni` **unimodal** layers: causal self-attention only, no image. They encode the text on its
  own. A learnable [CLS] token is appended at the end of the text; its output, after a
  LayerNorm and a projection, is the text embedding of the contrastive loss.
- `n_multi` **multimodal** layers: causal self-attention, then cross-attention to the caption
  pooler's output, then the MLP. Their outputs go through a LayerNorm and the LM head to give
  next-token logits for the captioning loss.

Both halves are causal, so the captioning objective never sees the future, and one pass serves
both losses (`unimodal` once, `multimodal` on its token outputs).

Padding: texts are right-padded `[BOS] w1 … wn [EOS] [PAD] …`. Causal masking already keeps real
tokens from seeing the padding after them; the [CLS] token, which comes after the padding, is
kept from attending to padding by the mask, and it has no position embedding, so the text
embedding is the same whatever the padded length (open_clip's CoCa gets this wrong: its [CLS]
attends to the first pad and not to itself, issues #549 and #1113).

`decode_step` runs both halves one new token at a time with a key/value cache, for captioning.
Left out: dropout.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import Block, causal_padding_mask


class TextDecoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        c = config
        self.pad_id = c.pad_id
        self.token_embedding = nn.Embedding(c.vocab_size, c.text_width)
        self.pos_embedding = nn.Parameter(torch.empty(c.context_length, c.text_width))
        self.cls_embedding = nn.Parameter(torch.empty(c.text_width))  # it gets no position
        self.unimodal_layers = nn.ModuleList(
            Block(c.text_width, c.text_heads, c.text_mlp) for _ in range(c.n_uni)
        )
        self.ln_cls = nn.LayerNorm(c.text_width)
        self.text_projection = nn.Linear(c.text_width, c.embed_dim, bias=False)
        self.multimodal_layers = nn.ModuleList(
            Block(c.text_width, c.text_heads, c.text_mlp, cross_attention=True)
            for _ in range(c.n_multi)
        )
        self.ln_final = nn.LayerNorm(c.text_width)
        self.lm_head = nn.Linear(c.text_width, c.vocab_size, bias=False)
        self.tie_embeddings = c.tie_embeddings
        self.reset_parameters()

    def reset_parameters(self):  # this module's own parameters; submodules have theirs
        nn.init.normal_(self.pos_embedding, std=0.01)
        nn.init.normal_(self.cls_embedding, std=0.02)
        if self.tie_embeddings:  # (again after `to_empty`, which unties shared parameters)
            self.lm_head.weight = self.token_embedding.weight  # one (V, D) matrix for both

    def unimodal(self, tokens):
        """Text alone: (B, T) token ids -> text embedding (B, E), unit norm; token features (B, T, D).

        A learned [CLS] is appended after the last position (after any padding), with no
        position embedding; the unimodal layers run causally, padding masked out
        (`causal_padding_mask`). The [CLS] output, layer-normed and projected, is the text
        embedding; the other positions' outputs are the token features for the multimodal half."""
        # BEGIN EXERCISE cls_token
        B, T = tokens.shape
        x = self.token_embedding(tokens) + self.pos_embedding[:T]  # (B, T, D)
        cls = self.cls_embedding.expand(B, 1, -1)  # (B, 1, D)
        x = torch.cat([x, cls], dim=1)  # (B, T + 1, D): [CLS] last, after any padding
        is_pad = F.pad(tokens == self.pad_id, (0, 1), value=False)  # (B, T + 1); [CLS] is real
        mask = causal_padding_mask(is_pad)  # (B, T + 1, T + 1)
        for layer in self.unimodal_layers:
            x = layer(x, mask=mask)
        token_features, cls_out = x[:, :T], x[:, T]  # (B, T, D), (B, D)
        text_embedding = F.normalize(self.text_projection(self.ln_cls(cls_out)), dim=-1)
        return text_embedding, token_features
        # END EXERCISE

    def new_cache(self) -> dict:
        """An empty key/value cache for `decode_step`: one dict per layer of both halves."""
        n_layers = len(self.unimodal_layers) + len(self.multimodal_layers)
        return {"length": 0, "layers": [{"self": {}, "cross": {}} for _ in range(n_layers)]}

    def decode_step(self, tokens, caption_tokens, cache):
        """Incremental decoding: the next tokens (B, t) after the `cache["length"]` tokens already
        seen -> their logits (B, t, V). Same numbers as `unimodal` then `multimodal` on the whole
        text (no [CLS] is needed to caption), at the cost of the new tokens only, for text without
        [PAD]: there is no padding mask here (generation never feeds [PAD] to a caption that goes
        on; an ended caption's later logits are not used)."""
        # BEGIN EXERCISE kv_cache_step
        start, t = cache["length"], tokens.shape[1]
        x = self.token_embedding(tokens) + self.pos_embedding[start : start + t]  # (B, t, D)
        # new token i (position start + i) may attend to every position up to its own
        mask = torch.ones(t, start + t, dtype=torch.bool, device=tokens.device).tril(diagonal=start)
        layers = [*self.unimodal_layers, *self.multimodal_layers]
        for layer, layer_cache in zip(layers, cache["layers"]):
            context = caption_tokens if layer.cross_attn is not None else None
            x = layer(x, mask=mask, context=context, cache=layer_cache)
        cache["length"] = start + t
        return self.lm_head(self.ln_final(x))  # (B, t, V)
        # END EXERCISE

    def multimodal(self, token_features, tokens, caption_tokens):
        """Text with image: unimodal features (B, T, D) of `tokens` (B, T) and the caption
        pooler's output (B, n_queries, D) -> next-token logits (B, T, V)."""
        mask = causal_padding_mask(tokens == self.pad_id)  # (B, T, T)
        x = token_features
        for layer in self.multimodal_layers:
            x = layer(x, mask=mask, context=caption_tokens)  # cross-attention sees every query
        return self.lm_head(self.ln_final(x))  # (B, T, V): position t predicts token t + 1
