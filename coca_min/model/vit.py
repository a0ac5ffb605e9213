"""The image encoder: a Vision Transformer (paper §3.2, Table 1 "Image Encoder").

An image is cut into non-overlapping patch_size x patch_size patches; each patch is flattened
and projected linearly to `width`, a learned position embedding is added, and the tokens go
through pre-LayerNorm transformer blocks. The output is one feature vector per patch.

Unlike the classification ViT there is no [CLS] token: CoCa pools image tokens with its
attentional poolers (`pooler.py`) instead. Left out: dropout, stochastic depth, and
interpolating the position embedding to a new resolution (the paper's 576 px stage).
"""

import torch
import torch.nn as nn
from einops import rearrange

from .layers import Block


class VisionTransformer(nn.Module):
    def __init__(self, image_size, patch_size, width, layers, heads, mlp_dim, channels=3):
        super().__init__()
        self.patch_size = patch_size
        n_patches = (image_size // patch_size) ** 2
        # a Linear on flattened patches is the same as a Conv2d with stride = kernel = patch_size
        self.patch_embed = nn.Linear(channels * patch_size * patch_size, width)
        self.pos_embed = nn.Parameter(torch.empty(n_patches, width))  # learned, one per patch
        self.blocks = nn.ModuleList(Block(width, heads, mlp_dim) for _ in range(layers))
        self.ln_out = nn.LayerNorm(width)
        self.reset_parameters()

    def reset_parameters(self):  # this module's own parameters; submodules have theirs
        # the same unit scale as the patch embeddings (Linear, std 1/√fan_in): where a patch is
        # weighs as much as what it shows. At std 0.02 position is 1/50 of each token, and the
        # model cannot learn to say where things are ("at the top left") in a short run.
        nn.init.normal_(self.pos_embed, std=1.0)

    def forward(self, images):  # (B, C, H, W) -> (B, N, width), N = (H / p)(W / p) patches
        # BEGIN EXERCISE vit_forward
        p = self.patch_size
        # raster order of patches; each patch flattened as (row in patch, column in patch, channel)
        patches = rearrange(images, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=p, p2=p)
        x = self.patch_embed(patches) + self.pos_embed  # (B, N, width)
        for block in self.blocks:
            x = block(x)  # no mask: every patch sees every patch
        return self.ln_out(x)
        # END EXERCISE
