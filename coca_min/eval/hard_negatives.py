"""Hard negatives on tiny_data: does the model prefer the true caption to a near miss?

Not in the paper. Retrieval can look strong while a model reads captions as bags of words
(Yuksekgonul et al. 2023, "When and why vision-language models behave like bags-of-words", the
ARO benchmark): a batch of captions can be told apart by their words alone. Here every test
image's canonical caption is set against captions with exactly one thing wrong:

- wrong_shape / wrong_colour / wrong_size: one object's attribute set to another value;
- wrong_place: one object moved to a free cell (the caption stays in raster order);
- swapped_colours / swapped_shapes: two objects exchange colours (shapes). The words are the
  same, only their binding differs: a bag-of-words model cannot do better than chance here.

Both of CoCa's heads score each pair: the contrastive one by the cosine of image and text
embeddings, the captioner by log p(caption | image), summed over tokens. A win is a strictly
higher score for the true caption (a tie is a loss); chance is 0.5. Swaps need two objects
that differ in what is swapped, so they are scored on fewer images.

Left out: ARO's own sets (Visual Genome relations and attributes, COCO / Flickr word order).
"""

import numpy as np
import torch

from coca_min.data.synthetic import shapes
from coca_min.data.tokenizer import drop_padding_columns
from coca_min.model.losses import text_log_likelihood

KINDS = ["wrong_shape", "wrong_colour", "wrong_size", "wrong_place", "swapped_colours", "swapped_shapes"]
ATTRIBUTE = {"wrong_shape": 0, "wrong_colour": 1, "wrong_size": 2, "swapped_shapes": 0, "swapped_colours": 1}
CHOICES = {0: len(shapes.SHAPES), 1: len(shapes.COLOURS), 2: len(shapes.SIZES)}


def negative_caption(objects, kind: str, rng) -> str | None:
    """The canonical caption of `objects` ((3, 5) ground truth) with one `kind` of error, or
    None where the scene has no such error to make (a swap needs two objects that differ)."""
    objs = [list(map(int, o)) for o in objects if o[0] != shapes.NO_OBJECT]
    k = int(rng.integers(len(objs)))  # the object to change
    if kind == "wrong_place":
        free = [(r, c) for r in range(3) for c in range(3) if all((o[3], o[4]) != (r, c) for o in objs)]
        objs[k][3:5] = free[int(rng.integers(len(free)))]
    elif kind.startswith("wrong_"):
        a = ATTRIBUTE[kind]
        objs[k][a] = (objs[k][a] + 1 + int(rng.integers(CHOICES[a] - 1))) % CHOICES[a]  # any other value
    else:  # a swap between two objects that differ in the attribute
        a = ATTRIBUTE[kind]
        pairs = [(i, j) for i in range(len(objs)) for j in range(i + 1, len(objs)) if objs[i][a] != objs[j][a]]
        if not pairs:
            return None
        i, j = pairs[int(rng.integers(len(pairs)))]
        objs[i][a], objs[j][a] = objs[j][a], objs[i][a]
    return shapes.canonical_caption(objs)


@torch.inference_mode()
def pair_scores(model, image_embedding, caption_tokens, tokens):
    """Both heads' scores of B (image, text) pairs, from the image side's encode_image outputs
    (B, E) and (B, n_queries, D) and the texts' tokens (B, T): cosine (B,), log p(text | image)
    (B,) by the captioner with teacher forcing, summed over the real tokens."""
    text_embedding, features = model.encode_text(tokens)  # (B, E), (B, T, D)
    logits = model.caption_logits(caption_tokens, tokens, features)  # (B, T-1, V)
    cosine = (image_embedding.float() * text_embedding.float()).sum(-1)
    return cosine, text_log_likelihood(logits, tokens[:, 1:], model.config.pad_id)


@torch.inference_mode()
def evaluate_hard_negatives(model, dataset, batch_size=250) -> dict:
    """{"contrastive": {kind: win rate}, "captioner": {kind: win rate}} on a TinyShapes split."""
    device, tokenizer, K = next(model.parameters()).device, dataset.tokenizer, 1 + len(KINDS)
    texts = []  # per image: [true caption, one negative per kind (None: no such negative)]
    for i, objects in enumerate(dataset.objects):
        rng = np.random.default_rng([i, 7])  # the same negatives for every model
        texts.append([shapes.canonical_caption(objects)] + [negative_caption(objects, k, rng) for k in KINDS])
    scores = {"contrastive": [], "captioner": []}  # per image batch: (b, K)
    for start in range(0, len(texts), batch_size):
        rows = texts[start : start + batch_size]
        image_embedding, caption_tokens = model.encode_image(dataset.images(range(start, start + len(rows))).to(device))
        flat = [t or row[0] for row in rows for t in row]  # (b·K) texts, image-major; None: a placeholder
        tokens = drop_padding_columns(tokenizer.encode_batch(flat, model.config.context_length).to(device), model.config.pad_id)
        cosine, log_p = pair_scores(model, image_embedding.repeat_interleave(K, 0),
                                    caption_tokens.repeat_interleave(K, 0), tokens)  # fmt: skip
        scores["contrastive"].append(cosine.view(-1, K))
        scores["captioner"].append(log_p.view(-1, K))
    exists = torch.tensor([[t is not None for t in row[1:]] for row in texts], device=device)  # (N, K-1)
    out = {}
    for head, parts in scores.items():
        s = torch.cat(parts)  # (N, K): the true caption's score first
        wins = (s[:, :1] > s[:, 1:]) & exists
        out[head] = {k: (wins[:, j].sum() / exists[:, j].sum()).item() for j, k in enumerate(KINDS)}
    return out
