"""What a trained CoCa can do, measured (paper §4.2-4.3) and used.

    evaluate.py        zero-shot classification, the captioner as a scorer, retrieval, caption scores
    metrics.py         Recall@K, top-k accuracy, BLEU-1..4, CIDEr-D
    hard_negatives.py  the true caption against near misses, both heads (tiny set)
    probe.py           attentive and linear probes on a frozen encoder
    video.py           video by frame pooling
    index.py           an embedding index of a collection of images, searched by text or image

Not a part of the model: everything here uses `coca_min.model` and never changes it.
"""
