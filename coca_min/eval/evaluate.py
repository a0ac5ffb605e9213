"""The standard evaluations of a trained CoCa, in small (paper §4.2-4.3, SPEC §5).

- Zero-shot classification: each class name is put into several prompt templates; their text
  embeddings are normalised, averaged and normalised again into one class embedding, compared
  with the contrastive image embedding.
- CoCa as a scorer: the same classes ranked instead by the captioner's log p(prompt | image),
  averaged over templates: the generative alternative to zero-shot, same interface.
- Retrieval: image->text and text->image Recall@1/5/10 with several captions per image.
- Captioning: BLEU-1..4 and CIDEr-D of generated captions; on the tiny set also object-level
  precision / recall / F1 and exact match, by parsing the captions against the ground truth.
- Hard negatives (tiny set, `hard_negatives.py`): true caption against near misses.

Everything runs batched under `torch.inference_mode()` on the model's device, with a progress
bar for long sets. Metrics themselves are in `metrics.py`. Attentive probing (it trains a
pooler) is in `probe.py`, video in `video.py`. Left out: fine-tuning.
"""

import sys
import warnings

import torch
from tqdm import tqdm

from coca_min.data.datasets import TinyShapes, normalize
from coca_min.data.synthetic import shapes
from coca_min.data.tokenizer import drop_padding_columns
from coca_min.model.generate import caption
from coca_min.model.losses import text_log_likelihood
from coca_min.words import with_article

from .hard_negatives import evaluate_hard_negatives
from .metrics import bleu, cider_d, retrieval_recalls, top_k_accuracy

# prompt templates for tiny_data's 40 colour-shape classes: "there is a red circle", …
TINY_TEMPLATES = ["there is {}"] + ["{} is " + shapes.place_phrase(r, c) for r in range(3) for c in range(3)]
TINY_CLASSES = [with_article(f"{colour} {shape}") for colour, shape in shapes.PAIRS]


def _device(model):
    return next(model.parameters()).device


def image_batches(dataset, batch_size=256, desc="images"):
    """(normalised images (b, 3, S, S), their indices (b,)) over a whole data set, in order, on
    no device yet. An image that cannot be read is left out, never replaced by another (its
    captions would then be scored against the wrong picture): one warning at the end counts
    them. A `strict` data set raises instead."""
    starts, left_out = range(0, len(dataset), batch_size), []
    quiet = len(starts) < 8 or not sys.stderr.isatty()  # a bar only in a terminal: in a log it is \r fragments
    for start in tqdm(starts, desc=desc, disable=quiet, leave=False):
        indices = list(range(start, min(start + batch_size, len(dataset))))
        if hasattr(dataset, "images"):  # the tiny set decodes a whole batch at once, in memory
            yield dataset.images(indices), torch.tensor(indices)
            continue
        items = [dataset[i] for i in indices]  # None: unreadable
        left_out += [i for i, item in zip(indices, items) if item is None]
        kept = [(i, item[0]) for i, item in zip(indices, items) if item is not None]
        if kept:
            yield normalize(torch.stack([image for _, image in kept])), torch.tensor([i for i, _ in kept])  # files: uint8
    if left_out and len(left_out) == len(dataset):
        raise ValueError(f"none of the {len(dataset)} images of this data set could be read")
    if left_out:
        names = [str(dataset.paths[i]) if hasattr(dataset, "paths") else f"item {i}" for i in left_out]
        more = f" and {len(names) - 3} more" if len(names) > 3 else ""
        warnings.warn(f"left {len(left_out)} of {len(dataset)} images out of this evaluation, with their captions: "
                      f"they could not be read ({', '.join(names[:3])}{more})")  # fmt: skip


@torch.inference_mode()
def embed_images(model, dataset, batch_size=256):
    """(M, E) unit-norm contrastive image embeddings of the M readable images of a data set,
    and their indices (M,) in it (all N of them unless some file could not be read)."""
    device, embeddings, kept = _device(model), [], []
    for images, indices in image_batches(dataset, batch_size):
        embeddings.append(model.encode_image(images.to(device))[0].float())
        kept.append(indices)
    return torch.cat(embeddings), torch.cat(kept)


@torch.inference_mode()
def embed_texts(model, tokenizer, texts, batch_size=1024):
    """(M, E) unit-norm text embeddings of a list of strings."""
    device, length = _device(model), model.config.context_length
    chunks = [texts[i : i + batch_size] for i in range(0, len(texts), batch_size)]
    return torch.cat([model.encode_text(tokenizer.encode_batch(c, length).to(device))[0].float() for c in chunks])


