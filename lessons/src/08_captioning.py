# %% [markdown]
# # Lesson 08 — Captioning
#
# **What you will learn**
# - how a trained CoCa writes a caption, one token at a time, and three ways to choose the
#   tokens, each written from scratch and checked against `coca_min.model.generate`: greedy decoding,
#   beam search with a length penalty, sampling with temperature, top-k and nucleus (top-p);
# - why beam search must add log-probabilities, not raw logits;
# - the key/value cache: why decoding without it is quadratic, and what it saves in time.
#
# **Paper**: §4.3 (captioning); the decoding methods are the standard ones `coca_min.model.generate` implements.
#
# **Assumes**: lesson 01 ([BOS], [EOS], [PAD]), lesson 04 (the caption pooler's tokens) and
# lesson 05 (the two halves of the decoder).

# %% [markdown]
# ## Set-up
# Imports, a fixed seed, one thread (the tiny model's matrix products are small, and on a busy
# machine a second thread mostly waits), the versions; the trained model shipped with the
# lessons (`lessons/assets/tiny_coca.pt`, see `lessons/README.md`) and its tokenizer; eight
# held-out `test` images, encoded once. Each scene has three reference captions (lesson 00); the
# first, the *canonical* one, is the form training draws four times in five (`TinyShapes`), so
# the model prefers it.

# %%
import math
import textwrap
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch

import coca_min
from coca_min.checkpoint import load_checkpoint
from coca_min.data.datasets import TinyShapes
from coca_min.data.synthetic import shapes
from coca_min.data.tokenizer import BOS, EOS, PAD
from coca_min.model.generate import Stepper, caption, generate, sampling_choice

torch.manual_seed(0)
torch.set_num_threads(1)
print("torch", torch.__version__)
ASSETS = Path(coca_min.__file__).resolve().parents[1] / "lessons" / "assets"  # from any working directory
checkpoint = load_checkpoint(ASSETS / "tiny_coca.pt")
model, tokenizer = checkpoint["model"], checkpoint["tokenizer"]  # eval mode; the BPE it was trained with
decoder, config = model.text_decoder, model.config
print(f"vocabulary {config.vocab_size} tokens, context {config.context_length} tokens, "
      f"[PAD] {PAD}, [BOS] {BOS}, [EOS] {EOS}")  # fmt: skip

test = TinyShapes("test", tokenizer, limit=200)
images = test.images(range(8))  # (8, 3, 48, 48)
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
# Every decoding method needs one function: the log-probabilities of the next token given the
# image and the tokens so far. Ours runs the whole prefix through both halves of the decoder,
# as training does (lesson 05), and reads the last position. [PAD] and [BOS] are never
# generated: they get probability 0 (the others are not renormalised, as in coca_min).

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
# **Check 1**: these are the log-softmax of the training pass's last logits, on every token but
# [PAD] and [BOS] (1e-5). Training reads `tokens[:, :-1]` (teacher forcing), so we give it five
# tokens: its last position then predicts the fifth from the first four.

# %%
with torch.no_grad():
    training = model(images, test.tokens(0)[None, :5].expand(8, -1))["logits"][:, -1].log_softmax(dim=-1)  # (8, V)
keep = log_probs[0] > -math.inf  # (V,): every token but [PAD] and [BOS]
assert torch.allclose(log_probs[:, keep], training[:, keep], atol=1e-5)
print("next_log_probs = the training forward pass's log-softmax")

# %% [markdown]
# ## 2. Greedy decoding
#
# Greedy decoding takes the most likely token at each step,
# $y_t = \arg\max_v \log p(v \mid y_{<t}, x)$, until [EOS] or the context is full (31 new
# tokens after [BOS]). A batch's images run together; an ended caption is padded with [PAD]
# while the others go on. The score is the summed log-probability. The loop takes a `choose`
# function, so that section 4 can reuse it for sampling.

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
# **Check 2**: the same tokens as `generate(model, images, method="greedy")` (exactly) and the
# same scores (1e-4); coca_min uses its key/value cache (section 5), another way to the logits.

