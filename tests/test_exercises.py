"""Randomised tests of each coursework exercise against an independent reference.

Each test draws its inputs from `grade_seed` (COCA_MIN_GRADE_SEED: the grader sets a new one
for every grading, 0 otherwise), and compares the exercise's function with a reference written
here in another way: explicit loops, brute force over every candidate, or string operations.
So a solution that hard-codes the answers of the other tests does not pass these.

Each test imports the coca_min module it tests itself: a student's file that does not import
(a syntax error) costs the exercises whose tests need it, not every exercise of this file.
"""

import itertools
import math
import os
import random
import socket
from collections import Counter

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import make_tokens

PAD, BOS, EOS = 0, 1, 2  # coca_min.data.tokenizer's special ids


def generators(seed):
    return random.Random(seed), torch.Generator().manual_seed(seed)


def randn(gen, *shape):
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


# --- bpe_merge --------------------------------------------------------------------------------


def merged_by_strings(ids, pair, new_id):
    # each id as a bracketed word, so no match can start inside one; str.replace works left to
    # right and never overlaps, as one BPE merge does
    text = "".join(f"<{i}>" for i in ids).replace(f"<{pair[0]}><{pair[1]}>", f"<{new_id}>")
    return [int(word) for word in text[1:-1].split("><")] if text else []


def test_bpe_merge_matches_string_replacement(grade_seed):
    from coca_min.data.tokenizer import _merge
    rng, _ = generators(grade_seed)
    for _ in range(200):
        ids = [rng.choice([3, 4, 5]) for _ in range(rng.randrange(0, 16))]  # 3 symbols: many repeats
        pair = (rng.choice([3, 4, 5]), rng.choice([3, 4, 5]))  # (a, a) too: "a a a" merges once
        assert _merge(ids, pair, 99) == merged_by_strings(ids, pair, 99), (ids, pair)


# --- text_mask --------------------------------------------------------------------------------


def test_text_mask_matches_its_definition_on_random_padding(grade_seed):
    from coca_min.model.layers import causal_padding_mask
    rng, gen = generators(grade_seed)
    for _ in range(20):
        B, T = rng.randrange(1, 5), rng.randrange(1, 9)
        is_pad = torch.rand(B, T, generator=gen) < 0.4  # anywhere, all-padding rows too
        expected = torch.zeros(B, T, T, dtype=torch.bool)
        for b, t, s in itertools.product(range(B), range(T), range(T)):
            expected[b, t, s] = (s <= t and not is_pad[b, s]) or s == t
        assert torch.equal(causal_padding_mask(is_pad), expected), is_pad


# --- attention and the attentional pooler -----------------------------------------------------


def attention_by_loops(attn, x, context=None, allowed=None):
    """Multi-head attention from `attn`'s weights, one batch row, head and query at a time.
    allowed: (B, T, S) bool or None."""
    context = x if context is None else context
    B, T, _ = x.shape
    S, h = context.shape[1], attn.n_heads
    q, k, v = attn.q_proj(x), attn.k_proj(context), attn.v_proj(context)  # (B, T|S, dim)
    d = q.shape[-1] // h
    out = torch.zeros_like(q)
    for b, head, t in itertools.product(range(B), range(h), range(T)):
        part = slice(head * d, (head + 1) * d)
        scores = torch.stack([q[b, t, part] @ k[b, s, part] / math.sqrt(d) for s in range(S)])  # (S,)
        if allowed is not None:
            scores = scores.masked_fill(~allowed[b, t], float("-inf"))
        out[b, t, part] = scores.softmax(0) @ v[b, :, part]
    return attn.out_proj(out)


def random_allowed(gen, B, T, S):
    allowed = torch.rand(B, T, S, generator=gen) < 0.6
    allowed[torch.arange(B)[:, None], torch.arange(T)[None, :], torch.randint(S, (B, T), generator=gen)] = True
    return allowed  # every query may attend to at least one key


