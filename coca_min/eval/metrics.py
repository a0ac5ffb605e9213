"""Evaluation metrics, written from scratch: ranking metrics and caption metrics (SPEC §5).

- `retrieval_recalls`: image->text and text->image Recall@K, where an image with several
  captions counts as found if any of its captions is in the top K, and a caption that
  describes several images (the same text) is right for each of them.
- `top_k_accuracy`: zero-shot classification accuracy.
  Ties count against the model everywhere: the right answer is "in the top K" only if fewer
  than K wrong answers score at least as high. (A model that gives every image the same
  embedding scores 0, not 1.)
- `bleu` (BLEU-1..4) and `cider_d` follow the COCO caption evaluation code (pycocoevalcap):
  corpus-level BLEU with the closest reference length, and CIDEr-D with tf-idf weights whose
  document frequencies come from the evaluated images' references, a Gaussian length penalty
  (σ = 6), clipped n-gram counts and a x10 scale. `caption_words` stands in for its PTB
  tokenizer: lower case, punctuation stripped.

Left out: METEOR and SPICE (they need Java tools), and the PTB tokenizer's finer rules.
"""

import math
import re
from collections import Counter

import numpy as np
import torch


def wrong_at_least_as_high(scores, correct):
    """scores (N, M), correct (N, M) bool, at least one True per row -> (N,) the number of wrong
    candidates scoring at least as high as the best correct one: the rank of the first hit."""
    # BEGIN EXERCISE retrieval_rank
    best_correct = scores.masked_fill(~correct, float("-inf")).max(dim=1, keepdim=True).values
    return ((scores >= best_correct) & ~correct).sum(dim=1)
    # END EXERCISE


def top_k_accuracy(scores, labels, ks=(1, 5)) -> dict:
    """scores (N, C) for N samples and C classes, labels (N,) -> {"top1": …, "top5": …}."""
    correct = torch.zeros_like(scores, dtype=torch.bool)
    correct[torch.arange(len(labels)), labels] = True
    rank = wrong_at_least_as_high(scores, correct)
    return {f"top{k}": (rank < k).float().mean().item() for k in ks}


def retrieval_recalls(image_embeddings, text_embeddings, belongs, ks=(1, 5, 10)) -> dict:
    """image (N, E) and text (M, E) embeddings; belongs (N, M) bool, True where text m is a
    caption of image n (a text may describe several images, an image have several texts).

    Returns {"image_to_text_R@1": …, "text_to_image_R@1": …, …} for each K in `ks`.
    """
    similarity = image_embeddings @ text_embeddings.T  # (N, M)
    belongs = belongs.to(similarity.device)
    image_rank = wrong_at_least_as_high(similarity, belongs)  # (N,): best caption of each image
    text_rank = wrong_at_least_as_high(similarity.T, belongs.T)  # (M,): best image of each text
    out = {}
    for k in ks:
        out[f"image_to_text_R@{k}"] = (image_rank < k).float().mean().item()
        out[f"text_to_image_R@{k}"] = (text_rank < k).float().mean().item()
    return out


# --- caption metrics -------------------------------------------------------------------------


def caption_words(text: str) -> list[str]:
    """Lower-case words without punctuation: "A red circle." -> ["a", "red", "circle"]."""
    return re.findall(r"[a-z0-9]+", text.lower())


def ngrams(words, n_max=4) -> Counter:
    """Counts of every n-gram, n = 1..n_max, as tuples."""
    return Counter(tuple(words[i : i + n]) for n in range(1, n_max + 1) for i in range(len(words) - n + 1))


def bleu(candidates, references, n_max=4) -> list[float]:
    """Corpus BLEU-1..n_max, as pycocoevalcap computes it. candidates: list of str; references:
    list of lists of str. Words by `caption_words`. BLEU-n is the geometric mean of the clipped
    1..n-gram precisions over the corpus (a candidate n-gram counts at most as often as in the
    reference that has it most; smoothed as (correct + 1e-15) / (total + 1e-9)), times the
    brevity penalty exp(1 - r / c) when c < r, where c is the candidates' total length and r
    sums, per image, the reference length closest to its candidate's (the shorter on a tie)."""
    # BEGIN EXERCISE bleu
    correct, total = [0] * n_max, [0] * n_max
    cand_len = ref_len = 0
    for cand, refs in zip(candidates, references):
        words, ref_words = caption_words(cand), [caption_words(r) for r in refs]
        counts = ngrams(words, n_max)
        max_ref = Counter()  # each n-gram's largest count in any one reference: the clip
        for r in ref_words:
            max_ref |= ngrams(r, n_max)
        for gram, count in counts.items():
            correct[len(gram) - 1] += min(count, max_ref[gram])
        for n in range(1, n_max + 1):
            total[n - 1] += max(len(words) - n + 1, 0)
        cand_len += len(words)
        ref_len += min((abs(len(r) - len(words)), len(r)) for r in ref_words)[1]  # closest, shorter on ties
    tiny, small = 1e-15, 1e-9  # pycocoevalcap's smoothing constants
    scores, product = [], 1.0
    for n in range(n_max):
        product *= (correct[n] + tiny) / (total[n] + small)
        scores.append(product ** (1 / (n + 1)))  # geometric mean of the first n+1 precisions
    ratio = (cand_len + tiny) / (ref_len + small)
    brevity = math.exp(1 - 1 / ratio) if ratio < 1 else 1.0
    return [s * brevity for s in scores]
    # END EXERCISE


def cider_d(candidates, references, n_max=4, sigma=6.0) -> float:
    """CIDEr-D, mean over images, as pycocoevalcap computes it. Per n = 1..n_max: TF-IDF vectors
    of n-gram counts, the document frequency counted over the images' references only; the
    candidate's weights clipped at the reference's, cosine-like similarity (divided by both
    norms), times exp(-(l_c - l_r)² / 2σ²) where l is the number of bigrams; averaged over n
    and the references, times 10."""
    # BEGIN EXERCISE cider_d
    cand_grams = [ngrams(caption_words(c), n_max) for c in candidates]
    ref_grams = [[ngrams(caption_words(r), n_max) for r in refs] for refs in references]
    doc_freq = Counter(g for refs in ref_grams for g in set().union(*refs))  # over references only
    log_n_images = math.log(len(references))

    def tfidf(counts):  # -> per n: {gram: weight}, per n: norm, and the "length"
        vecs = [{} for _ in range(n_max)]
        for gram, tf in counts.items():
            vecs[len(gram) - 1][gram] = tf * (log_n_images - math.log(max(1.0, doc_freq[gram])))
        norms = [math.sqrt(sum(w * w for w in v.values())) for v in vecs]
        # pycocoevalcap's "length" counts bigrams (words - 1); kept so that scores agree with it
        length = sum(tf for gram, tf in counts.items() if len(gram) == 2)
        return vecs, norms, length

    scores = []
    for cand, refs in zip(cand_grams, ref_grams):
        vec, norm, length = tfidf(cand)
        total = np.zeros(n_max)
        for ref in refs:
            rvec, rnorm, rlength = tfidf(ref)
            for n in range(n_max):
                dot = sum(min(w, rvec[n].get(g, 0.0)) * rvec[n].get(g, 0.0) for g, w in vec[n].items())
                if norm[n] and rnorm[n]:
                    dot /= norm[n] * rnorm[n]
                total[n] += dot * math.exp(-((length - rlength) ** 2) / (2 * sigma**2))
        scores.append(10.0 * total.mean() / len(refs))
    return float(np.mean(scores))
    # END EXERCISE