# %%
library_tokens, library_scores = generate(model, images, method="greedy")
assert torch.equal(greedy_tokens, library_tokens)
assert torch.allclose(greedy_scores, library_scores, atol=1e-4)
print("greedy: the same tokens and scores as coca_min.model.generate")

# %% [markdown]
# ## 3. Beam search with a length penalty
#
# Greedy commits to each token for good, and a token that looks best now can lead to a worse
# caption. Beam search keeps the $K$ best partial captions (the *beam*), ranked by summed
# log-probability, and scores every one-token extension of each ($K \times V$ candidates):
#
# - a candidate that ends with [EOS] leaves the beam for a store of finished captions, scored
#   with the length penalty $\alpha$, $|y|$ counting the generated tokens with [EOS]:
#   $$s(y) = \frac{1}{|y|^{\alpha}} \sum_{t=1}^{|y|} \log p(y_t \mid y_{<t}, x);$$
# - the $K$ best candidates that do not end stay live.
#
# Each log-probability is $\le 0$, so the sum only falls as a caption grows: $\alpha = 0$
# favours short captions, $\alpha = 1$ ranks by the mean log-probability per token. The result
# is the best finished caption. For $\alpha \ge 0$ a live sum $S$ can at best end as
# $S / (\text{max length})^\alpha$, so the search stops once no live caption can beat the store.
# We write it for one image, with the beam as the rows of one batch.

# %%
def beam_search(log_probs_of, num_beams=4, max_new=config.context_length - 1, alpha=1.0):
    """One image. log_probs_of: tokens (n, L) -> log p(next token) (n, V).
    Returns the best caption's tokens [BOS] … [EOS] (a list) and its score s(y)."""
    tokens = torch.tensor([[BOS]])  # (1, 1): one live caption at first
    sums = torch.zeros(1)  # (n,): summed log-probs of the live captions
    best, best_score = None, -math.inf  # the store: the best ended caption so far
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


# %% [markdown]
# On most test images the beam finds greedy's caption, so we compare on three where the choices
# matter (found with coca_min's beam search): on image 69 greedy and beam search disagree, on 74
# and 180 the length penalty changes the beam's caption.
#
# **Check 3**: for $\alpha = 0$ and $\alpha = 1$, our beam search gives exactly the tokens of
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
        one_image = captions_of[row : row + 1]  # (1, 64, D), repeated for every live caption below
        tokens, score = beam_search(lambda t: next_log_probs(t, one_image.expand(len(t), -1, -1)), 4, alpha=alpha)
        beams[image, alpha] = tokenizer.decode(tokens)
        assert tokens == library_tokens[row][library_tokens[row] != PAD].tolist(), (image, alpha)
        assert abs(score - library_scores[row].item()) < 1e-4
greedy_of_chosen = caption(model, tokenizer, test.images(chosen))
for row, image in enumerate(chosen):
    print(f"test image {image}\n  reference   {test.captions[image][0]}\n  greedy      {greedy_of_chosen[row]}")
    print(f"  beam a=0    {beams[image, 0.0]}\n  beam a=1    {beams[image, 1.0]}")
print("beam search: the same tokens and scores as coca_min.model.generate, for alpha 0 and 1")

# %% [markdown]
# On images 74 and 180 the search without penalty ($\alpha = 0$) returns the shorter caption
# (on 74 the "there is …" form, on 180 one that names two of the three objects): its sum has
# fewer terms to lose on. Dividing by the length ($\alpha = 1$) gives the longer one back, which
# is not always the better caption: on image 74 it calls the large orange circle "a large red
# diamond", which the short one names right (both miss the red cross). On image 69 greedy took the relational form "a yellow
# circle is right of …" at the second word; the beam kept the canonical form alive, and it won.
#
# ### Log-probabilities, not raw logits
#
# open_clip's beam search (v3.3.0) adds up raw logits instead. Adding a constant $c$
# to every logit of one step leaves its softmax unchanged, but adds $c$ to the raw sum of every
# caption through that step. A toy "model" over [PAD], [BOS], [EOS], *x*, *y* shows the harm:
#
# | after | logits of [EOS], *x*, *y* | probabilities |
# |---|---|---|
# | [BOS] | −50, 2, 1 | *x* 0.73, *y* 0.27 |
# | [BOS] *x* | 5 + $c$, 5 + $c$, 5 + $c$ | each 1/3 |
# | [BOS] *y* | 3, −50, −50 | [EOS] ≈ 1 |
#
# "*x* [EOS]" has probability 0.73 · 1/3 = 0.24 and raw sum 7 + $c$; "*y* [EOS]" has
# probability 0.27 · 1 = 0.27 and raw sum 4. Summed raw logits pick *x* whenever $c > -3$.
#
# **Check 4** (a property): with log-probabilities, our beam search (2 beams, $\alpha = 0$)
# returns "*y* [EOS]" with its log-probability worked out by hand (1e-6), for $c$ = −4, 0 and 4;
# with raw logits the winner changes with $c$.

