# %% [markdown]
# # Lesson 08 — Captioning
#
# **What you will learn**
# - how a trained CoCa writes a caption: one token at a time, each from the decoder's
#   next-token distribution given the image and the words so far;
# - three ways to choose the tokens, each written from scratch and checked against
#   `coca_min.generate`: greedy decoding, beam search with a length penalty, and sampling with
#   temperature, top-k and nucleus (top-p) filters;
# - why beam search must add log-probabilities, not raw logits (a bug of open_clip's);
# - the key/value cache: why decoding without it costs a quadratic number of token positions,
#   and what it saves in time.
#
# **Paper**: §4.3 (captioning). The decoding methods are the standard ones that SPEC §5 lists;
# the paper's contribution is the model that they decode from.
#
# **Assumes**: lesson 01 (token ids, [BOS]/[EOS]/[PAD]), lesson 04 (the caption pooler's
# tokens) and lesson 05 (the unimodal and multimodal halves of the decoder).

# %% [markdown]
# ## Set-up
# Imports, a fixed seed and thread count, the versions; then the trained tiny model shipped with
# the lessons (`lessons/assets/tiny_coca.pt`, see `lessons/README.md`) and the tokenizer that
# its checkpoint carries.

# %%
import math
import textwrap
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch

import coca_min
from coca_min import CoCa, shapes
from coca_min.checkpoint import load_checkpoint
from coca_min.data import TinyShapes
from coca_min.generate import Stepper, caption, generate, sampling_choice
from coca_min.tokenizer import BOS, EOS, PAD

torch.manual_seed(0)
torch.set_num_threads(2)
print("torch", torch.__version__)
ASSETS = Path(coca_min.__file__).resolve().parents[1] / "lessons" / "assets"  # from any working directory

model = CoCa.from_checkpoint(ASSETS / "tiny_coca.pt")  # eval mode
tokenizer = load_checkpoint(ASSETS / "tiny_coca.pt")["tokenizer"]  # the BPE the model was trained with
decoder = model.text_decoder
config = model.config
print(f"vocabulary {config.vocab_size} tokens, context {config.context_length} tokens, "
      f"[PAD] {PAD}, [BOS] {BOS}, [EOS] {EOS}")  # fmt: skip

# %% [markdown]
# A few held-out `test` images to caption. Each scene has three reference captions (lesson 00);
# the first, the *canonical* one, is the form that training draws most often (two times in
# three, `TinyShapes`'s docstring), so it is the one the model learned to prefer.

# %%
test = TinyShapes("test", tokenizer, limit=200)
first = list(range(8))
images = test.images(first)  # (8, 3, 48, 48)
with torch.no_grad():
    _, caption_tokens = model.encode_image(images)  # (8, 64, 128): what the decoder reads of each image
print("images", tuple(images.shape), "-> caption tokens", tuple(caption_tokens.shape))
print("reference of test image 0:", test.captions[0][0])

# %% [markdown]
# ## 1. One step: the next-token distribution
#
# A captioner models the caption $y = (y_1, \dots, y_T)$ of an image $x$ one token at a time:
#
# $$\log p(y \mid x) = \sum_{t=1}^{T} \log p(y_t \mid y_{<t}, x).$$
#
# Every decoding method below needs only one function: given the tokens so far (starting with
# [BOS]) and the image, the log-probabilities of the next token. Ours runs the whole prefix
# through both halves of the decoder, exactly as in training (lesson 05), and reads the last
# position. [PAD] and [BOS] are never generated, so they get probability 0 (the others keep
# theirs, not renormalised, as in coca_min).

# %%
@torch.no_grad()
def next_log_probs(tokens, caption_tokens):
    """tokens (N, L) so far, image (N, n_queries, D) -> log p(next token) (N, V)."""
    _, features = decoder.unimodal(tokens)  # (N, L, D): the text alone, the whole prefix again
    logits = decoder.multimodal(features, tokens, caption_tokens)[:, -1]  # (N, V): the last position
    log_probs = logits.log_softmax(dim=-1)  # log p(v | y_<t, x)
    log_probs[:, [PAD, BOS]] = -math.inf  # never generated
    return log_probs


