# %% [markdown]
# # Lesson 01 — The tokenizer: byte-level BPE from scratch
#
# **What you will learn**
# - why a text model reads *token ids*, and why bytes make every text encodable;
# - byte-pair encoding (BPE): learn merges by counting adjacent pairs, then apply them in order;
# - the special tokens [PAD], [BOS], [EOS] and why coca_min keeps the pad id apart;
# - that coca_min's shipped tokenizer is exactly what the algorithm below learns.
#
# **Paper**: §4.1 ("a SentencePiece model with 64k vocabulary"). coca_min trains its own small
# BPE instead, in the manner of GPT-2, which is simpler to write and to read.
#
# **Assumes**: lesson 00 (the tiny captions).

# %% [markdown]
# ## Set-up
# Imports, a fixed seed and thread count (the same numbers on every run), and the versions.

# %%
import random
import re
from collections import Counter

import matplotlib.pyplot as plt
import numpy as np
import torch

from coca_min.data.datasets import TINY_DATA
from coca_min.data.tokenizer import BOS, BYTE_OFFSET, EOS, PAD, SPLIT_PATTERN, Tokenizer, _merge

torch.manual_seed(0)
torch.set_num_threads(2)
print("torch", torch.__version__, "| numpy", np.__version__)

# %% [markdown]
# ## 1. Text as bytes
#
# The decoder predicts one id at a time from a fixed vocabulary. Starting from the UTF-8
# *bytes* of a text means the vocabulary begins with only 256 symbols and can still encode any
# text, emoji included. coca_min reserves ids 0, 1, 2 for [PAD], [BOS] (begin) and [EOS] (end),
# so byte $b$ becomes id $b + 3$.

# %%
text = "a red circle"
ids = [BYTE_OFFSET + b for b in text.encode("utf-8")]
print(len(text), "characters ->", len(ids), "byte ids:", ids)
print("an emoji is 4 bytes:", list("🙂".encode("utf-8")))

# %% [markdown]
# Twelve ids for three words is long: the decoder would need twelve steps, and attention costs
# grow with the square of the length. BPE shortens it by giving frequent byte pairs ids of
# their own.
#
# ## 2. Chunks: merges never cross a word
#
# First the text is cut into chunks (a word with its leading space, a number, punctuation,
# whitespace), and pairs are counted inside chunks only, so that " red" and " circle" can
# become tokens but " red circle" never one. On the tiny captions, which are lower-case words
# and spaces, the chunk pattern is simply "an optional space, then letters".

# %%
with np.load(TINY_DATA / "train.npz") as data:
    corpus = data["captions"].ravel().tolist()  # 90,000 captions
ours = Counter(chunk for caption in corpus for chunk in re.findall(r" ?[a-z]+", caption))
print(f"{len(corpus):,} captions, {sum(ours.values()):,} chunks, {len(ours)} different ones")
print(ours.most_common(6))

# %% [markdown]
# **Check**: on this corpus, our pattern cuts exactly as coca_min's general `SPLIT_PATTERN`
# (which also handles digits, punctuation, contractions and any script).

# %%
library = Counter(chunk for caption in corpus for chunk in re.findall(SPLIT_PATTERN, caption))
assert ours == library
print("the same chunks as coca_min.data.tokenizer.SPLIT_PATTERN")

# %% [markdown]
# ## 3. Learning the merges
#
# Each chunk starts as its byte ids. Repeat: count every adjacent pair of ids over all chunks
# (weighted by how often the chunk occurs), take the most frequent pair $(a, b)$, give it the
# next free id, and replace it everywhere. Ties go to the pair with the lowest ids, so the
# result does not depend on dictionary order. Stop at the vocabulary size, or when no pair
# occurs twice.

# %%
def merge(ids, pair, new_id):
    """Replace each non-overlapping occurrence of `pair` in `ids`, left to right."""
    out = []
    for token in ids:
        # the pair ends here: its first id becomes new_id. new_id is a new id, never pair[0],
        # so in "a a a" the second pair (new_id, a) does not match: no occurrence overlaps
        if out and (out[-1], token) == pair:
            out[-1] = new_id
        else:
            out.append(token)
    return out