# %%
def toy(c, normalise):  # a log_probs_of for beam_search: tokens (n, L) -> (n, 5) log-probs, or raw logits
    table = {(BOS,): [-50, 2, 1], (BOS, 3): [5 + c] * 3, (BOS, 4): [3, -50, -50]}  # of [EOS], x = 3, y = 4

    def log_probs_of(tokens):
        logits = torch.tensor([[-math.inf, -math.inf, *table.get(tuple(row), [-50] * 3)] for row in tokens.tolist()])
        return logits.log_softmax(dim=-1) if normalise else logits  # [PAD], [BOS] never

    return log_probs_of


log_p_x = 2 - math.log(math.exp(2) + math.exp(1) + math.exp(-50))  # log p(x | [BOS]); log p(y | [BOS]) is 1 less
log_p_y_eos = (log_p_x - 1) + (3 - math.log(math.exp(3) + 2 * math.exp(-50)))  # + log p([EOS] | [BOS] y)
print(f"p(x [EOS]) = {math.exp(log_p_x) / 3:.3f}, p(y [EOS]) = {math.exp(log_p_y_eos):.3f}")
raw_winners = set()
for c in (-4.0, 0.0, 4.0):
    tokens, score = beam_search(toy(c, normalise=True), num_beams=2, max_new=3, alpha=0.0)
    assert tokens == [BOS, 4, EOS] and abs(score - log_p_y_eos) < 1e-6
    raw, raw_score = beam_search(toy(c, normalise=False), num_beams=2, max_new=3, alpha=0.0)
    raw_winners.add(winner := "xy"[raw[1] - 3])  # raw is [BOS, x or y, EOS]
    print(f"c = {c:+.0f}: log-probabilities pick y [EOS] ({score:.3f}); raw logits pick {winner} [EOS] ({raw_score:.0f})")
assert raw_winners == {"x", "y"}

# %% [markdown]
# ## 4. Sampling: temperature, top-k, nucleus
#
# Sampling draws each token at random, for varied captions. Three knobs shape the distribution
# first, in this order, and removed tokens get logit $-\infty$ before the softmax of the draw:
#
# - **temperature** $\tau$: $q(v) \propto \exp(\log p(v) / \tau)$; $\tau < 1$ sharpens,
#   $\tau > 1$ flattens;
# - **top-k**: keep only the $k$ most likely tokens;
# - **top-p** (nucleus): keep the smallest set $V_p$ of most likely tokens with
#   $\sum_{v \in V_p} q(v) \ge p$, that is, a token stays if the tokens ranked above it hold
#   less than $p$. The most likely token always stays.

# %%
def filtered_logits(log_probs, temperature=1.0, top_k=0, top_p=1.0):
    """(N, V) log-probs -> (N, V) logits to sample from; removed tokens are -inf."""
    logits = log_probs / temperature  # log q(v) + const: q ∝ exp(log p / τ)
    if top_k:
        kth_best = logits.topk(top_k, dim=-1).values[:, -1:]  # (N, 1)
        logits = logits.masked_fill(logits < kth_best, -math.inf)  # keep the top k
    if top_p < 1:
        sorted_probs, order = logits.softmax(dim=-1).sort(dim=-1, descending=True)  # q after top-k
        above = sorted_probs.cumsum(dim=-1) - sorted_probs  # (N, V): mass of the tokens ranked higher
        keep_sorted = above < top_p  # not yet enough without this token
        keep_sorted[:, 0] = True  # the most likely token always stays
        kept = torch.zeros_like(keep_sorted).scatter(1, order, keep_sorted)  # back to token order
        logits = logits.masked_fill(~kept, -math.inf)
    return logits


