"""Hard negatives: each near-miss caption has exactly one thing wrong; both heads' scores are
the model's own; win rates count strict wins only."""

import numpy as np
import pytest
import torch

from coca_min.data.datasets import TinyShapes
from coca_min.data.synthetic import shapes
from coca_min.eval import hard_negatives
from coca_min.eval.hard_negatives import KINDS, evaluate_hard_negatives, negative_caption, pair_scores
from coca_min.model.losses import caption_loss

WHAT = {"wrong_shape": [0], "wrong_colour": [1], "wrong_size": [2], "wrong_place": [3, 4],
        "swapped_shapes": [0], "swapped_colours": [1]}  # fmt: skip


def truth(objects):
    return sorted(tuple(int(v) for v in o) for o in objects if o[0] != shapes.NO_OBJECT)


@pytest.mark.parametrize("kind", KINDS)
def test_each_negative_has_exactly_one_thing_wrong(kind):
    test = TinyShapes("test", limit=300)
    made = 0
    for i, objects in enumerate(test.objects):
        negative = negative_caption(objects, kind, np.random.default_rng(i))
        true_objects, canonical = truth(objects), shapes.canonical_caption(objects)
        if kind.startswith("swapped"):  # possible exactly when two objects differ in it
            a = WHAT[kind][0]
            assert (negative is None) == (len({o[a] for o in true_objects}) < 2)
            if negative is None:
                continue
            assert sorted(negative.split()) == sorted(canonical.split())  # the same bag of words
        made += 1
        parsed = shapes.parse_caption(negative)
        assert negative != canonical and len(parsed) == len(true_objects)
        assert [o[3:] for o in parsed] == sorted(o[3:] for o in parsed)  # still in raster order
        changed = [o for o in parsed if o not in true_objects]
        assert len(changed) == (2 if kind.startswith("swapped") else 1)
        for new in changed:  # each changed object differs from some true one only in WHAT[kind]
            assert any(all(new[k] == old[k] for k in range(5) if k not in WHAT[kind]) for old in true_objects)
    assert made >= 100


def test_pair_scores_are_the_models_cosine_and_caption_log_likelihood(tiny):
    test = TinyShapes("test", limit=4)
    images = test.images(range(4))
    tokens = test.tokenizer.encode_batch([c[0] for c in test.captions], tiny.config.context_length)
    image_embedding, caption_tokens = tiny.encode_image(images)
    cosine, log_p = pair_scores(tiny, image_embedding, caption_tokens, tokens)
    outputs = tiny(images, tokens)
    torch.testing.assert_close(cosine, (outputs["image_embedding"] * outputs["text_embedding"]).sum(-1))
    for i in range(4):  # log p(caption | image) = -(mean token cross-entropy) x (real tokens)
        targets = tokens[i : i + 1, 1:]
        expected = -caption_loss(outputs["logits"][i : i + 1], targets, 0) * (targets != 0).sum()
        torch.testing.assert_close(log_p[i], expected, rtol=1e-5, atol=1e-4)


def test_win_rates_count_strict_wins_and_a_bag_of_words_score_ties_every_swap(tiny, monkeypatch):
    test = TinyShapes("test", limit=60)

    def bag_of_words(model, image_embedding, caption_tokens, tokens):  # order-blind scores
        score = tokens.double().sum(-1)
        return score, -score

    monkeypatch.setattr(hard_negatives, "pair_scores", bag_of_words)
    rates = evaluate_hard_negatives(tiny, test, batch_size=25)
    encode = lambda text: sum(test.tokenizer.encode(text, tiny.config.context_length))
    for j, kind in enumerate(KINDS):
        wins_con = wins_cap = n = 0
        for i, objects in enumerate(test.objects):
            rng = np.random.default_rng([i, 7])
            negatives = [negative_caption(objects, k, rng) for k in KINDS]
            if negatives[j] is None:
                continue
            true, negative = encode(shapes.canonical_caption(objects)), encode(negatives[j])
            n, wins_con, wins_cap = n + 1, wins_con + (true > negative), wins_cap + (-true > -negative)
        assert rates["contrastive"][kind] == pytest.approx(wins_con / n)
        assert rates["captioner"][kind] == pytest.approx(wins_cap / n)
    assert rates["contrastive"]["swapped_colours"] == rates["captioner"]["swapped_shapes"] == 0.0  # ties lose
