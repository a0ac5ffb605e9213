"""Ranking metrics on hand-made scores (ties included) and caption metrics on worked examples."""

import math

import pytest
import torch

from coca_min.eval.metrics import bleu, caption_words, cider_d, retrieval_recalls, top_k_accuracy


def test_retrieval_with_several_captions_per_image_and_ties():
    # texts are one-hot, so the similarity matrix image x text is the image embeddings themselves
    similarity = torch.tensor([
        [0.9, 0.1, 0.8, 0.0, 0.0],  # image 0 owns texts 0, 1: text 0 is first -> hit at 1
        [0.5, 0.5, 0.4, 0.6, 0.0],  # image 1 owns text 2: three wrong texts above -> hit at 5 only
        [0.3, 0.3, 0.3, 0.3, 0.2],  # image 2 owns texts 3, 4: tied with three wrong ones -> miss at 1
    ])  # fmt: skip
    owner = torch.tensor([0, 0, 1, 2, 2])
    belongs = owner[None, :] == torch.arange(3)[:, None]  # (3 images, 5 texts)
    r = retrieval_recalls(similarity, torch.eye(5), belongs, ks=(1, 5))
    assert r["image_to_text_R@1"] == pytest.approx(1 / 3)
    assert r["image_to_text_R@5"] == 1.0
    # columns: text 0 -> image 0 first (hit); text 1: 0.1 below 0.5, 0.3 (miss); text 2: 0.4 below
    # 0.8 (miss); text 3: 0.3 below 0.6 (miss); text 4: 0.2 above 0, 0 (hit)
    assert r["text_to_image_R@1"] == pytest.approx(2 / 5)
    assert r["text_to_image_R@5"] == 1.0


def test_retrieval_a_shared_caption_is_right_for_every_image_it_describes():
    # images 0 and 1 are the same scene: text 0 is a caption of both, text 1 of image 2 only
    similarity = torch.tensor([[0.9, 0.1], [0.8, 0.65], [0.7, 0.6]])
    belongs = torch.tensor([[True, False], [True, False], [False, True]])
    r = retrieval_recalls(similarity, torch.eye(2), belongs, ks=(1,))
    assert r["image_to_text_R@1"] == pytest.approx(2 / 3)  # image 2 ranks text 0 first: a miss
    assert r["text_to_image_R@1"] == 0.5  # text 0 finds image 0 (right); text 1 finds image 1 (wrong)


def test_caption_owners_matches_identical_texts_across_images():
    from coca_min.eval.evaluate import caption_owners

    captions = [["a red circle", "there is a red circle"], ["a red circle", "there is a red circle"], ["a blue square"]]
    texts, belongs = caption_owners(captions)
    assert texts == ["a red circle", "there is a red circle", "a red circle", "there is a red circle", "a blue square"]
    expected = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 0], [0, 0, 0, 0, 1]], dtype=torch.bool)
    assert torch.equal(belongs, expected)


def test_top_k_accuracy_counts_ties_against_the_model():
    scores = torch.tensor([[0.5, 0.5, 0.1], [0.2, 0.9, 0.9], [0.3, 0.1, 0.2]])
    labels = torch.tensor([0, 2, 0])  # images 0 and 1 tie their true class with a wrong one
    assert top_k_accuracy(scores, labels, ks=(1, 2)) == {"top1": pytest.approx(1 / 3), "top2": 1.0}
    constant = torch.zeros(4, 3)  # a model that cannot tell anything apart gets nothing
    assert top_k_accuracy(constant, torch.tensor([0, 1, 2, 0]), ks=(1,))["top1"] == 0.0


def test_caption_words_lowercase_without_punctuation():
    assert caption_words("A red Circle, at the TOP-left.") == ["a", "red", "circle", "at", "the", "top", "left"]