prefix = test.tokens(0)[None, :4].expand(8, -1)  # (8, 4): the first 4 tokens of image 0's caption, for all 8 images
log_probs = next_log_probs(prefix, caption_tokens)
print("prefix", tuple(prefix.shape), repr(tokenizer.decode(prefix[0])), "-> log-probs", tuple(log_probs.shape))
best = log_probs[0].topk(3)
print("image 0, the 3 most likely next tokens:",
      ", ".join(f"{tokenizer.decode([i])!r} p={p:.3f}" for i, p in zip(best.indices.tolist(), best.values.exp().tolist())))  # fmt: skip

# %% [markdown]
# **Check 1**: these are the log-probabilities of the training forward pass after a
# log-softmax, on every token but [PAD] and [BOS] (1e-5). Training reads `tokens[:, :-1]` (teacher forcing, lesson 05), so we give it
# the first five tokens of the caption: its last logits then predict the fifth token from the
# first four, as ours do.

# %%
with torch.no_grad():
    training = model(images, test.tokens(0)[None, :5].expand(8, -1))["logits"][:, -1].log_softmax(dim=-1)  # (8, V)
keep = torch.ones(config.vocab_size, dtype=torch.bool)
keep[[PAD, BOS]] = False
assert torch.allclose(log_probs[:, keep], training[:, keep], atol=1e-5)
print("next_log_probs = the training forward pass's log-softmax")

# %% [markdown]
# ## 2. Greedy decoding
#
# Greedy decoding takes the most likely token at each step,
# $y_t = \arg\max_v \log p(v \mid y_{<t}, x)$, until [EOS] or the context is full (31 new
# tokens after [BOS]). The images of a batch run together; a caption that has ended is padded
# with [PAD] while the others go on. The caption's score is its summed log-probability.
#
# The loop takes a `choose` function, so that section 4 can reuse it for sampling.

# %%
def extend(caption_tokens, choose, max_new=config.context_length - 1):
    """Greedy or sampled captions (N, 1 + n) `[BOS] … [EOS] [PAD]…`, summed log-probs (N,)."""
    N = len(caption_tokens)
    tokens = torch.full((N, 1), BOS)  # (N, 1): every caption starts with [BOS]
    scores, finished = torch.zeros(N), torch.zeros(N, dtype=torch.bool)
    for _ in range(max_new):
        log_probs = next_log_probs(tokens, caption_tokens)  # (N, V)
        next_token = choose(log_probs)  # (N,): every row chooses, even the finished ones
        scores += torch.where(finished, 0.0, log_probs.gather(1, next_token[:, None])[:, 0])  # Σ log p(y_t | …)
        next_token = torch.where(finished, PAD, next_token)  # an ended caption only pads
        tokens = torch.cat([tokens, next_token[:, None]], dim=1)  # (N, L + 1)
        finished |= next_token == EOS
        if finished.all():
            break
    return tokens, scores


greedy_tokens, greedy_scores = extend(caption_tokens, lambda log_probs: log_probs.argmax(dim=-1))
print("greedy tokens", tuple(greedy_tokens.shape))
for i in range(3):
    print(f"image {i}: {tokenizer.decode(greedy_tokens[i])!r}  (log p = {greedy_scores[i]:.3f})")

# %% [markdown]
# **Check 2**: the same tokens as `coca_min.generate.generate(method="greedy")` (exactly), and
# the same scores (1e-4). coca_min decodes with its key/value cache (section 5), so this also
# compares two different ways of computing the logits.

# %%
library_tokens, library_scores = generate(model, images, method="greedy")
assert torch.equal(greedy_tokens, library_tokens)
assert torch.allclose(greedy_scores, library_scores, atol=1e-4)
print("greedy: the same tokens and scores as coca_min.generate")