@torch.no_grad()
def test_attention_matches_loops_for_every_kind_of_mask(grade_seed):
    from coca_min.model.layers import Attention
    rng, gen = generators(grade_seed)
    torch.manual_seed(grade_seed)
    for case in ["none", "2d", "3d", "padding", "3d+padding", "cross", "cross+padding"]:
        heads, d_head = rng.randrange(1, 4), rng.randrange(1, 5)
        B, T, S = rng.randrange(1, 4), rng.randrange(1, 6), rng.randrange(1, 6)
        cross = case.startswith("cross")
        context_dim = rng.randrange(2, 7) if cross else None
        attn = Attention(heads * d_head, heads, context_dim).double()
        x = randn(gen, B, T, heads * d_head)
        context = randn(gen, B, S, context_dim) if cross else None
        S = S if cross else T
        allowed = random_allowed(gen, B, T, S)
        allowed[..., 0] = True  # key 0 is never padding: every query keeps a key under both masks
        key_padding = torch.rand(B, S, generator=gen) < 0.3
        key_padding[:, 0] = False
        kwargs, expected_allowed = {}, torch.ones(B, T, S, dtype=torch.bool)
        if case == "2d":  # (T, S): the same for every text
            kwargs["mask"], expected_allowed = allowed[0], allowed[0].expand(B, T, S)
        if case.startswith("3d"):
            kwargs["mask"], expected_allowed = allowed, allowed
        if case.endswith("padding"):
            kwargs["key_padding_mask"] = key_padding
            expected_allowed = expected_allowed & ~key_padding[:, None, :]
        got = attn(x, context=context, **kwargs)
        torch.testing.assert_close(got, attention_by_loops(attn, x, context, expected_allowed), atol=1e-10, rtol=0, msg=case)


@torch.no_grad()
def test_attentional_pooler_matches_loops(grade_seed):
    from coca_min.model.pooler import AttentionalPooler
    rng, gen = generators(grade_seed)
    torch.manual_seed(grade_seed)
    heads, d_head, context_dim = rng.randrange(1, 4), rng.randrange(1, 4), rng.randrange(2, 7)
    n_queries, B, N = rng.randrange(1, 5), rng.randrange(1, 4), rng.randrange(1, 7)
    pooler = AttentionalPooler(heads * d_head, n_queries, heads, context_dim, query_std=1.0).double()
    context = randn(gen, B, N, context_dim)
    queries = pooler.queries.expand(B, -1, -1)  # the same learned queries for every image
    expected = pooler.ln_out(attention_by_loops(pooler.attn, queries, pooler.ln_context(context)))
    torch.testing.assert_close(pooler(context), expected, atol=1e-10, rtol=0)


# --- the image encoder ------------------------------------------------------------------------


def random_micro_model(seed, micro_config):
    from coca_min import CoCa
    torch.manual_seed(seed)
    return CoCa(micro_config).double().eval()


@torch.no_grad()
def test_vit_forward_matches_patches_cut_out_one_by_one(grade_seed, micro_config):
    rng, gen = generators(grade_seed)
    vit = random_micro_model(grade_seed, micro_config).image_encoder
    p, size = micro_config.patch_size, micro_config.image_size
    images = randn(gen, rng.randrange(1, 4), 3, size, size)
    patches = [images[:, :, i : i + p, j : j + p].permute(0, 2, 3, 1).flatten(1)  # (B, p·p·C), raster order
               for i in range(0, size, p) for j in range(0, size, p)]  # fmt: skip
    x = vit.patch_embed(torch.stack(patches, dim=1)) + vit.pos_embed
    for block in vit.blocks:
        x = block(x)
    torch.testing.assert_close(vit(images), vit.ln_out(x), atol=1e-10, rtol=0)


# --- the text decoder: [CLS] and the key/value cache ------------------------------------------


