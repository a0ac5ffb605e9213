"""Caption decoding: the cache changes nothing but speed; beam search, sampling and prompts
behave as specified; an overfit model captions its training images exactly."""

import itertools
import math

import pytest
import torch

from coca_min import CoCa, CoCaConfig
from coca_min.data.datasets import TinyShapes, collate
from coca_min.data.tokenizer import BOS, EOS, PAD
from coca_min.model.generate import Stepper, beam_search, caption, generate
from coca_min.model.losses import coca_loss, text_log_likelihood


@pytest.fixture(scope="module")
def images():
    return torch.randn(3, 3, 48, 48, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_cached_and_uncached_decoding_give_identical_tokens(tiny, images, method):
    cached, cached_scores = generate(tiny, images, method=method, max_new=32)
    uncached, uncached_scores = generate(tiny, images, method=method, max_new=32, use_cache=False)
    assert cached.shape[1] > 10 and torch.equal(cached, uncached)
    torch.testing.assert_close(cached_scores, uncached_scores, atol=1e-4, rtol=0)


def test_cached_logits_match_uncached_logits_at_every_step(tiny, images):
    tokens, _ = generate(tiny, images, max_new=20, min_new=20)
    with torch.inference_mode():
        _, caption_tokens = tiny.encode_image(images)
        cached, uncached = Stepper(tiny, caption_tokens), Stepper(tiny, caption_tokens, use_cache=False)
        cached(tokens[:, :4])  # a 4-token prefix in one go (as a prompt is fed), then one by one
        for length in range(5, tokens.shape[1] + 1):
            torch.testing.assert_close(cached(tokens[:, :length]), uncached(tokens[:, :length]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_beam_search_with_one_beam_follows_greedys_path(tiny, images, length_penalty):
    # one beam keeps the most likely token that does not end the caption, so it walks greedy's
    # path; what it returns is the best "greedy prefix + [EOS]" it met (or greedy's own caption)
    greedy_tokens, _ = generate(tiny, images, max_new=25)
    beam_tokens, _ = generate(tiny, images, method="beam", num_beams=1, max_new=25, length_penalty=length_penalty)
    for beam_row, greedy_row in zip(beam_tokens.tolist(), greedy_tokens.tolist()):
        n = beam_row.index(EOS) if EOS in beam_row else len(beam_row)
        assert beam_row[:n] == greedy_row[:n] and all(t == PAD for t in beam_row[n + 1 :])


def small_vocabulary_model(seed=2):
    """A random CoCa over 6 ids (pad, bos, eos and 3 words), small enough to enumerate captions."""
    torch.manual_seed(seed)
    config = CoCaConfig(image_size=8, patch_size=4, vision_width=16, vision_layers=1, vision_heads=2,
                        vision_mlp=32, n_caption_queries=4, pooler_heads=2, vocab_size=6, context_length=8,
                        text_width=16, text_heads=2, n_uni=1, n_multi=1, text_mlp=32, embed_dim=16)  # fmt: skip
    model = CoCa(config).eval()
    with torch.no_grad():
        model.text_decoder.lm_head.weight.mul_(4)  # peaked next-token distributions, no near-ties
        model.text_decoder.lm_head.weight[EOS].mul_(0.5)  # best captions of 1 to 4 tokens, not all 1
    return model, torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def brute_force_best(model, image, max_new, length_penalty, finished=True):
    """Enumerate every caption of 1..max_new generated tokens that ends with [EOS] (finished) or
    every caption of exactly max_new tokens without [EOS] (cut off); score each by teacher forcing
    as sum of log-probabilities / length^length_penalty. -> (best tokens, best score)."""
    words = [3, 4, 5]
    if finished:
        texts = [[BOS, *w, EOS] for n in range(max_new) for w in itertools.product(words, repeat=n)]
    else:
        texts = [[BOS, *w] for w in itertools.product(words, repeat=max_new)]
    width = max(map(len, texts))
    tokens = torch.tensor([t + [PAD] * (width - len(t)) for t in texts])
    with torch.no_grad():
        logits = model(image.expand(len(texts), -1, -1, -1), tokens)["logits"]
    lengths = torch.tensor([len(t) - 1 for t in texts], dtype=torch.float)  # generated, [EOS] included
    scores = text_log_likelihood(logits, tokens[:, 1:], PAD) / lengths**length_penalty
    best = int(scores.argmax())
    return texts[best], scores[best].item()


@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.0])
def test_beam_search_finds_the_best_finished_caption_of_brute_force(length_penalty):
    # with 3^(max_new - 1) beams every finished caption is met, so none may be lost
    model, images = small_vocabulary_model()
    max_new = 4
    tokens, scores = generate(model, images, method="beam", num_beams=27, max_new=max_new, length_penalty=length_penalty)
    cut_off_scores_higher = []
    for row, score, image in zip(tokens.tolist(), scores.tolist(), images):
        text, best = brute_force_best(model, image[None], max_new, length_penalty)
        assert row[: len(text)] == text and all(t == PAD for t in row[len(text) :])
        assert score == pytest.approx(best, abs=1e-4)
        _, cut_off_best = brute_force_best(model, image[None], max_new, length_penalty, finished=False)
        cut_off_scores_higher.append(cut_off_best > best)
    # a finished caption wins even where a cut-off one scores higher: that case really occurs here
    assert any(cut_off_scores_higher)


@pytest.mark.parametrize("length_penalty", [0.0, 2.0])
def test_beam_search_returns_a_cut_off_caption_only_when_none_finished(length_penalty):
    model, images = small_vocabulary_model()
    max_new = 3  # min_new = max_new: [EOS] is never allowed, no caption can finish
    tokens, scores = generate(model, images, method="beam", num_beams=9, max_new=max_new, min_new=max_new,
                              length_penalty=length_penalty)  # fmt: skip
    for row, score, image in zip(tokens.tolist(), scores.tolist(), images):
        text, best = brute_force_best(model, image[None], max_new, length_penalty, finished=False)
        assert row == text and score == pytest.approx(best, abs=1e-4)


def toy_step(tokens):
    """A hand-made 'model' over 5 ids (0 pad, 1 bos, 2 eos, 3 x, 4 y) whose raw logits and
    log-probabilities disagree: after x every continuation is equally likely (logits 5, 5, 5),
    after y [EOS] is nearly certain (logit 3 against -50)."""
    logits = torch.full((len(tokens), 5), -50.0)
    for row, last in enumerate(tokens[:, -1].tolist()):
        if last == BOS:
            logits[row, 3], logits[row, 4] = 2.0, 1.0
        elif last == 3:
            logits[row, 2:] = 5.0
        else:
            logits[row, 2] = 3.0
    return logits


def test_beam_search_ranks_by_log_probabilities_not_raw_logits():
    # by hand: path "x [EOS]": log p = log(e²/(e²+e)) + log(1/3); path "y [EOS]": log(e/(e²+e)) + ≈0
    log_p_x_eos = math.log(math.e**2 / (math.e**2 + math.e)) + math.log(1 / 3)  # -1.41
    log_p_y_eos = math.log(math.e / (math.e**2 + math.e)) + math.log(1 / (1 + 2 * math.exp(-53)))  # -1.31
    raw_x_eos, raw_y_eos = 2.0 + 5.0, 1.0 + 3.0  # summing raw logits would prefer "x [EOS]"
    assert log_p_y_eos > log_p_x_eos and raw_x_eos > raw_y_eos
    start = torch.tensor([[BOS]])
    tokens, score = beam_search(toy_step, lambda rows: None, start, num_beams=2, max_new=3, length_penalty=0.0)
    assert tokens.tolist() == [[BOS, 4, EOS]]  # finished at step 2; no live caption could beat it
    assert score.item() == pytest.approx(log_p_y_eos, abs=1e-5)


def test_top_k_one_and_tiny_nucleus_are_greedy(tiny, images):
    greedy_tokens, _ = generate(tiny, images, max_new=20)
    g = torch.Generator().manual_seed(0)
    top_k, _ = generate(tiny, images, method="sample", top_k=1, temperature=1.5, max_new=20, generator=g)
    nucleus, _ = generate(tiny, images, method="sample", top_p=1e-6, max_new=20, generator=g)
    assert torch.equal(top_k, greedy_tokens) and torch.equal(nucleus, greedy_tokens)
    sampled, _ = generate(tiny, images, method="sample", max_new=20, generator=g)
    assert not torch.equal(sampled, greedy_tokens)  # plain sampling does wander


def test_top_p_zero_is_greedy_and_top_k_zero_is_no_filter(tiny, images):
    greedy_tokens, _ = generate(tiny, images, max_new=20)
    nucleus, _ = generate(tiny, images, method="sample", top_p=0.0, temperature=2.0, max_new=20,
                          generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert torch.equal(nucleus, greedy_tokens)  # top_p = 0 keeps only the most likely token
    unfiltered, _ = generate(tiny, images, method="sample", max_new=20, generator=torch.Generator().manual_seed(3))
    top_k_zero, _ = generate(tiny, images, method="sample", top_k=0, top_p=1.0, max_new=20,
                             generator=torch.Generator().manual_seed(3))  # fmt: skip
    assert torch.equal(top_k_zero, unfiltered)  # top_k = 0 and top_p = 1 filter nothing
    for bad, pattern in [(dict(top_k=-1), r"top_k must be a whole number >= 0"),
                         (dict(top_p=-0.1), r"top_p must be in \[0, 1\]"), (dict(top_p=1.5), r"top_p must be in \[0, 1\]")]:  # fmt: skip
        with pytest.raises(ValueError, match=pattern):
            generate(tiny, images, method="sample", max_new=3, **bad)


def test_lengths_prompt_and_special_tokens(tiny, images):
    tokens, _ = generate(tiny, images, method="sample", min_new=6, max_new=9, prompt_ids=[7, 8],
                         generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert tokens.shape[1] <= 3 + 9 and (tokens[:, :3] == torch.tensor([BOS, 7, 8])).all()
    generated = tokens[:, 3:]
    assert not (generated[:, :6] == EOS).any()  # no [EOS] before min_new tokens
    assert not (generated == BOS).any()  # never [BOS]
    assert not (generated[:, :6] == PAD).any()  # [PAD] only after the end
    with pytest.raises(ValueError, match="method must be"):
        generate(tiny, images, method="beams")
    with pytest.raises(ValueError, match="temperature must be > 0"):
        generate(tiny, images, method="sample", temperature=0)


def test_overfit_model_captions_its_images_exactly():
    torch.manual_seed(0)
    data = TinyShapes("val", limit=8)  # 8 images with their canonical captions
    config = CoCaConfig(vision_width=64, vision_layers=2, vision_heads=2, vision_mlp=128, n_caption_queries=16,
                        pooler_heads=2, vocab_size=data.tokenizer.vocab_size, text_width=64, text_heads=2,
                        n_uni=1, n_multi=1, text_mlp=128, embed_dim=64)  # fmt: skip
    model = CoCa(config)
    images, tokens = collate([data[i] for i in range(8)])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    wanted = [c[0] for c in data.captions]
    for step in range(1, 801):
        loss = coca_loss(model(images, tokens), tokens, config.pad_id)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 50 == 0 and caption(model.eval(), data.tokenizer, images) == wanted:
            break
        model.train()
    assert caption(model.eval(), data.tokenizer, images) == wanted, f"not exact after {step} steps"
    # and a prompt is continued: the first words are kept, the rest is the image's own caption
    first = data.captions[0][0]
    prompt = " ".join(first.split()[:3])
    assert caption(model, data.tokenizer, images[:1], prompt=prompt) == [first]
