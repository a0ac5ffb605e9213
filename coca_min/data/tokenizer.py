"""Byte-level byte-pair encoding (BPE), written from scratch.

The paper uses a 64k SentencePiece vocabulary (§4.1); this project trains its own small BPE on
its captions instead, in the manner of GPT-2 and minbpe:

1. Text is split into chunks (a word with its leading space, a number, a run of punctuation,
   whitespace) by SPLIT_PATTERN, so merges never cross a word boundary.
2. Each chunk is UTF-8 bytes; every byte is a token, so any text can be encoded (emoji too).
3. Training repeats: find the most frequent adjacent pair of tokens, give it a new id. The pairs
   are counted once; after a merge only the chunks that held the pair are recounted, and a heap
   finds the most frequent pair (ties: lowest ids), so a merge costs what it changes, not a
   recount of every pair (8,000 merges on 500,000 captions: seconds instead of an hour).
4. Encoding applies the merges in the order they were learned (earliest first).

Ids: 0 [PAD], 1 [BOS], 2 [EOS] (never produced from text), 3 … 258 the 256 bytes, then merges.
Encoding a caption gives `[BOS] … [EOS]`, optionally truncated and padded to a context length.

Left out: SentencePiece's unigram model, normalisation (NFKC), and the regex module's \\p{L}
classes (plain `re` is enough here).
"""

import heapq
import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import torch

