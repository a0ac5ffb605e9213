"""Captioning with a trained CoCa: greedy, beam search and sampling (paper §4.3, SPEC §5).

The image is encoded once; the decoder then extends every caption one token at a time. With the
key/value cache (default), each step feeds only the newest token: the self-attention keys and
values of earlier tokens are kept per layer in both decoder halves, and the cross-attention keys
and values of the image are computed once. Without it (`use_cache=False`), each step re-encodes
the whole prefix exactly as training does; the two give the same tokens.

Search methods, all batched over images:
- greedy: the most likely next token each step.
- beam search: keeps the `num_beams` best partial captions by their summed log-probabilities
  (not raw logits, open_clip's bug in v3.3.0); a caption that produces [EOS] leaves the beam
  for a store of finished ones, ranked by sum / length^length_penalty, and the best finished
  caption is the result (one cut off at the length limit only if none finished).
- sampling: from softmax(log p / temperature), optionally restricted to the top-k tokens and to
  the smallest set whose probability reaches top-p (nucleus); top_k = 0 is no top-k filter,
  top_p = 0 keeps only the most likely token.

Left out: repetition penalties, diverse beam search, batched prompts of different lengths (one
prompt serves the whole batch).
"""

import torch

from coca_min.config import CoCaConfig

# the special tokens' ids, as every config has them unless it says otherwise: [PAD], [BOS], [EOS]
PAD, BOS, EOS = CoCaConfig.pad_id, CoCaConfig.bos_id, CoCaConfig.eos_id


class Stepper:
    """Next-token logits of growing captions for one batch of images, cached or not."""

    def __init__(self, model, caption_tokens, use_cache=True):
        self.decoder, self.caption_tokens = model.text_decoder, caption_tokens  # (N, n_q, D)
        self.cache = self.decoder.new_cache() if use_cache else None

    def __call__(self, tokens):  # (N, L) every token so far -> (N, V) logits of token L + 1
        if self.cache is None:  # re-encode the whole prefix, as in training
            _, features = self.decoder.unimodal(tokens)
            return self.decoder.multimodal(features, tokens, self.caption_tokens)[:, -1]
        new_tokens = tokens[:, self.cache["length"] :]  # only what the cache has not seen
        return self.decoder.decode_step(new_tokens, self.caption_tokens, self.cache)[:, -1]

    def reorder(self, rows):  # (N',) row i of the next step continues old row rows[i]
        self.caption_tokens = self.caption_tokens[rows]
        for layer in self.cache["layers"] if self.cache else []:
            for kv in layer.values():  # "self" and "cross": (N, h, S, d_head) each
                kv.update({name: tensor[rows] for name, tensor in kv.items()})


def next_log_probs(step, tokens, n_generated, min_new, eos_id, pad_id, bos_id):
    """log p(next token) (N, V) in float32; [PAD] and [BOS] are never generated, nor [EOS]
    before `min_new` tokens."""
    log_probs = step(tokens).float().log_softmax(dim=-1)
    log_probs[:, [pad_id, bos_id]] = float("-inf")
    if n_generated < min_new:
        log_probs[:, eos_id] = float("-inf")
    return log_probs


def extend(step, tokens, choose, max_new, min_new=0, eos_id=EOS, pad_id=PAD, bos_id=BOS):
    """Greedy or sampled decoding: `choose` picks next tokens (N,) from log-probs (N, V).
    Returns tokens (N, P + n) ([EOS] then [PAD] after the end) and summed log-probs (N,)."""
    # BEGIN EXERCISE greedy_decoding
    scores = torch.zeros(tokens.shape[0], device=tokens.device)
    finished = torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device)
    for i in range(max_new):
        log_probs = next_log_probs(step, tokens, i, min_new, eos_id, pad_id, bos_id)
        next_token = choose(log_probs)  # (N,)
        scores += torch.where(finished, 0.0, log_probs.gather(1, next_token[:, None])[:, 0])
        next_token = torch.where(finished, pad_id, next_token)  # ended captions only pad
        tokens = torch.cat([tokens, next_token[:, None]], dim=1)
        finished |= next_token == eos_id
        if finished.all():
            break
    return tokens, scores
    # END EXERCISE


