"""The paper: CoCa's model, its losses and its decoding, and nothing else.

    layers.py    attention (F.scaled_dot_product_attention), MLP, pre-LN block, the text mask   §3.2
    vit.py       the image encoder, a ViT without [CLS]                                        §3.2
    pooler.py    the attentional pooler: learned queries, one attention layer                  §3.2
    decoder.py   the decoupled text decoder: unimodal, then multimodal layers; [CLS] last      §3.2
    coca.py      `CoCa`: the parts wired together (cascade or parallel poolers)               Fig. 2
    losses.py    the contrastive loss (eq. 1), the captioning loss (eq. 2), their sum (eq. 3)  §3.1
    generate.py  captioning: greedy, beam search, sampling, the key/value cache               §4.3
    flops.py     the FLOPs of a step, from the config (for MFU)

This sub-package imports nothing of coca_min but itself and `coca_min.config` (a test checks
it): data, training and evaluation are built on it, never the other way round.
"""

from .coca import CoCa, count_parameters

__all__ = ["CoCa", "count_parameters"]