def sampler(temperature=1.0, top_k=0, top_p=1.0, generator=None):  # a `choose` for extend
    def choose(log_probs):  # one draw per row from softmax(filtered logits)
        return torch.multinomial(filtered_logits(log_probs, temperature, top_k, top_p).softmax(-1), 1, generator=generator)[:, 0]

    return choose


# %% [markdown]
# First on a hand-made distribution, shuffled so that the filters must sort: probabilities 0.5,
# 0.2, 0.15, 0.1, 0.05 and 0, whose running totals are 0.5, 0.7, 0.85, 0.95, 1.
#
# **Check 5** (a property): top-k keeps exactly the $k$ most likely tokens; top-p the nucleus
# (0.6 → the top 2, 0.8 → 3, 0.9 → 4, 0 → 1; after top-3, 0.6 → 2); what is kept is
# renormalised in proportion (1e-6). coca_min's `sampling_choice`, drawn 4,000 times, picks
# every token of that set and none outside it.

# %%
hand = torch.tensor([0.15, 0.0, 0.5, 0.05, 0.2, 0.1])  # ranked: 2, 4, 0, 5, 3, (1)
ranked = [2, 4, 0, 5, 3]
hand_log = hand.log()[None]  # (1, 6)
cases = [(dict(top_k=1), 1), (dict(top_k=3), 3), (dict(top_p=0.6), 2), (dict(top_p=0.8), 3), (dict(top_p=0.9), 4),
         (dict(top_p=0.0), 1), (dict(top_k=3, top_p=0.6), 2)]  # (setting, how many of the ranked tokens stay)
draws = torch.Generator().manual_seed(0)
for setting, n in cases:
    q = filtered_logits(hand_log, **setting).softmax(-1)[0]  # (6,)
    kept = set(torch.nonzero(q).flatten().tolist())
    assert kept == set(ranked[:n]), setting
    assert torch.allclose(q[ranked[:n]], hand[ranked[:n]] / hand[ranked[:n]].sum(), atol=1e-6)
    library = sampling_choice(**setting, generator=draws)(hand_log.expand(4000, -1))  # (4000,) draws
    assert set(library.tolist()) == kept, setting
    print(f"{str(setting):26} keeps tokens {sorted(kept)}: q = {[round(v, 3) for v in q.tolist()]}")

# %% [markdown]
# Now on the model. Our `extend` draws for every row at every step, finished or not, with one
# `torch.multinomial`, as coca_min does: a generator seeded the same way gives both the same
# random numbers, and with the same probabilities (to float precision) the same tokens.
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
# Six samples of test image 0 at temperature 1.5, without and with a nucleus of 0.9, same seed.
# They visit all three caption forms of training (canonical, "there is …", relational); the
# nucleus cuts the unlikely tail a hot temperature lets in ("green orange cross", second sample).

# %%
six = caption_tokens[:1].expand(6, -1, -1)  # (6, 64, D): image 0, six times
for setting in [dict(temperature=1.5), dict(temperature=1.5, top_p=0.9)]:
    samples, _ = extend(six, sampler(**setting, generator=torch.Generator().manual_seed(0)))
    print(setting, *(tokenizer.decode(row) for row in samples), sep="\n   ")
print("reference:", test.captions[0][0])