def greedy_choice(log_probs):
    return log_probs.argmax(dim=-1)


def sampling_choice(temperature=1.0, top_k=None, top_p=None, generator=None):
    """A `choose` for `extend` that samples, with temperature, top-k and nucleus (top-p).

    top_k: keep the k most likely tokens; None or 0 keeps all (as the common libraries do).
    top_p: keep the smallest set of most likely tokens whose probability reaches top_p, in
    [0, 1]; 0 keeps only the most likely token (greedy), None or 1 keeps all."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 (use greedy decoding for 0); got {temperature}")
    if top_k is not None and (top_k < 0 or top_k != int(top_k)):
        raise ValueError(f"top_k must be a whole number >= 0 (0: no top-k filter); got {top_k}")
    if top_p is not None and not 0 <= top_p <= 1:
        raise ValueError(f"top_p must be in [0, 1] (0 keeps only the most likely token); got {top_p}")

    def choose(log_probs):  # (N, V)
        # BEGIN EXERCISE nucleus_sampling
        logits = log_probs / temperature
        if top_k:
            kth_best = logits.topk(min(int(top_k), logits.shape[-1]), dim=-1).values[:, -1:]  # (N, 1)
            logits = logits.masked_fill(logits < kth_best, float("-inf"))
        if top_p is not None and top_p < 1:
            sorted_logits, order = logits.sort(dim=-1, descending=True)
            probs = sorted_logits.softmax(dim=-1)
            before = probs.cumsum(dim=-1) - probs  # probability of the tokens ranked higher
            drop = before >= top_p  # already enough without this token
            drop[:, 0] = False  # the most likely token always stays (top_p = 0: greedy)
            sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
            logits = torch.full_like(logits, float("-inf")).scatter(1, order, sorted_logits)
        return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)[:, 0]
        # END EXERCISE

    return choose


def beam_search(step, reorder, tokens, num_beams, max_new, min_new=0, length_penalty=1.0,
                eos_id=EOS, pad_id=PAD, bos_id=BOS):  # fmt: skip
    """Each image's best caption (B, P + n) and its score: summed log-probabilities /
    length^length_penalty, the length counting generated tokens up to and with [EOS].

    `num_beams` live captions are extended by one token per step. A candidate that ends with
    [EOS] leaves the beam for a separate store of finished captions (each image's best so far),
    so a finished caption never competes with live ones for a slot, and the beam keeps the K
    best captions that go on. The result is the best finished caption; a caption cut off at
    `max_new` is returned only when none finished. The search stops early once no live caption
    can still beat the best finished one."""
    # BEGIN EXERCISE beam_search
    B, K, P = tokens.shape[0], num_beams, tokens.shape[1]
    device = tokens.device
    start = torch.arange(B, device=device).repeat_interleave(K)  # (B K,) K copies each
    tokens = tokens[start]
    reorder(start)
    scores = torch.zeros(B, K, device=device)
    scores[:, 1:] = float("-inf")  # only one copy is alive at first, or the beam fills with twins
    scores = scores.view(-1)  # (B K,) summed log-probabilities of the live captions
    best_tokens = torch.full((B, P + max_new), pad_id, device=device)  # finished: [BOS] … [EOS] [PAD]…
    best_scores = torch.full((B,), float("-inf"), device=device)  # -inf: none finished yet
    image = torch.arange(B, device=device)
    for i in range(max_new):  # live captions hold i generated tokens
        log_probs = next_log_probs(step, tokens, i, min_new, eos_id, pad_id, bos_id)  # (B K, V)
        V = log_probs.shape[-1]
        candidates = scores[:, None] + log_probs  # (B K, V): every one-token extension
        # ending now: i + 1 tokens with [EOS]; keep each image's best if it beats its store
        ended, beam = (candidates[:, eos_id] / (i + 1) ** length_penalty).view(B, K).max(dim=1)  # (B,)
        better = ended > best_scores
        if better.any():
            best_tokens[better, : P + i] = tokens[(image * K + beam)[better]]
            best_tokens[better, P + i :] = pad_id
            best_tokens[better, P + i] = eos_id
            best_scores = torch.where(better, ended, best_scores)
        candidates[:, eos_id] = float("-inf")  # the beam: the K best captions that go on
        top = candidates.view(B, K * V).topk(K, dim=-1)  # (B, K) over beams x tokens
        rows = (image[:, None] * K + top.indices // V).view(-1)
        scores = top.values.view(-1)
        tokens = torch.cat([tokens[rows], (top.indices % V).view(-1, 1)], dim=1)
        reorder(rows)  # the cache follows its beams
        # a live sum S <= 0 only falls, so the best a live caption can still end with is S over
        # the largest length it can reach (penalty >= 0), or the smallest (penalty < 0)
        reach = max_new if length_penalty >= 0 else i + 2
        if i + 1 < max_new and (best_scores >= scores.view(B, K).max(1).values / reach**length_penalty).all():
            break
    # none finished: fall back to the best live caption, cut off after max_new tokens
    cut_off = best_scores == float("-inf")
    if cut_off.any():
        live, beam = scores.view(B, K).max(dim=1)  # (B,) all live captions have the same length
        best_tokens[cut_off, : tokens.shape[1]] = tokens[image * K + beam][cut_off]
        best_scores = torch.where(cut_off, live / (tokens.shape[1] - P) ** length_penalty, best_scores)
    width = int((best_tokens != pad_id).sum(1).max())  # the longest caption returned ([PAD] only after it)
    return best_tokens[:, :width], best_scores
    # END EXERCISE


@torch.inference_mode()
def generate(model, images, method="greedy", max_new=None, min_new=0, num_beams=4,
             length_penalty=1.0, temperature=1.0, top_k=None, top_p=None, prompt_ids=(),
             use_cache=True, generator=None):  # fmt: skip
    """Caption a batch of images (B, 3, H, W) -> tokens (B, L) `[BOS] prompt … [EOS] [PAD]…` and
    scores (B,) (summed log-probabilities; length-penalised for beam search)."""
    _, caption_tokens = model.encode_image(images)  # (B, n_queries, D), once per image
    return generate_from_caption_tokens(model, caption_tokens, method, max_new, min_new, num_beams, length_penalty,
                                        temperature, top_k, top_p, prompt_ids, use_cache, generator)  # fmt: skip


@torch.inference_mode()
def generate_from_caption_tokens(model, caption_tokens, method="greedy", max_new=None, min_new=0, num_beams=4,
                                 length_penalty=1.0, temperature=1.0, top_k=None, top_p=None, prompt_ids=(),
                                 use_cache=True, generator=None):  # fmt: skip
    """`generate` from the caption pooler's output (B, n_queries, D) instead of images: what the
    video model (`coca_min/eval/video.py`) pools from all of a clip's frames decodes the same way."""
    c = model.config
    if method not in ("greedy", "beam", "sample"):
        raise ValueError(f"method must be 'greedy', 'beam' or 'sample'; got {method!r}")
    prefix = torch.tensor([[c.bos_id, *prompt_ids]] * len(caption_tokens), device=caption_tokens.device)
    room = c.context_length - prefix.shape[1]
    max_new = room if max_new is None else min(max_new, room)
    if max_new < 1:
        raise ValueError(f"the prompt ({len(prompt_ids)} tokens) leaves no room in the context of {c.context_length}")
    step = Stepper(model, caption_tokens, use_cache)
    specials = dict(eos_id=c.eos_id, pad_id=c.pad_id, bos_id=c.bos_id)
    if method == "beam":
        return beam_search(step, step.reorder, prefix, num_beams, max_new, min_new, length_penalty, **specials)
    choose = greedy_choice if method == "greedy" else sampling_choice(temperature, top_k, top_p, generator)
    return extend(step, prefix, choose, max_new, min_new, **specials)


def caption(model, tokenizer, images, prompt="", **options) -> list[str]:
    """Captions as text, continuing `prompt` if one is given (e.g. "a small red")."""
    prompt_ids = tokenizer.encode(prompt)[1:-1] if prompt else ()  # without [BOS], [EOS]
    tokens, _ = generate(model, images, prompt_ids=prompt_ids, **options)
    return [tokenizer.decode(row) for row in tokens]