def class_embeddings(model, tokenizer, classnames, templates):
    """(C, E): per class, the normalised mean of its templates' normalised text embeddings."""
    texts = [t.format(name) for name in classnames for t in templates]
    per_prompt = embed_texts(model, tokenizer, texts).view(len(classnames), len(templates), -1)
    return torch.nn.functional.normalize(per_prompt.mean(dim=1), dim=-1)


def zero_shot_scores(model, tokenizer, dataset, classnames, templates):
    """(M, C) cosine similarities between each readable image and each class embedding, and
    the images' indices (M,) (see `embed_images`)."""
    images, kept = embed_images(model, dataset)
    return images @ class_embeddings(model, tokenizer, classnames, templates).T, kept


@torch.inference_mode()
def likelihood_scores(model, tokenizer, dataset, classnames, templates, batch_size=8):
    """(M, C) log p(prompt | image) by the captioner, averaged over templates (teacher forcing),
    for the M readable images, and their indices (M,)."""
    device = _device(model)
    texts = [t.format(name) for name in classnames for t in templates]
    tokens = drop_padding_columns(tokenizer.encode_batch(texts, model.config.context_length).to(device), model.config.pad_id)
    _, features = model.encode_text(tokens)  # (C·P, T, D): text alone, computed once for every image
    scores, kept = [], []
    for images, indices in image_batches(dataset, batch_size, desc="scoring"):
        kept.append(indices)
        _, caption_tokens = model.encode_image(images.to(device))  # (b, n_q, D)
        b, n = len(images), len(texts)
        logits = model.caption_logits(  # every (image, prompt) pair: (b·n, T-1, V)
            caption_tokens.repeat_interleave(n, 0), tokens.repeat(b, 1), features.repeat(b, 1, 1)
        )
        log_p = text_log_likelihood(logits, tokens[:, 1:].repeat(b, 1), model.config.pad_id)  # (b·n,)
        scores.append(log_p.view(b, len(classnames), len(templates)).mean(-1))
    return torch.cat(scores), torch.cat(kept)