# %% [markdown]
# ## 3. Beam search with a length penalty
#
# Greedy commits to each token forever; a token that looks best now can lead to a worse
# caption. Beam search keeps the $K$ best partial captions (the *beam*), ranked by their summed
# log-probability. At each step it scores every one-token extension of every live caption
# ($K \times V$ candidates) and:
#
# - a candidate that ends with [EOS] leaves the beam for a store of finished captions, scored
#   with the length penalty $\alpha$:
#   $$s(y) = \frac{1}{|y|^{\alpha}} \sum_{t=1}^{|y|} \log p(y_t \mid y_{<t}, x),$$
#   where $|y|$ counts the generated tokens, [EOS] included;
# - the $K$ best candidates that do not end stay live.
#
# Each log-probability is $\le 0$, so the sum only falls as a caption grows: with $\alpha = 0$
# (no penalty) short captions are favoured; $\alpha = 1$ ranks by the mean log-probability per
# token. The result is the best finished caption. The search stops early once no live caption
# can still beat it: a live sum $S$ can at best end as $S / (\text{max length})^\alpha$.
#
# We write it for one image, with the $K$ beams as the rows of one batch, and for $\alpha \ge 0$.

# %%
def beam_search(log_probs_of, num_beams=4, max_new=config.context_length - 1, alpha=1.0):
    """One image. log_probs_of: tokens (n, L) -> log p(next token) (n, V).
    Returns the best caption's tokens [BOS] … [EOS] (a list) and its score."""
    tokens = torch.tensor([[BOS]])  # (1, 1): one live caption at first
    sums = torch.zeros(1)  # (n,): summed log-probs of the live captions
    best, best_score = None, -math.inf  # the finished store: the best ended caption so far
    for i in range(max_new):  # each live caption holds i generated tokens
        candidates = sums[:, None] + log_probs_of(tokens)  # (n, V): every one-token extension
        ended = candidates[:, EOS] / (i + 1) ** alpha  # (n,): s(y) of "caption + [EOS]", i + 1 tokens
        j = int(ended.argmax())
        if ended[j] > best_score:
            best, best_score = tokens[j].tolist() + [EOS], ended[j].item()
        candidates[:, EOS] = -math.inf  # the beam: the K best captions that go on
        V = candidates.shape[1]
        top = candidates.flatten().topk(num_beams)  # over (live caption, token) pairs
        tokens = torch.cat([tokens[top.indices // V], (top.indices % V)[:, None]], dim=1)  # (K, L + 1)
        sums = top.values  # (K,)
        if best_score >= sums.max().item() / max_new**alpha:  # no live caption can still win
            break
    if best is None:  # none ended within max_new tokens: the best live caption, cut off
        best, best_score = tokens[sums.argmax()].tolist(), sums.max().item() / max_new**alpha
    return best, best_score


def beam_caption(image_tokens, num_beams=4, alpha=1.0):  # one image's caption tokens (1, 64, D)
    return beam_search(lambda t: next_log_probs(t, image_tokens.expand(len(t), -1, -1)), num_beams, alpha=alpha)


# %% [markdown]
# On most test images the trained model is so sure of itself that the beam finds greedy's
# caption, so we compare on three images where the choices matter: test image 69, on which
# greedy and beam search disagree, and 74 and 180, on which the length penalty changes the
# beam's caption (found by running coca_min's beam search on the first 300 test images).
#
# **Check 3**: for $\alpha = 0$ and $\alpha = 1$ our beam search gives exactly the captions of
# `generate(method="beam", num_beams=4, length_penalty=alpha)`, and the same scores (1e-4).

# %%
chosen = [69, 74, 180]
with torch.no_grad():
    _, captions_of = model.encode_image(test.images(chosen))  # (3, 64, D)
beams = {}
for alpha in (0.0, 1.0):
    library_tokens, library_scores = generate(model, test.images(chosen), method="beam", num_beams=4,
                                              length_penalty=alpha)  # fmt: skip
    for row, image in enumerate(chosen):
        tokens, score = beam_caption(captions_of[row : row + 1], alpha=alpha)
        beams[image, alpha] = tokenizer.decode(tokens)
        library = library_tokens[row][library_tokens[row] != PAD].tolist()
        assert tokens == library, (image, alpha)
        assert abs(score - library_scores[row].item()) < 1e-4
greedy_of_chosen = caption(model, tokenizer, test.images(chosen))
for row, image in enumerate(chosen):
    print(f"test image {image}\n  reference   {test.captions[image][0]}\n  greedy      {greedy_of_chosen[row]}")
    print(f"  beam a=0    {beams[image, 0.0]}\n  beam a=1    {beams[image, 1.0]}")
print("beam search: the same captions and scores as coca_min.generate, for alpha 0 and 1")

# %% [markdown]
# On images 74 and 180 the penalty-free search ($\alpha = 0$) returns the shorter caption (on
# 74 the "there is …" form, on 180 one that names two of the three objects): its sum of
# log-probabilities has fewer terms to lose on. Dividing by the length ($\alpha = 1$) gives the
# longer form back. On image 69 greedy took the relational form "a yellow circle is right of …"
# at its second word; the beam kept the canonical form alive and it won.
#
# ### Log-probabilities, not raw logits
#
# open_clip's beam search (v3.3.0) adds up the raw logits instead of the log-probabilities
# (SPEC §5). Logits are only defined up to a constant per step: adding $c$ to every logit of one
# row leaves that step's softmax, and so the model's probabilities, unchanged, but adds $c$ to
# the sum of every caption through that step. A tiny worked example, with a toy "model" over
# five tokens ([PAD], [BOS], [EOS], *x*, *y*):
#
# | after | logits of [EOS], *x*, *y* | probabilities |
# |---|---|---|
# | [BOS] | −50, 2, 1 | *x* 0.73, *y* 0.27 |
# | [BOS] *x* | 5, 5, 5 | each 1/3 |
# | [BOS] *y* | 3, −50, −50 | [EOS] ≈ 1 |
#
# "*x* [EOS]" has probability 0.73 · 1/3 = 0.24 but raw-logit sum 2 + 5 = 7; "*y* [EOS]" has
# probability 0.27 · 1 = 0.27 and raw sum 1 + 3 = 4. Summing raw logits picks the less likely
# caption, because the flat logits after *x* are large numbers that mean nothing.

# %%
TOY = {(BOS,): [-50.0, 2.0, 1.0], (BOS, 3): [5.0, 5.0, 5.0], (BOS, 4): [3.0, -50.0, -50.0]}  # [EOS], x = 3, y = 4


def toy(tokens, normalise=True, shift=0.0):  # tokens (n, L) -> (n, 5)
    rows = []
    for row in tokens.tolist():
        logits = torch.tensor([-math.inf, -math.inf, *TOY.get(tuple(row), [-50.0] * 3)])  # no [PAD], [BOS]
        logits[2:] += shift if row == [BOS, 3] else 0.0  # the same probabilities for any shift
        rows.append(logits.log_softmax(-1) if normalise else logits)
    return torch.stack(rows)


for normalise in (True, False):
    tokens, score = beam_search(lambda t: toy(t, normalise), num_beams=2, max_new=3, alpha=0.0)
    print(f"summing {'log-probabilities' if normalise else 'raw logits':17}: best {tokens} = {'x' if 3 in tokens else 'y'} [EOS], score {score:.3f}")

# %% [markdown]
# **Check 4** (a property): our beam search with log-probabilities returns "*y* [EOS]", the more
# probable caption (brute force over the two, 1e-6), whatever constant is added to the logits
# after *x*; with raw logits the winner changes with that constant.

# %%
p_x_eos = (2 - math.log(math.e**2 + math.e + math.exp(-50))) + math.log(1 / 3)  # log p(x [EOS])
p_y_eos = (1 - math.log(math.e**2 + math.e + math.exp(-50))) + (3 - math.log(math.exp(3) + 2 * math.exp(-50)))
assert p_y_eos > p_x_eos
raw_winners = set()
for shift in (-4.0, 0.0, 4.0):
    tokens, score = beam_search(lambda t: toy(t, True, shift), num_beams=2, max_new=3, alpha=0.0)
    assert tokens == [BOS, 4, EOS] and abs(score - p_y_eos) < 1e-6
    raw_winners.add(tuple(beam_search(lambda t: toy(t, False, shift), num_beams=2, max_new=3, alpha=0.0)[0]))
assert raw_winners == {(BOS, 3, EOS), (BOS, 4, EOS)}
print(f"log p(x [EOS]) = {p_x_eos:.3f} < log p(y [EOS]) = {p_y_eos:.3f}; raw logits pick either, by the shift")

# %% [markdown]
# ## 4. Sampling: temperature, top-k, nucleus
#
# Greedy and beam search give one caption per image. Sampling draws the next token at random,
# which gives varied captions. Three knobs shape the distribution first, in this order:
#
# - **temperature** $\tau$: $q(v) \propto \exp(\log p(v) / \tau)$; $\tau < 1$ sharpens,
#   $\tau > 1$ flattens;
# - **top-k**: keep only the $k$ most likely tokens;
# - **top-p** (nucleus): keep the smallest set $V_p$ of most likely tokens with
#   $\sum_{v \in V_p} q(v) \ge p$: a token stays if the tokens ranked above it hold less than
#   $p$. The most likely token always stays.
#
# Removed tokens get logit $-\infty$; the draw is from the softmax of what is left.

# %%
def filtered_logits(log_probs, temperature=1.0, top_k=0, top_p=1.0):
    """(N, V) log-probs -> (N, V) logits to sample from; removed tokens are -inf."""
    logits = log_probs / temperature  # log q(v) + const: q ∝ exp(log p / τ)
    if top_k:
        kth_best = logits.topk(top_k, dim=-1).values[:, -1:]  # (N, 1)
        logits = logits.masked_fill(logits < kth_best, -math.inf)  # keep the top k
    if top_p < 1:
        probs = logits.softmax(dim=-1)  # q after top-k
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        above = sorted_probs.cumsum(dim=-1) - sorted_probs  # (N, V): mass of the tokens ranked higher
        keep_sorted = above < top_p  # not yet enough without this token
        keep_sorted[:, 0] = True  # the most likely token always stays
        keep = torch.zeros_like(keep_sorted).scatter(1, order, keep_sorted)  # back to token order
        logits = logits.masked_fill(~keep, -math.inf)
    return logits


def sampler(temperature=1.0, top_k=0, top_p=1.0, generator=None):
    def choose(log_probs):  # one draw per row from softmax(filtered logits)
        return torch.multinomial(filtered_logits(log_probs, temperature, top_k, top_p).softmax(-1), 1, generator=generator)[:, 0]

    return choose


# %% [markdown]
# First on a hand-made distribution over six tokens, listed in a shuffled order so that the
# filters must sort: probabilities 0.5, 0.2, 0.15, 0.1, 0.05 (and 0 for the sixth), whose running
# totals are 0.5, 0.7, 0.85, 0.95, 1.
#
# **Check 5** (a property): top-k keeps exactly the $k$ most likely tokens; top-p keeps exactly
# the nucleus (0.6 → the top 2, 0.8 → the top 3, 0.9 → the top 4, 0 → the top 1); what is kept
# is renormalised in proportion (1e-6). And coca_min's `sampling_choice`, drawn 4,000 times,
# picks every token of the set and none outside it.

# %%
hand = torch.tensor([0.15, 0.0, 0.5, 0.05, 0.2, 0.1])  # ranked: 2, 4, 0, 5, 3, (1)
ranked = [2, 4, 0, 5, 3]
hand_log = hand.log()[None]  # (1, 6)
settings = [dict(top_k=1), dict(top_k=3), dict(top_p=0.6), dict(top_p=0.8), dict(top_p=0.9), dict(top_p=0.0),
            dict(top_k=3, top_p=0.6)]  # fmt: skip
expected = [1, 3, 2, 3, 4, 1, 2]  # how many of the ranked tokens stay
draws = torch.Generator().manual_seed(0)
for setting, n in zip(settings, expected):
    q = filtered_logits(hand_log, **setting).softmax(-1)[0]  # (6,)
    kept = set(torch.nonzero(q).flatten().tolist())
    assert kept == set(ranked[:n]), setting
    assert torch.allclose(q[ranked[:n]], hand[ranked[:n]] / hand[ranked[:n]].sum(), atol=1e-6)
    library = sampling_choice(**setting, generator=draws)(hand_log.expand(4000, -1))  # (4000,) draws
    assert set(library.tolist()) == kept, setting
    print(f"{str(setting):26} keeps tokens {sorted(kept)}: q = {[round(v, 3) for v in q.tolist()]}")

# %% [markdown]
# Now on the model. With a fixed seed the draws are reproducible. Our `extend` draws for every
# row at every step, finished or not, one `torch.multinomial` over the whole batch, as
# coca_min's `sampling_choice` does; so one generator seeded the same way gives the same random
# numbers to both, and they must then pick the same tokens.
#
# **Check 6**: for three settings, our sampled captions are exactly the tokens of
# `generate(method="sample", …)` with a generator of the same seed.

# %%
for seed, setting in enumerate([dict(temperature=1.0), dict(temperature=1.5, top_k=5), dict(temperature=1.5, top_p=0.9)]):
    ours, _ = extend(caption_tokens, sampler(**setting, generator=torch.Generator().manual_seed(seed)))
    library, _ = generate(model, images, method="sample", **setting, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(ours, library), setting
    changed = sum(a != b for a, b in zip(map(tokenizer.decode, ours), map(tokenizer.decode, greedy_tokens)))
    print(f"{str(setting):36} same tokens as coca_min; {changed} of 8 captions differ from greedy")

# %% [markdown]
# Six samples of test image 0 at temperature 1.5, without and with a nucleus of 0.9, from the
# same seed. Sampling visits all three caption forms the model was trained on (canonical,
# "there is …", relational; lesson 00). The nucleus cuts the unlikely tail that a hot
# temperature lets in, such as the "green orange cross" of the second sample without it.

# %%
six = caption_tokens[:1].expand(6, -1, -1)  # (6, 64, D): image 0, six times
for setting in [dict(temperature=1.5), dict(temperature=1.5, top_p=0.9)]:
    samples, _ = extend(six, sampler(**setting, generator=torch.Generator().manual_seed(0)))
    print(setting)
    for row in samples:
        print("  ", tokenizer.decode(row))
print("reference:", test.captions[0][0])

# %% [markdown]
# ## 5. The key/value cache
#
# Our `next_log_probs` re-encodes the whole prefix at every step: to get token $t + 1$ it
# feeds $t$ token positions through every layer. But every layer is causal (lesson 05): the
# outputs at positions $1 \dots t - 1$ are exactly those of the step before. Generating $T$
# tokens this way feeds
#
# $$\sum_{t=1}^{T} t = \frac{T(T + 1)}{2}$$
#
# token positions through the decoder: quadratic in the caption length (and self-attention
# over $t$ positions at each of them adds a cubic term).
#
# The cache keeps, in each layer, the self-attention keys and values of the tokens already
# seen; a step then feeds only the newest token, whose query attends to the cached keys plus its
# own. The cross-attention keys and values of the image (the 64 caption tokens) are computed
# once, at the first step. That is `decoder.new_cache()` and `decoder.decode_step`, which
# coca_min's `Stepper` calls.
#
# **Check 7**: three cached steps, each fed one token of the greedy captions, give the
# log-probabilities of our uncached `next_log_probs` on the whole prefix (1e-4).

# %%
cache = decoder.new_cache()
with torch.no_grad():
    for t in range(3):
        logits = decoder.decode_step(greedy_tokens[:, t : t + 1], caption_tokens, cache)  # (8, 1, V): one new token
        uncached = next_log_probs(greedy_tokens[:, : t + 1], caption_tokens)  # (8, V): t + 1 tokens re-encoded
        assert torch.allclose(logits[:, -1].log_softmax(-1)[:, keep], uncached[:, keep], atol=1e-4)
layer = cache["layers"][-1]  # the last multimodal layer
print("cache length", cache["length"], "| self-attention keys", tuple(layer["self"]["k"].shape),
      "= (B, heads, tokens so far, d_head) | cross-attention keys", tuple(layer["cross"]["k"].shape), "(the image)")  # fmt: skip

# %% [markdown]
# To count the work, a forward hook on the decoder's token embedding adds up the token
# positions each call feeds in (per caption); every step of both paths goes through it.
#
# **Check 8**: generating the 8 greedy captions ($T$ steps) feeds $T$ positions with the cache
# and $T(T+1)/2$ without (exactly), and the two give identical tokens, for greedy decoding (8
# images) and for beam search (the 3 images of section 3).

# %%
fed = []
hook = decoder.token_embedding.register_forward_hook(lambda module, args, out: fed.append(args[0].shape[1]))
counts, outputs = {}, {}
for use_cache in (True, False):
    fed.clear()
    outputs[use_cache] = generate(model, images, method="greedy", use_cache=use_cache)[0]
    counts[use_cache] = sum(fed)
hook.remove()
T = outputs[True].shape[1] - 1  # generated tokens (the longest caption's)
assert counts[True] == T and counts[False] == T * (T + 1) // 2
assert torch.equal(outputs[True], outputs[False])
beam_cached = generate(model, test.images(chosen), method="beam", use_cache=True)[0]
assert torch.equal(beam_cached, generate(model, test.images(chosen), method="beam", use_cache=False)[0])
print(f"T = {T} steps: {counts[True]} token positions with the cache, {counts[False]} = T(T+1)/2 without; same tokens")

# %% [markdown]
# What that saves in time, measured on this machine: the time of one decoding step for a batch
# of 8 captions, at each position up to the full context, with coca_min's `Stepper` cached and
# uncached (the fastest of 5 runs, after one to warm up), and the total time to reach each
# length.
#
# What to expect: the uncached step time grows with the position (it re-encodes $t$ tokens),
# the cached one stays roughly flat (one token, plus attention over the cached keys; its first
# step also computes the image's cross-attention keys and values); so the total grows about
# quadratically against linearly. At this tiny width a good part of every
# step is fixed per-call overhead (Python, kernel launches), which narrows the gap at small
# positions. The numbers differ from run to run and machine to machine; nothing below depends
# on them.

# %% tags=["measured"]
positions = range(1, config.context_length)  # a step at position t reads t tokens, predicts token t + 1
sequence = torch.cat([torch.full((8, 1), BOS), torch.randint(3, config.vocab_size, (8, config.context_length - 1), generator=torch.Generator().manual_seed(0))], 1)
repeats = 5
seconds = {True: torch.zeros(repeats + 1, len(positions)), False: torch.zeros(repeats + 1, len(positions))}
with torch.inference_mode():
    for repeat in range(repeats + 1):  # the first run only warms up
        for use_cache in (True, False):
            step = Stepper(model, caption_tokens, use_cache=use_cache)
            for i, t in enumerate(positions):
                start = time.perf_counter()
                step(sequence[:, :t])  # (8, V): the next-token logits
                seconds[use_cache][repeat, i] = time.perf_counter() - start
per_step = {use_cache: 1000 * s[1:].min(dim=0).values for use_cache, s in seconds.items()}  # ms, the fastest run
fig, (ax, ax_total) = plt.subplots(1, 2, figsize=(11, 3.8))
for use_cache, label in [(False, "without cache (re-encode the prefix)"), (True, "with the key/value cache")]:
    ax.plot(list(positions), per_step[use_cache].numpy(), marker=".", label=label)
    ax_total.plot(list(positions), per_step[use_cache].cumsum(0).numpy(), marker=".", label=label)
ax.set(title="time per decoding step (batch of 8)", xlabel="position t (tokens so far)", ylabel="ms per step", ylim=(0, None))
ax_total.set(title="total time to generate t tokens", xlabel="generated tokens t", ylabel="ms in all", ylim=(0, None))
for a in (ax, ax_total):
    a.legend()
    a.grid(alpha=0.3)
fig.suptitle(f"decoding the tiny CoCa on this machine's CPU (fastest of {repeats} runs at each position)")
fig.tight_layout()

# %% [markdown]
# ## 6. Captions of test images
#
# The first eight test images, and four of the first 100 on which greedy decoding and beam
# search (4 beams, $\alpha = 1$) disagree, each with both captions and its canonical reference.

# %%
grid = first + [41, 62, 69, 72]
grid_images = test.images(grid)  # (12, 3, 48, 48)
greedy_text = caption(model, tokenizer, grid_images)
beam_text = caption(model, tokenizer, grid_images, method="beam", num_beams=4, length_penalty=1.0)
fig, axes = plt.subplots(3, 4, figsize=(13, 16), layout="constrained")
for ax, image, g, b in zip(axes.flat, grid, greedy_text, beam_text):
    ax.imshow(shapes.PALETTE[test.pixels[image].numpy()], interpolation="nearest")
    ax.set(xticks=[], yticks=[], title=f"test image {image}")
    lines = [f"greedy: {g}", f"beam: {b}", f"reference: {test.captions[image][0]}"]
    ax.set_xlabel("\n".join(textwrap.fill(line, 40) for line in lines), fontsize=8.5, loc="left")
fig.suptitle("captions of the trained tiny CoCa: greedy, beam search (4 beams, alpha 1) and the reference", fontsize=12)
exact = {name: sum(text == test.captions[i][0] for i, text in zip(grid, texts)) for name, texts in [("greedy", greedy_text), ("beam", beam_text)]}
print(f"equal to the canonical reference, of these 12: greedy {exact['greedy']}, beam {exact['beam']}")

# %% [markdown]
# ## Summary
# - Every decoding method needs one thing: log-probabilities of the next token given the image
#   and the tokens so far (two halves of the decoder, last position).
# - Greedy takes the argmax; beam search keeps the $K$ best summed log-probabilities, moves
#   ended captions to a store ranked by $\text{sum} / |y|^\alpha$, and returns the best; sampling
#   draws from the temperature-scaled distribution cut to the top-k and the nucleus. All three,
#   written from scratch, give coca_min's tokens and scores.
# - Beam search must sum log-probabilities: raw logits carry an arbitrary constant per step.
# - Without a cache, $T$ steps feed $T(T+1)/2$ token positions; the key/value cache feeds $T$
#   and gives identical tokens.
#
# ## Exercises
# 1. Add `min_new` to our `beam_search` (no [EOS] before `min_new` generated tokens) and check
#    it against `generate(method="beam", min_new=...)` on test image 74 with $\alpha = 0$. What
#    is the shortest `min_new` at which the short "there is …" caption can no longer win?
# 2. Sample one caption for each of the first 100 test images at temperatures 0.5, 1 and 2, and
#    count how many equal the canonical reference. How does the nucleus (top-p 0.9) change the
#    count at temperature 2?
# 3. From the shapes printed in section 5, how many bytes does the cache hold for a batch of 8
#    at the full context of 32 tokens (both halves, keys and values, self- and
#    cross-attention)? Check against the tensors' `nbytes` after 31 `decode_step` calls.