@torch.no_grad()
def test_text_embedding_matches_each_text_alone_without_padding(grade_seed, micro_config):
    rng, gen = generators(grade_seed)
    decoder = random_micro_model(grade_seed, micro_config).text_decoder
    T = micro_config.context_length
    lengths = [rng.randrange(2, T + 1) for _ in range(4)]
    tokens = make_tokens(lengths, T, micro_config.vocab_size, gen)
    embedding, features = decoder.unimodal(tokens)
    for b, n in enumerate(lengths):  # text b alone: its n real tokens, then [CLS], no padding
        x = torch.cat([decoder.token_embedding(tokens[b, :n]) + decoder.pos_embedding[:n], decoder.cls_embedding.view(1, -1)])
        causal = torch.ones(n + 1, n + 1, dtype=torch.bool).tril()
        x = x[None]
        for layer in decoder.unimodal_layers:
            x = layer(x, mask=causal)
        expected = torch.nn.functional.normalize(decoder.text_projection(decoder.ln_cls(x[0, n])), dim=-1)
        torch.testing.assert_close(embedding[b], expected, atol=1e-10, rtol=0)
        torch.testing.assert_close(features[b, :n], x[0, :n], atol=1e-10, rtol=0)


@torch.no_grad()
def test_cached_decoding_in_random_chunks_matches_the_whole_text(grade_seed, micro_config):
    rng, gen = generators(grade_seed)
    model = random_micro_model(grade_seed, micro_config)
    B, T = rng.randrange(1, 4), micro_config.context_length
    tokens = torch.randint(3, micro_config.vocab_size, (B, T), generator=gen)
    tokens[:, 0] = BOS
    _, caption_tokens = model.encode_image(randn(gen, B, 3, micro_config.image_size, micro_config.image_size))
    features = model.text_decoder.unimodal(tokens)[1]
    expected = model.text_decoder.multimodal(features, tokens, caption_tokens)  # (B, T, V), no cache
    cache, start = model.text_decoder.new_cache(), 0
    while start < T:  # a prompt of several tokens, then chunks of 1-3
        t = rng.randrange(1, min(3, T - start) + 1)
        got = model.text_decoder.decode_step(tokens[:, start : start + t], caption_tokens, cache)
        torch.testing.assert_close(got, expected[:, start : start + t], atol=1e-10, rtol=0)
        start += t
    assert cache["length"] == T


# --- the losses -------------------------------------------------------------------------------


def test_contrastive_loss_matches_loops(grade_seed):
    from coca_min.model.losses import contrastive_loss
    rng, gen = generators(grade_seed)
    for _ in range(5):
        B, E = rng.randrange(1, 7), rng.randrange(2, 6)
        x = torch.nn.functional.normalize(randn(gen, B, E), dim=-1)
        y = torch.nn.functional.normalize(randn(gen, B, E), dim=-1)
        s = rng.uniform(1, 100)
        sim = [[s * float(x[i] @ y[j]) for j in range(B)] for i in range(B)]
        image_to_text = -sum(sim[i][i] - math.log(sum(math.exp(v) for v in sim[i])) for i in range(B)) / B
        text_to_image = -sum(sim[j][j] - math.log(sum(math.exp(sim[i][j]) for i in range(B))) for j in range(B)) / B
        got = contrastive_loss(x, y, torch.tensor(s, dtype=torch.float64))
        assert got.item() == pytest.approx(image_to_text + text_to_image, rel=1e-9)  # eq. 1: the sum