def evaluate_tiny_zero_shot(model, tokenizer, dataset, scorer="contrastive"):
    """Zero-shot accuracy on tiny_data's `classes` split: overall, on seen and on held-out
    colour-shape pairs, and colour / shape accuracy alone. Returns (metrics, scores, labels)."""
    score = zero_shot_scores if scorer == "contrastive" else likelihood_scores
    scores, kept = score(model, tokenizer, dataset, TINY_CLASSES, TINY_TEMPLATES)
    scores = scores.cpu()
    objects = torch.as_tensor(dataset.objects[kept.numpy(), 0].astype("int64"))  # (N, 5): the one object
    labels = objects[:, 1] * len(shapes.SHAPES) + objects[:, 0]  # index into shapes.PAIRS
    held = torch.tensor([shapes.PAIRS[i] in shapes.HELD_OUT for i in labels.tolist()])
    predicted = scores.argmax(dim=1)
    out = top_k_accuracy(scores, labels)
    out["top1_seen"] = top_k_accuracy(scores[~held], labels[~held], ks=(1,))["top1"]
    out["top1_held_out"] = top_k_accuracy(scores[held], labels[held], ks=(1,))["top1"]
    out["colour_accuracy"] = (predicted // 5 == labels // 5).float().mean().item()
    out["shape_accuracy"] = (predicted % 5 == labels % 5).float().mean().item()
    return out, scores, labels


def caption_owners(captions):
    """captions: a list (one per image) of lists of str -> (all texts in order, belongs (N, M)
    bool, True where text m is a caption of image n). A text counts for every image that has
    exactly that text: on tiny_data two scenes can be identical ("a small red square at the
    top"), and no model can tell which of the two a shared text was written for."""
    texts = [t for caps in captions for t in caps]
    text_id = {t: i for i, t in enumerate(dict.fromkeys(texts))}  # one id per distinct text
    has_text = torch.zeros(len(captions), len(text_id), dtype=torch.bool)  # (N, distinct texts)
    for n, caps in enumerate(captions):
        has_text[n, [text_id[t] for t in caps]] = True
    return texts, has_text[:, [text_id[t] for t in texts]]


def evaluate_retrieval(model, dataset, ks=(1, 5, 10)):
    """Recall@K both ways, with every caption of every (readable) image of a data set."""
    images, kept = embed_images(model, dataset)
    texts, belongs = caption_owners([dataset.captions[i] for i in kept.tolist()])
    return retrieval_recalls(images, embed_texts(model, dataset.tokenizer, texts).to(images.device), belongs, ks)


def evaluate_captions(model, dataset, batch_size=128, **decoding):
    """Generated captions against all references: BLEU-1..4, CIDEr-D; on the tiny set also
    object-level precision / recall / F1 and exact match. Returns (metrics, captions): one
    caption per image, None for an image that could not be read (and is not scored)."""
    device, generated = _device(model), [None] * len(dataset)
    for images, indices in image_batches(dataset, batch_size, desc="captioning"):
        for i, text in zip(indices.tolist(), caption(model, dataset.tokenizer, images.to(device), **decoding)):
            generated[i] = text
    kept = [i for i, text in enumerate(generated) if text is not None]
    texts, references = [generated[i] for i in kept], [dataset.captions[i] for i in kept]
    out = {f"BLEU-{n + 1}": v for n, v in enumerate(bleu(texts, references))}
    out["CIDEr-D"] = cider_d(texts, references)
    if hasattr(dataset, "objects"):
        out.update(object_scores(texts, dataset.objects[kept]))
    return out, generated


def object_scores(captions, objects):
    """Micro-averaged object precision / recall / F1 (an object counts only with its shape,
    colour, size and position all right) and the rate of captions that state exactly the
    image's objects. objects: (N, 3, 5) ground truth as in tiny_data."""
    matched = n_predicted = n_true = exact = 0
    for text, objs in zip(captions, objects):
        truth = sorted(tuple(int(v) for v in o) for o in objs if o[0] != shapes.NO_OBJECT)
        predicted = sorted(shapes.parse_caption(text))
        remaining = list(truth)
        for obj in predicted:
            if obj in remaining:
                remaining.remove(obj)
                matched += 1
        n_predicted, n_true, exact = n_predicted + len(predicted), n_true + len(truth), exact + (predicted == truth)
    precision, recall = matched / max(n_predicted, 1), matched / max(n_true, 1)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"object_precision": precision, "object_recall": recall, "object_F1": f1, "exact_match": exact / len(captions)}


def plot_confusion(scores, labels, classnames, path, title="zero-shot confusion"):
    """Save a confusion-matrix PNG: rows are true classes, columns predicted ones."""
    from matplotlib.figure import Figure  # to a file, leaving pyplot's backend and figures alone

    C = len(classnames)
    matrix = torch.zeros(C, C).index_put_((labels, scores.argmax(1)), torch.ones(len(labels)), accumulate=True)
    fig = Figure(figsize=(0.22 * C + 3, 0.22 * C + 2.5))
    ax = fig.subplots()
    ax.imshow((matrix / matrix.sum(1, keepdim=True).clamp(min=1)).numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(C), classnames, rotation=90, fontsize=6)
    ax.set_yticks(range(C), classnames, fontsize=6)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return matrix


def tiny_report(model, tokenizer, limit=None, n_examples=5):
    """The tiny set's final report: zero-shot on `classes` (seen and held-out pairs), on
    `test` and `test_comp` retrieval R@1/5 both ways and greedy-caption scores, with examples,
    and both heads' hard-negative win rates on `test`.
    Returns (report, (zero-shot scores, labels)) so that a confusion matrix can be drawn."""
    classes = TinyShapes("classes", tokenizer, limit=limit)
    zero_shot, scores, labels = evaluate_tiny_zero_shot(model, tokenizer, classes)
    report = {"zero_shot": zero_shot}
    for split in ["test", "test_comp"]:
        data = TinyShapes(split, tokenizer, limit=limit)
        captions, generated = evaluate_captions(model, data)
        report[split] = {**evaluate_retrieval(model, data, ks=(1, 5)), **captions}
        report[split]["examples"] = [{"generated": g, "reference": refs[0]} for g, refs in
                                     zip(generated[:n_examples], data.captions)]  # fmt: skip
    # win rates against near-miss captions, both heads (hard_negatives.py), on 500 test images
    hard = evaluate_hard_negatives(model, TinyShapes("test", tokenizer, limit=min(limit or 500, 500)))
    report["hard_neg_con"], report["hard_neg_cap"] = hard["contrastive"], hard["captioner"]
    return report, (scores, labels)