def test_bleu_worked_example():
    candidates = ["a red circle on the top", "there is a red circle"]
    references = [["a red circle at the top left", "there is a red circle"], ["there is a red circle"]]
    # candidate 1 against the clip of both references: 1-grams 5/6 (not "on"); 2-grams 3/5
    # (a red, red circle, the top); 3-grams 1/4 (a red circle); 4-grams 0/3.
    # candidate 2 matches its reference exactly: 5/5, 4/4, 3/3, 2/2.
    p1, p2, p3, p4 = (5 + 5) / (6 + 5), (3 + 4) / (5 + 4), (1 + 3) / (4 + 3), (0 + 2) / (3 + 2)
    # lengths: 6 + 5 = 11; closest references: 7 or 5 for 6 words, a tie -> the shorter, 5; and 5
    # -> 10 <= 11, no brevity penalty
    expected = [p1, (p1 * p2) ** (1 / 2), (p1 * p2 * p3) ** (1 / 3), (p1 * p2 * p3 * p4) ** (1 / 4)]
    assert bleu(candidates, references) == pytest.approx(expected, rel=1e-9)


def test_bleu_clips_repeats_and_penalises_brevity():
    # "the the the": each "the" counts at most as often as in a reference (once): 1/3
    assert bleu(["the the the"], [["the cat"]])[0] == pytest.approx(1 / 3, rel=1e-9)  # 3 >= 2 words: no penalty
    # 2 words against a 3-word reference: every 1-gram right, brevity penalty e^(1 - 3/2)
    assert bleu(["a red"], [["a red circle"]])[0] == pytest.approx(math.exp(1 - 3 / 2), rel=1e-9)


def test_cider_d_worked_example():
    # image 1: "a b" against "a b"; image 2: "a c" against "a d". Document frequencies over the
    # references: a 2, b 1, "a b" 1, d 1, "a d" 1; c never appears in a reference (df 0 -> 1).
    # with log2 = log(number of images):
    # image 1: weights a: 1·(log2 - log2) = 0, b: log2, "a b": log2 on both sides -> cosine 1 for
    # n = 1 and n = 2, nothing for n = 3, 4; same length, no penalty: 10 · (1 + 1 + 0 + 0) / 4
    image_1 = 10 * (1 + 1) / 4
    # image 2: c (weight log2 - 0) and "a c" are not in the reference; a has weight 0 -> 0
    image_2 = 0.0
    assert cider_d(["a b", "a c"], [["a b"], ["a d"]]) == pytest.approx((image_1 + image_2) / 2)
    # clipping and the length penalty: "a b b" against "a b"
    #  n=1: cand b weighs 2·log2, ref b log2: min(2 log2, log2)·log2 / (2 log2 · log2) = 1/2
    #  n=2: "a b" log2 both, "b b" only in cand: log2² / (√2 log2 · log2) = 1/√2
    #  length penalty: pycocoevalcap counts bigrams, 2 against 1 -> e^(-(2 - 1)² / (2 · 6²))
    image_1 = 10 * (1 / 2 + 1 / math.sqrt(2)) / 4 * math.exp(-1 / (2 * 6**2))
    assert cider_d(["a b b", "a c"], [["a b"], ["a d"]]) == pytest.approx((image_1 + 0.0) / 2)


def test_cider_d_document_frequency_comes_from_the_evaluated_references():
    # image A: "a b" against "a b c"; image B's candidate "q" matches nothing, so the mean is A / 2
    alone = cider_d(["a b", "q"], [["a b c"], ["x y"]])
    # when B's reference also says "a", the word "a" loses its idf weight and A's score changes
    assert cider_d(["a b", "q"], [["a b c"], ["a x"]]) != pytest.approx(alone)
    # candidates are not documents: B's candidate repeating A's words changes nothing for A
    assert cider_d(["a b", "a b q"], [["a b c"], ["x y"]]) == pytest.approx(alone)
    assert alone > 0


def test_identical_candidate_and_references_give_the_maximum():
    captions = ["a small red circle at the top left", "there is a blue square and a green cross"]
    assert bleu(captions, [[c] for c in captions]) == pytest.approx([1.0] * 4)
    assert cider_d(captions, [[c, c] for c in captions]) == pytest.approx(10.0)