def learn_merges(chunk_counts, vocab_size):
    words = {chunk: [BYTE_OFFSET + b for b in chunk.encode("utf-8")] for chunk in chunk_counts}
    merges = []
    while BYTE_OFFSET + 256 + len(merges) < vocab_size:
        pairs = Counter()
        for chunk, ids in words.items():
            for pair in zip(ids, ids[1:]):
                pairs[pair] += chunk_counts[chunk]
        if not pairs or max(pairs.values()) < 2:
            break
        best = max(pairs, key=lambda p: (pairs[p], -p[0], -p[1]))  # most frequent; ties: lowest ids
        new_id = BYTE_OFFSET + 256 + len(merges)
        merges.append(best)
        words = {chunk: merge(ids, best, new_id) for chunk, ids in words.items()}
    return merges


merges = learn_merges(ours, vocab_size=512)
print(len(merges), "merges; vocabulary", BYTE_OFFSET + 256 + len(merges))
assert len(merges) == 107  # stopped before 512: no pair occurs twice once every chunk is one token

# %% [markdown]
# The learned merges read like a spelling lesson: frequent pieces (" a", " t", "re", "nd")
# come first, whole words later. Each new id stands for the bytes of the two ids it joins.

# %%
pieces = {BYTE_OFFSET + b: bytes([b]) for b in range(256)}
for i, (a, b) in enumerate(merges):
    pieces[BYTE_OFFSET + 256 + i] = pieces[a] + pieces[b]
for i in [0, 1, 2, 3, 4, 10, 30, len(merges) - 1]:
    a, b = merges[i]
    print(f"merge {i + 1:3d}: {pieces[a]!r:>12} + {pieces[b]!r:<12} -> {pieces[BYTE_OFFSET + 256 + i]!r}")

# %% [markdown]
# **Check**: 107 merges, and these are exactly the merges of the tokenizer shipped with tiny_data
# (`tiny_data/tokenizer.json`, trained by `coca_min.data.tokenizer.Tokenizer.train` on the same
# captions): same pairs, same order.
#
# The library gets them faster. Our loop recounts every pair of every chunk after each merge.
# `Tokenizer.train` counts the pairs once. After a merge it recounts only the chunks that held
# the merged pair, and a heap keeps the most frequent pair at hand.

# %%
shipped = Tokenizer.load(TINY_DATA / "tokenizer.json")
assert merges == list(shipped.merges)
print(f"all {len(merges)} merges equal; vocab_size {shipped.vocab_size}")

# %% [markdown]
# **Check**: our `merge` replaces exactly what coca_min's `_merge` does, on 1,000 random id
# lists over three ids (so with many repeats: "a a a" with the pair (a, a) merges once).

# %%
draw = random.Random(0)
for _ in range(1000):
    ids = [draw.choice([3, 4, 5]) for _ in range(draw.randrange(12))]
    pair = (draw.choice([3, 4, 5]), draw.choice([3, 4, 5]))
    assert merge(ids, pair, 99) == _merge(ids, pair, 99), (ids, pair)
print("merge equals coca_min.data.tokenizer._merge on 1,000 random lists")

# %% [markdown]
# ## 4. Encoding and decoding
#
# To encode a chunk, apply the merges in the order they were learned: at each step find the
# pair present in the chunk that was learned earliest, and merge it. Then wrap the ids in
# [BOS] … [EOS]. Decoding joins the bytes of the ids (skipping the special ones).

# %%
rank = {pair: i for i, pair in enumerate(merges)}


def encode(text):
    ids = [BOS]
    for chunk in re.findall(r" ?[a-z]+", text):
        chunk_ids = [BYTE_OFFSET + b for b in chunk.encode("utf-8")]
        while len(chunk_ids) > 1:
            pair = min(zip(chunk_ids, chunk_ids[1:]), key=lambda p: rank.get(p, float("inf")))
            if pair not in rank:
                break
            chunk_ids = merge(chunk_ids, pair, BYTE_OFFSET + 256 + rank[pair])
        ids += chunk_ids
    return ids + [EOS]


def decode(ids):
    return b"".join(pieces[i] for i in ids if i >= BYTE_OFFSET).decode("utf-8", errors="replace")


caption = corpus[0]
print(caption)
print(encode(caption), "->", repr(decode(encode(caption))))