def test_contrastive_loss_with_a_gather_is_the_whole_batchs_loss_over_simulated_ranks(grade_seed):
    # W ranks of B pairs each, simulated in one process: rank r holds rows r·B … (r+1)·B - 1, and
    # its `gather` returns every rank's rows in rank order. The W ranks' losses then average to
    # the whole batch's loss, as functions of every row: the values and the gradients agree.
    from coca_min.model.losses import contrastive_loss
    rng, gen = generators(grade_seed)
    for _ in range(3):
        W, B, E = rng.randrange(2, 5), rng.randrange(1, 4), rng.randrange(2, 6)
        X = torch.nn.functional.normalize(randn(gen, W * B, E), dim=-1).requires_grad_()
        Y = torch.nn.functional.normalize(randn(gen, W * B, E), dim=-1).requires_grad_()
        s = torch.tensor(rng.uniform(1, 100), dtype=torch.float64)
        losses = []
        for r in range(W):
            rows = slice(r * B, (r + 1) * B)

            def gather(local, rows=rows):  # this rank's rows (images or texts) among every rank's
                every = X if torch.equal(local, X[rows]) else Y
                return torch.cat([every[: rows.start], local, every[rows.stop :]])

            losses.append(contrastive_loss(X[rows], Y[rows], s, gather=gather, rank=r))
        mean, whole = torch.stack(losses).mean(), contrastive_loss(X, Y, s)
        assert mean.item() == pytest.approx(whole.item(), rel=1e-9)  # labels offset by r·B
        for got, expected in zip(torch.autograd.grad(mean, [X, Y]), torch.autograd.grad(whole, [X, Y])):
            assert torch.allclose(got, expected, rtol=1e-9, atol=1e-12)


def test_caption_loss_matches_loops(grade_seed):
    from coca_min.model.losses import caption_loss
    rng, gen = generators(grade_seed)
    for _ in range(5):
        B, T, V = rng.randrange(1, 4), rng.randrange(1, 6), rng.randrange(2, 7)
        logits = randn(gen, B, T, V) * 3
        targets = torch.randint(0, V, (B, T), generator=gen)  # id 0 is [PAD], anywhere
        terms = [-logits[b, t].log_softmax(0)[targets[b, t]].item()
                 for b in range(B) for t in range(T) if targets[b, t] != PAD]  # fmt: skip
        expected = sum(terms) / len(terms) if terms else 0.0  # the mean over real tokens
        assert caption_loss(logits, targets, PAD).item() == pytest.approx(expected, rel=1e-9, abs=1e-12)


# --- the distributed gather -------------------------------------------------------------------