# %% [markdown]
# ## 5. The key/value cache
#
# Our `next_log_probs` re-encodes the whole prefix at every step: to get token $t + 1$ it feeds
# $t$ positions through every layer, though every layer is causal (lesson 05), so positions
# $1 \dots t - 1$ give what they gave the step before. $T$ steps feed
# $\sum_{t=1}^{T} t = T(T + 1)/2$ positions: quadratic in the caption length (and the
# self-attention among them, $t^2$ scores at step $t$, adds a cubic term). Each step also
# recomputes, in every multimodal layer, the cross-attention keys and values of the image's 64
# caption tokens.
#
# The cache keeps each layer's self-attention keys and values of the tokens seen; a step feeds
# only the newest token, whose query attends to those keys and its own. The image's keys and
# values are computed once. That is `decoder.new_cache()` and `decoder.decode_step`, which
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
# To count the work, a forward hook on the token embedding, which both paths call at every
# step, adds up the positions fed in (per caption).
#
# **Check 8**: the 8 greedy captions, $T$ steps, feed $T$ positions with the cache and
# $T(T+1)/2$ without (exactly); cached and uncached give identical tokens, greedy and beam.

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
# The time of one decoding step for 8 captions at each position, with coca_min's `Stepper`
# cached and uncached (the fastest of 5 runs, after one to warm up), and the total to reach
# each length. At $t = 1$ both do the same work; after that the uncached step grows with $t$,
# so its total grows quadratically, while the cached step stays about flat. At this tiny width
# a step's fixed per-call overhead is a large part of it; for a large model and long captions
# the count above dominates. The times differ from run to run; nothing below depends on them.

# %% tags=["measured"]
positions = range(1, config.context_length)  # a step at position t reads t tokens, predicts token t + 1
sequence = torch.randint(3, config.vocab_size, (8, config.context_length), generator=torch.Generator().manual_seed(0))
sequence[:, 0] = BOS  # (8, 32): any tokens do to time a step
repeats = 5
seconds = {use_cache: torch.zeros(repeats + 1, len(positions)) for use_cache in (True, False)}
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
fig.suptitle(f"decoding the tiny CoCa on one CPU thread (fastest of {repeats} runs at each position)")
fig.tight_layout()

# %% [markdown]
# ## 6. Captions of test images
#
# The first eight test images and four of the first 100 on which greedy and beam search (4
# beams, $\alpha = 1$) disagree, each with both captions and its canonical reference.

# %%
grid = [*range(8), 41, 62, 69, 72]
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
print("greedy and beam differ on test images", [i for i, g, b in zip(grid, greedy_text, beam_text) if g != b])
exact = {name: sum(text == test.captions[i][0] for i, text in zip(grid, texts)) for name, texts in [("greedy", greedy_text), ("beam", beam_text)]}
print(f"equal to the canonical reference, of these 12: greedy {exact['greedy']}, beam {exact['beam']}")

# %% [markdown]
# ## Summary
# - Every decoding method needs only the next token's log-probabilities. Greedy takes the
#   argmax; beam search keeps the $K$ best sums and returns the best finished caption by
#   $\text{sum} / |y|^\alpha$; sampling draws from the temperature-scaled distribution cut to
#   the top-k and the nucleus. All three, from scratch, give coca_min's tokens and scores.
# - Beam search must sum log-probabilities: raw logits carry an arbitrary constant per step.
# - Without a cache, $T$ steps feed $T(T+1)/2$ positions; with it, $T$, and the same tokens.
#
# ## Exercises
# 1. Add `min_new` to our `beam_search` (no [EOS] before `min_new` generated tokens), check it
#    against `generate(method="beam", min_new=...)` on test image 74 with $\alpha = 0$. At which
#    `min_new` does the short "there is …" caption stop winning?
# 2. From the shapes printed in section 5, how many bytes does a batch of 8's cache hold after
#    31 `decode_step` calls (all layers, keys and values)? Check with the tensors' `nbytes`.
#
# **Coursework.** This lesson teaches the graded exercises `kv_cache_step`
# (`TextDecoder.decode_step` in `coca_min/model/decoder.py`, 10 points, about 40 min),
# `greedy_decoding` (`extend` in `coca_min/model/generate.py`, 5 points, about 20 min),
# `nucleus_sampling` (`sampling_choice.choose` in `coca_min/model/generate.py`, 5 points, about 20
# min) and `beam_search` (`beam_search` in `coca_min/model/generate.py`, 15 points, about 60 min). In
# the student version (`python -m coca_min.coursework make-student`, see
# `coca_min/coursework/README.md`) their code is blanked; write it between the `# BEGIN
# EXERCISE` and `# END EXERCISE` markers, and run the tests named in
# `coca_min/coursework/exercises.py`.