PAD, BOS, EOS = 0, 1, 2
SPECIALS = {"[PAD]": PAD, "[BOS]": BOS, "[EOS]": EOS}
BYTE_OFFSET = 3  # byte b is token b + 3
# a contraction | letters with an optional leading space | up to 3 digits | other symbols |
# trailing whitespace | whitespace: together they cover every character of any string
SPLIT_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)| ?[^\W\d_]+| ?\d{1,3}| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+"""


def _merge(ids, pair, new_id):
    """Replace every non-overlapping occurrence of `pair` in `ids`, left to right, by `new_id`."""
    # BEGIN EXERCISE bpe_merge
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out
    # END EXERCISE


def drop_padding_columns(tokens: torch.Tensor, pad_id: int = PAD) -> torch.Tensor:
    """(B, T) token ids -> (B, T'): without the last columns that are padding in every row. A
    batch of short texts encoded to a long context then costs only its longest text."""
    return tokens[:, : int((tokens != pad_id).sum(1).max())]


class Tokenizer:
    def __init__(self, merges=()):
        self.merges = {tuple(pair): BYTE_OFFSET + 256 + i for i, pair in enumerate(merges)}
        self.vocab = {BYTE_OFFSET + b: bytes([b]) for b in range(256)}  # id -> bytes
        for (a, b), new_id in self.merges.items():
            self.vocab[new_id] = self.vocab[a] + self.vocab[b]
        self._cache = {}  # chunk -> ids: captions repeat the same few words

    @property
    def vocab_size(self) -> int:
        return BYTE_OFFSET + 256 + len(self.merges)

    @classmethod
    def train(cls, texts, vocab_size: int, verbose=False) -> "Tokenizer":
        """Learn merges until `vocab_size` ids exist or no pair occurs twice."""
        if vocab_size < BYTE_OFFSET + 256:
            raise ValueError(f"vocab_size must be at least {BYTE_OFFSET + 256} (specials + bytes)")
        chunk_counts = Counter(c for text in texts for c in re.findall(SPLIT_PATTERN, text))
        words = [[BYTE_OFFSET + b for b in chunk.encode("utf-8")] for chunk in chunk_counts]
        counts = list(chunk_counts.values())  # how often each chunk ("word") occurs
        # count the pairs once; `where` knows which words hold a pair, so a merge visits only those
        pairs, where = Counter(), defaultdict(set)
        for w, ids in enumerate(words):
            for pair in zip(ids, ids[1:]):
                pairs[pair] += counts[w]
                where[pair].add(w)
        # a heap of (-count, a, b): its top is the most frequent pair, ties to the lowest ids.
        # A changed count pushes a new entry; outdated ones are dropped when they reach the top.
        heap = [(-n, a, b) for (a, b), n in pairs.items() if n >= 2]
        heapq.heapify(heap)
        merges = []
        while BYTE_OFFSET + 256 + len(merges) < vocab_size:
            while heap and -heap[0][0] != pairs.get(heap[0][1:], 0):
                heapq.heappop(heap)
            if not heap:  # no pair occurs twice
                break
            n, a, b = heapq.heappop(heap)
            pair, new_id = (a, b), BYTE_OFFSET + 256 + len(merges)
            merges.append(pair)
            change = Counter()  # pair -> change of its count: minus the old words, plus the new
            for w in list(where[pair]):
                old, new = words[w], _merge(words[w], pair, new_id)
                old_pairs, new_pairs = list(zip(old, old[1:])), list(zip(new, new[1:]))
                for p in old_pairs:
                    change[p] -= counts[w]
                for p in new_pairs:
                    change[p] += counts[w]
                for p in set(old_pairs) - set(new_pairs):
                    where[p].discard(w)
                for p in set(new_pairs) - set(old_pairs):
                    where[p].add(w)
                words[w] = new
            for p, d in change.items():
                if d != 0:
                    pairs[p] += d
                    if pairs[p] == 0:  # no word holds it any more (the merged pair, for one)
                        del pairs[p], where[p]
                    elif pairs[p] >= 2:  # pairs seen once cannot be chosen: no entry needed
                        heapq.heappush(heap, (-pairs[p], *p))
            if verbose:
                print(f"merge {len(merges)}: {pair} -> {new_id} ({-n} times)")
        return cls(merges)

    def _encode_chunk(self, chunk: str) -> list[int]:
        if chunk not in self._cache:
            ids = [BYTE_OFFSET + b for b in chunk.encode("utf-8")]
            while len(ids) > 1:  # apply the earliest-learned merge present, until none is
                pair = min(zip(ids, ids[1:]), key=lambda p: self.merges.get(p, float("inf")))
                if pair not in self.merges:
                    break
                ids = _merge(ids, pair, self.merges[pair])
            self._cache[chunk] = ids
        return self._cache[chunk]

    def encode(self, text: str, context_length: int | None = None, pad: bool = True) -> list[int]:
        """`[BOS] … [EOS]`; with a context length, truncated (still ending in [EOS], and never
        inside a character of several UTF-8 bytes) and, if `pad`, right-padded with [PAD] to
        exactly that length."""
        if not isinstance(text, str):
            raise ValueError(f"expected a str to encode; got {type(text).__name__}")
        ids = [BOS] + [i for chunk in re.findall(SPLIT_PATTERN, text) for i in self._encode_chunk(chunk)]
        ids.append(EOS)
        if context_length is not None:
            if context_length < 2:
                raise ValueError("context_length must be at least 2 ([BOS] and [EOS])")
            if len(ids) > context_length:  # keep [BOS] and whole characters, then [EOS]
                cut = context_length - 1
                while cut > 1 and self.vocab[ids[cut]][0] & 0xC0 == 0x80:  # ids[cut] would start mid-character
                    cut -= 1
                ids = ids[:cut] + [EOS]
            if pad:
                ids += [PAD] * (context_length - len(ids))
        return ids

    def encode_batch(self, texts, context_length: int) -> torch.Tensor:
        """A list of texts -> (B, context_length) long tensor, right-padded with [PAD]."""
        return torch.tensor([self.encode(t, context_length) for t in texts], dtype=torch.long)

    def decode(self, ids) -> str:
        """Token ids -> text; special tokens are dropped, invalid UTF-8 becomes '�'."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else ids
        if any(not 0 <= i < self.vocab_size for i in ids):
            raise ValueError(f"token ids must be in [0, {self.vocab_size})")
        return b"".join(self.vocab[i] for i in ids if i >= BYTE_OFFSET).decode("utf-8", errors="replace")

    def state(self) -> dict:
        """Everything needed to rebuild this tokenizer, as plain JSON-able data."""
        return {"format": "coca_min byte-level BPE", "version": 1, "special_tokens": SPECIALS,
                "byte_offset": BYTE_OFFSET, "split_pattern": SPLIT_PATTERN,
                "merges": [list(pair) for pair in self.merges]}  # fmt: skip

    @classmethod
    def from_state(cls, state: dict, source="tokenizer data") -> "Tokenizer":
        if (not isinstance(state, dict) or state.get("format") != "coca_min byte-level BPE" or state.get("version") != 1
                or not isinstance(state.get("merges"), list)):  # fmt: skip
            raise ValueError(f"{source} is not a coca_min tokenizer (expected what Tokenizer.save writes: "
                             '{"format": "coca_min byte-level BPE", "version": 1, "merges": …})')  # fmt: skip
        return cls([tuple(pair) for pair in state["merges"]])

    def save(self, path) -> None:
        Path(path).write_text(json.dumps(self.state()) + "\n")

    @classmethod
    def load(cls, path) -> "Tokenizer":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{path} is not a coca_min tokenizer (not JSON text: {error})") from None
        return cls.from_state(state, source=str(path))