def gather_worker(rank, world, port, seed, B, E, out):
    from coca_min.train.distributed import AllGatherWithGrad
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    x = torch.randn(B, E, generator=torch.Generator().manual_seed(seed + rank), dtype=torch.float64, requires_grad=True)
    weight = torch.randn(world * B, E, generator=torch.Generator().manual_seed(seed + 1000 + rank), dtype=torch.float64)
    gathered = AllGatherWithGrad.apply(x)  # (world·B, E)
    (weight * gathered).sum().backward()  # rank r's own loss, a different one on each rank
    torch.save((gathered.detach(), x.grad), f"{out}/rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def test_all_gather_gradient_is_the_sum_of_every_ranks_loss(grade_seed, tmp_path):
    rng, _ = generators(grade_seed)
    world, B, E = rng.choice([2, 3]), rng.randrange(1, 4), rng.randrange(1, 4)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(gather_worker, args=(world, port, grade_seed, B, E, tmp_path), nprocs=world, start_method="spawn")
    xs = [torch.randn(B, E, generator=torch.Generator().manual_seed(grade_seed + r), dtype=torch.float64) for r in range(world)]
    weights = [torch.randn(world * B, E, generator=torch.Generator().manual_seed(grade_seed + 1000 + r), dtype=torch.float64)
               for r in range(world)]  # fmt: skip
    for rank in range(world):
        gathered, grad = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(gathered, torch.cat(xs))
        # the total loss is the sum over ranks; rank r's rows reach every rank's loss
        expected = sum(w[rank * B : (rank + 1) * B] for w in weights)
        torch.testing.assert_close(grad, expected, atol=1e-12, rtol=0)


# --- decoding: a random "model" that is a table of next-token logits --------------------------


class TableModel:
    """step(tokens (N, L)) -> logits (N, V): random numbers fixed by the seed and the whole
    prefix, so any decoding order sees the same model."""

    def __init__(self, seed, vocab_size, eos_bias=0.0):
        self.seed, self.V, self.eos_bias, self.table = seed, vocab_size, eos_bias, {}

    def logits(self, prefix):
        if prefix not in self.table:
            gen = torch.Generator().manual_seed(hash((self.seed, prefix)) % 2**62)
            row = torch.randn(self.V, generator=gen) * 2
            row[EOS] += self.eos_bias
            self.table[prefix] = row
        return self.table[prefix]

    def log_probs(self, prefix, n_generated, min_new):
        lp = self.logits(prefix).log_softmax(0).tolist()  # as decoding does: never [PAD] or [BOS],
        lp[PAD] = lp[BOS] = -math.inf  # nor [EOS] before min_new tokens; no renormalising
        if n_generated < min_new:
            lp[EOS] = -math.inf
        return lp

    def step(self, tokens):
        return torch.stack([self.logits(tuple(row)) for row in tokens.tolist()])


def test_greedy_decoding_matches_a_loop_per_caption(grade_seed):
    from coca_min.model.generate import extend, greedy_choice
    rng, gen = generators(grade_seed)
    for _ in range(5):
        V, N, P, max_new = rng.randrange(4, 9), rng.randrange(1, 5), rng.randrange(1, 3), rng.randrange(1, 8)
        min_new = rng.randrange(0, max_new + 1)
        model = TableModel(rng.randrange(10**6), V, eos_bias=rng.uniform(-1, 2))
        prompt = torch.cat([torch.full((N, 1), BOS), torch.randint(3, V, (N, P - 1), generator=gen)], dim=1)
        tokens, scores = extend(model.step, prompt, greedy_choice, max_new, min_new)
        expected_rows, expected_scores = [], []
        for row in prompt.tolist():
            score = 0.0
            for i in range(max_new):
                lp = model.log_probs(tuple(row), i, min_new)
                best = max(range(V), key=lambda v: lp[v])
                row, score = row + [best], score + lp[best]
                if best == EOS:
                    break
            expected_rows.append(row)
            expected_scores.append(score)
        width = max(map(len, expected_rows))  # after [EOS] a caption only pads
        assert tokens.tolist() == [r + [PAD] * (width - len(r)) for r in expected_rows]
        assert scores.tolist() == pytest.approx(expected_scores, abs=1e-5)


def kept_distribution(log_probs, temperature, top_k, top_p):
    """The distribution sampling should draw from: one row (V,) -> probabilities, by brute force."""
    logits = (log_probs / temperature).tolist()
    V = len(logits)
    kept = set(range(V))
    if top_k:
        kth = sorted(logits, reverse=True)[min(top_k, V) - 1]
        kept = {v for v in kept if logits[v] >= kth}
    z = sum(math.exp(logits[v]) for v in kept)
    probs = {v: math.exp(logits[v]) / z for v in kept}
    if top_p is not None and top_p < 1:
        chosen, mass = set(), 0.0
        for v in sorted(kept, key=lambda v: -probs[v]):  # most likely first, until top_p is reached
            if chosen and mass >= top_p:
                break
            chosen.add(v)
            mass += probs[v]
        kept = chosen
    z = sum(math.exp(logits[v]) for v in kept)
    return torch.tensor([math.exp(logits[v]) / z if v in kept else 0.0 for v in range(V)])


def test_sampling_draws_from_the_top_k_and_nucleus_distribution(grade_seed):
    from coca_min.model.generate import sampling_choice
    rng, gen = generators(grade_seed)
    draws = 20000
    settings = [(rng.randrange(1, 4), None), (None, rng.uniform(0.1, 0.95)),  # top-k, top-p, both,
                (rng.randrange(2, 12), rng.uniform(0.3, 0.95)), (rng.choice([None, 0]), rng.choice([None, 0.0, 1.0]))]
    for top_k, top_p in settings:  # and no filter or a plain greedy pick
        V = rng.randrange(3, 10)
        log_probs = (torch.randn(3, V, generator=gen) * 2).log_softmax(-1)
        temperature = rng.uniform(0.5, 2.0)
        choose = sampling_choice(temperature, top_k, top_p, generator=torch.Generator().manual_seed(grade_seed))
        picked = choose(log_probs.repeat_interleave(draws, dim=0)).view(3, draws)
        for row in range(3):
            expected = kept_distribution(log_probs[row], temperature, top_k, top_p)
            freq = torch.bincount(picked[row], minlength=V).double() / draws
            setting = f"T={temperature:.2f} top_k={top_k} top_p={top_p}: expected {expected.tolist()}, drawn {freq.tolist()}"
            assert (freq[expected == 0] == 0).all(), setting  # never a token outside the kept set
            assert (freq - expected).abs().max() < 0.03, setting  # 20,000 draws: the std is under 0.004


def test_beam_search_with_beams_for_every_caption_finds_the_brute_force_best(grade_seed):
    from coca_min.model.generate import beam_search
    rng, gen = generators(grade_seed)
    for length_penalty in [0.0, rng.choice([0.5, 1.0]), rng.choice([1.5, 2.0])]:  # with and without the penalty
        V, max_new = 6, rng.randrange(2, 5)  # words 3, 4, 5 and [EOS]
        min_new = rng.randrange(0, 2)
        model = TableModel(rng.randrange(10**6), V, eos_bias=rng.uniform(-1, 1))
        N = rng.randrange(1, 4)
        prompt = torch.cat([torch.full((N, 1), BOS), torch.randint(3, V, (N, 1), generator=gen)], dim=1)
        K = 3 ** (max_new - 1)  # as many beams as live captions: none is ever dropped
        tokens, scores = beam_search(model.step, lambda rows: None, prompt, K, max_new, min_new, length_penalty)
        for row, got_tokens, got_score in zip(prompt.tolist(), tokens.tolist(), scores.tolist()):
            best, best_score = None, -math.inf
            for n in range(1, max_new + 1):  # every finished caption: n - 1 words, then [EOS]
                for words in itertools.product([3, 4, 5], repeat=n - 1):
                    text, total = list(row), 0.0
                    for i, token in enumerate([*words, EOS]):
                        total += model.log_probs(tuple(text), i, min_new)[token]
                        text.append(token)
                    score = total / n**length_penalty
                    if score > best_score:
                        best, best_score = text, score
            setting = f"max_new={max_new} min_new={min_new} length_penalty={length_penalty}"
            assert got_tokens[: len(best)] == best and set(got_tokens[len(best) :]) <= {PAD}, setting
            assert got_score == pytest.approx(best_score, abs=1e-4), setting


# --- evaluation -------------------------------------------------------------------------------


def test_retrieval_rank_matches_counting_with_ties(grade_seed):
    from coca_min.eval.metrics import wrong_at_least_as_high
    rng, gen = generators(grade_seed)
    for _ in range(10):
        N, M = rng.randrange(1, 6), rng.randrange(1, 8)
        scores = torch.randint(0, 4, (N, M), generator=gen).float()  # few values: many ties
        correct = torch.rand(N, M, generator=gen) < 0.3
        correct[torch.arange(N), torch.randint(M, (N,), generator=gen)] = True
        expected = []
        for n in range(N):
            best = max(scores[n, m] for m in range(M) if correct[n, m])
            expected.append(sum(1 for m in range(M) if not correct[n, m] and scores[n, m] >= best))  # ties count
        assert wrong_at_least_as_high(scores, correct).tolist() == expected


WORDS = ["a", "red", "blue", "circle", "square", "big"]


def random_sentence(rng, shortest, longest):
    return [rng.choice(WORDS) for _ in range(rng.randrange(shortest, longest + 1))]


def bleu_by_counting(candidates, references, n_max=4):
    correct, total, cand_len, ref_len = [0] * n_max, [0] * n_max, 0, 0
    for cand, refs in zip(candidates, references):
        for n in range(1, n_max + 1):
            grams = [tuple(cand[i : i + n]) for i in range(len(cand) - n + 1)]
            for gram in set(grams):  # clipped: at most as often as in the reference that has it most
                in_refs = max(sum(tuple(r[i : i + n]) == gram for i in range(len(r) - n + 1)) for r in refs)
                correct[n - 1] += min(grams.count(gram), in_refs)
            total[n - 1] += len(grams)
        cand_len += len(cand)
        ref_len += sorted((abs(len(r) - len(cand)), len(r)) for r in refs)[0][1]  # closest; shorter on ties
    scores, product = [], 1.0
    for n in range(n_max):
        product *= (correct[n] + 1e-15) / (total[n] + 1e-9)
        scores.append(product ** (1 / (n + 1)))
    ratio = (cand_len + 1e-15) / (ref_len + 1e-9)
    brevity = math.exp(1 - 1 / ratio) if ratio < 1 else 1.0  # short candidates pay
    return [s * brevity for s in scores]


def test_bleu_matches_counting_by_brute_force(grade_seed):
    from coca_min.eval.metrics import bleu
    rng, _ = generators(grade_seed)
    for _ in range(10):
        n_images = rng.randrange(1, 5)
        candidates = [random_sentence(rng, 1, 7) for _ in range(n_images)]  # often shorter than
        references = [[random_sentence(rng, 3, 9) for _ in range(rng.randrange(1, 4))] for _ in range(n_images)]
        got = bleu([" ".join(c) for c in candidates], [[" ".join(r) for r in refs] for refs in references])
        assert got == pytest.approx(bleu_by_counting(candidates, references), rel=1e-9, abs=1e-12)


def cider_d_with_matrices(candidates, references, n_max=4, sigma=6.0):
    """CIDEr-D with n-gram count vectors over one vocabulary per n (numpy arrays, not dicts)."""
    import numpy as np

    def counts(words, n):
        return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))

    n_images, per_n = len(references), []
    for n in range(1, n_max + 1):
        vocab = sorted({g for s in candidates + [r for refs in references for r in refs] for g in counts(s, n)})
        index = {g: i for i, g in enumerate(vocab)}

        def vector(words):
            v = np.zeros(len(vocab))
            for g, c in counts(words, n).items():
                v[index[g]] = c
            return v

        in_image = np.array([sum(vector(r) for r in refs) > 0 for refs in references]).reshape(n_images, len(vocab))
        idf = np.log(n_images) - np.log(np.maximum(1.0, in_image.sum(0)))  # document frequency: references only
        per_image = []
        for cand, refs in zip(candidates, references):
            c = vector(cand) * idf
            sims = []
            for r in refs:
                rv = vector(r) * idf
                dot = float(np.minimum(c, rv) @ rv)  # CIDEr-D clips the candidate's counts
                if np.linalg.norm(c) and np.linalg.norm(rv):
                    dot /= np.linalg.norm(c) * np.linalg.norm(rv)
                gap = max(len(cand) - 1, 0) - max(len(r) - 1, 0)  # pycocoevalcap's length: bigrams
                sims.append(dot * math.exp(-(gap**2) / (2 * sigma**2)))
            per_image.append(sum(sims) / len(refs))
        per_n.append(per_image)
    return float(np.mean(10.0 * np.mean(per_n, axis=0)))


def test_cider_d_matches_a_matrix_computation(grade_seed):
    from coca_min.eval.metrics import cider_d
    rng, _ = generators(grade_seed)
    for _ in range(10):
        n_images = rng.randrange(2, 6)
        candidates = [random_sentence(rng, 1, 7) for _ in range(n_images)]
        references = [[random_sentence(rng, 1, 8) for _ in range(rng.randrange(1, 4))] for _ in range(n_images)]
        got = cider_d([" ".join(c) for c in candidates], [[" ".join(r) for r in refs] for refs in references])
        assert got == pytest.approx(cider_d_with_matrices(candidates, references), rel=1e-9, abs=1e-12)