# %% [markdown]
# **Check**: on every `val` caption our `encode` gives the ids of `Tokenizer.encode`, and our
# `decode` gives the caption back; no special id ever comes from text.

# %%
with np.load(TINY_DATA / "val.npz") as data:
    val_captions = data["captions"].ravel().tolist()
for caption in val_captions:
    ids = encode(caption)
    assert ids == shipped.encode(caption) and decode(ids) == caption
    assert PAD not in ids and ids.count(BOS) == ids.count(EOS) == 1
print(f"{len(val_captions):,} captions: same ids, exact round trip")

# %% [markdown]
# ## 5. What the merges buy
#
# A picture of the trade: with each merge the vocabulary grows by one and the captions get
# shorter. The tiny captions use only 34 different chunks (words, with or without their
# leading space), so after about a hundred merges every chunk is one token and no pair occurs twice any more: training stops there, at 366 ids.

# %%
sample = val_captions[:300]
steps = list(range(0, len(merges) + 1, 4))
lengths = []
for k in steps:
    rank = {pair: i for i, pair in enumerate(merges[:k])}  # only the first k merges
    lengths.append(np.mean([len(encode(c)) for c in sample]))
rank = {pair: i for i, pair in enumerate(merges)}
fig, ax = plt.subplots(figsize=(6, 3.6))
ax.plot(steps, lengths, marker=".")
ax.set(title="caption length as BPE merges are learned (300 val captions)",
       xlabel="merges learned (vocabulary = 259 + merges)", ylabel="mean tokens per caption")
ax.grid(alpha=0.3)
fig.tight_layout()
print(f"bytes only: {lengths[0]:.1f} tokens per caption; all merges: {lengths[-1]:.1f}")

# %% [markdown]
# **Check**: with all merges every chunk of the corpus is a single token.

# %%
assert all(len(encode(chunk)) == 3 for chunk in ours)  # [BOS] chunk [EOS]
print(f"all {len(ours)} chunks are one token each")

# %% [markdown]
# ## 6. Padding, and why its id is reserved
#
# A batch of captions of different lengths is right-padded with [PAD] to one length. The
# captioning loss then ignores the positions whose *target* is [PAD]. If a real token shared
# the pad id (open_clip uses id 0 both for padding and for "!"), that token would silently
# never be learned. In coca_min no text ever encodes to id 0.
#
# **Check**: a padded batch has [PAD] (id 0) only after [EOS], and no `val` caption encodes
# to id 0.

# %%
batch = shipped.encode_batch(["a red circle", "there is a small blue square at the top"], context_length=12)
print(batch)
ends = (batch == EOS).int().argmax(1)  # where each text ends
assert all((row[: end + 1] != PAD).all() and (row[end + 1 :] == PAD).all() for row, end in zip(batch, ends))
assert all(PAD not in shipped.encode(c) for c in val_captions)
print("padding only after [EOS]; id 0 never from text")

# %% [markdown]
# ## Summary
# - Text becomes UTF-8 bytes (ids 3–258), then BPE merges frequent adjacent pairs into new ids,
#   learned by counting pairs inside word chunks and applied in the order learned.
# - The tiny captions need 107 merges (366 ids) before every word is a single token.
# - Ids 0, 1, 2 are [PAD], [BOS], [EOS] and never come from text, so padding never hides a word.
# - Our from-scratch BPE equals `coca_min.data.tokenizer` merge for merge and id for id.
#
# ## Exercises
# 1. Encode "a cyan cross" with the bytes only (no merges) and with all merges. How many
#    decoder steps does each take?
# 2. Train a tokenizer on the captions with `vocab_size=280`. Which words are still split into
#    pieces, and why those?
# 3. Open-ended: captions with a word never seen in training ("a purple circle") still encode.
#    How? What would a word-level vocabulary do instead, and what would the captioner then be
#    unable to say?
#
# **Coursework.** This lesson teaches the graded exercise `bpe_merge` (`_merge` in
# `coca_min/data/tokenizer.py`, 5 points, about 10 min). In the student version (`python -m
# coca_min.coursework make-student`, see `coca_min/coursework/README.md`) its code is blanked;
# write it between the `# BEGIN EXERCISE` and `# END EXERCISE` markers, and run the tests named
# in `coca_min/coursework/exercises.py`.
