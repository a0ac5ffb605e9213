"""The byte-level BPE tokenizer: round trips, a worked example, save/load, special ids, and
training's incremental counts against the plain algorithm that recounts every pair."""

import random
import re
from collections import Counter

import numpy as np
import pytest

from coca_min import PRESETS
from coca_min.data.datasets import TINY_DATA
from coca_min.data.synthetic import shapes
from coca_min.data.tokenizer import BOS, BYTE_OFFSET, EOS, PAD, SPLIT_PATTERN, Tokenizer, _merge


@pytest.fixture(scope="module")
def tiny_tokenizer():
    return Tokenizer.load(TINY_DATA / "tokenizer.json")


@pytest.fixture(scope="module")
def tiny_captions():
    texts = set()
    for split in shapes.SPLITS:
        texts.update(np.load(TINY_DATA / f"{split}.npz")["captions"].ravel().tolist())
    return sorted(texts)


@pytest.mark.parametrize(
    "text", ["", "a", " ", "é", "🙂", "héllo wörld 🙂🙂!", "  two  spaces\tand\na newline ", "snake_case 12345 it's"]
)
def test_round_trip_edge_cases(tiny_tokenizer, text):
    ids = tiny_tokenizer.encode(text)
    assert ids[0] == BOS and ids[-1] == EOS
    assert tiny_tokenizer.decode(ids) == text


def test_round_trip_every_tiny_caption(tiny_tokenizer, tiny_captions):
    assert len(tiny_captions) > 1000
    for text in tiny_captions:
        assert tiny_tokenizer.decode(tiny_tokenizer.encode(text)) == text


def test_worked_example_with_exact_ids():
    # chunks: "ab" once, " ab" twice. Bytes a, b, space are ids 97+3, 98+3, 32+3.
    # merge 1: (a, b) occurs 3 times -> 259; merge 2: (space, 259) occurs twice -> 260; then none.
    tokenizer = Tokenizer.train(["ab ab ab"], vocab_size=1000)
    assert tokenizer.merges == {(100, 101): 259, (35, 259): 260}
    assert tokenizer.vocab_size == 261
    assert tokenizer.encode("ab ab") == [BOS, 259, 260, EOS]
    assert tokenizer.encode("ab ab", context_length=6) == [BOS, 259, 260, EOS, PAD, PAD]
    assert tokenizer.encode("ab ab ab", context_length=3) == [BOS, 259, EOS]  # truncated, still ends
    assert tokenizer.encode("ba", context_length=6, pad=False) == [BOS, 101, 100, EOS]
    assert tokenizer.decode([BOS, 260, 259, EOS, PAD]) == " abab"


def test_training_stops_at_the_requested_vocab_size():
    assert Tokenizer.train(["ab ab ab"], vocab_size=260).vocab_size == 260


def test_save_load_round_trip(tmp_path, tiny_tokenizer, tiny_captions):
    tiny_tokenizer.save(tmp_path / "tok.json")
    loaded = Tokenizer.load(tmp_path / "tok.json")
    assert loaded.merges == tiny_tokenizer.merges
    for text in tiny_captions[:500]:
        assert loaded.encode(text) == tiny_tokenizer.encode(text)


def test_special_ids_never_come_from_text(tiny_tokenizer, tiny_captions):
    rng = np.random.default_rng(0)
    texts = tiny_captions[:500] + [bytes(rng.integers(0, 256, 40).tolist()).decode("latin-1") for _ in range(100)]
    for text in texts:
        inner = tiny_tokenizer.encode(text)[1:-1]
        assert all(i not in (PAD, BOS, EOS) for i in inner)


def test_shipped_tokenizer_fits_the_tiny_model(tiny_tokenizer, tiny_captions):
    assert tiny_tokenizer.vocab_size <= PRESETS["tiny"].vocab_size
    assert max(len(tiny_tokenizer.encode(t)) for t in tiny_captions) <= PRESETS["tiny"].context_length


def test_batch_encoding_pads_to_the_context_length(tiny_tokenizer):
    batch = tiny_tokenizer.encode_batch(["a red circle", "there is a blue square and a green cross"], 16)
    assert batch.shape == (2, 16)
    assert batch[0, -1] == PAD and batch[:, 0].tolist() == [BOS, BOS]


def test_bad_tokenizer_input_is_refused(tmp_path, tiny_tokenizer):
    with pytest.raises(ValueError, match="at least 259"):
        Tokenizer.train(["x"], vocab_size=100)
    with pytest.raises(ValueError, match="expected a str"):
        tiny_tokenizer.encode(None)
    with pytest.raises(ValueError, match=rf"token ids must be in \[0, {tiny_tokenizer.vocab_size}\)"):
        tiny_tokenizer.decode([1, tiny_tokenizer.vocab_size])
    with pytest.raises(FileNotFoundError, match="nope.json"):
        Tokenizer.load(tmp_path / "nope.json")


@pytest.mark.parametrize("across_characters", [False, True])
def test_truncation_keeps_whole_characters(tiny_tokenizer, across_characters):
    text = "a 🙂🙂 café ünï 😀🎉 éaéa ok"
    # trained on "éaéaéa", the first merge joins the second byte of é (0xA9) with "a": a token
    # that starts inside a character, so truncation must look at bytes, not only at tokens
    tokenizer = Tokenizer.train(["éaéaéa"], 260) if across_characters else tiny_tokenizer
    content = tokenizer.encode(text)[1:-1]
    if across_characters:
        assert tokenizer.vocab[259] == "é".encode()[1:] + b"a" and 259 in content
    for n in range(2, len(content) + 3):
        ids = tokenizer.encode(text, n, pad=False)
        assert len(ids) <= n and ids[0] == BOS and ids[-1] == EOS
        kept = tokenizer.decode(ids)
        assert "\ufffd" not in kept and text.startswith(kept), (n, kept)
        # the most tokens that end on a character boundary: brute force over every prefix
        def whole(k):
            try:
                b"".join(tokenizer.vocab[i] for i in content[:k]).decode("utf-8")
                return True
            except UnicodeDecodeError:
                return False
        assert len(ids) - 2 == max(k for k in range(min(n - 2, len(content)) + 1) if whole(k)), n


def test_a_tokenizer_file_that_is_not_one_is_named(tmp_path):
    (tmp_path / "t.json").write_bytes(b"\xff\xfe not json")
    with pytest.raises(ValueError, match=r"t\.json is not a coca_min tokenizer \(not JSON text"):
        Tokenizer.load(tmp_path / "t.json")
    (tmp_path / "t.json").write_text('{"format": "coca_min byte-level BPE", "version": 1}')  # no merges
    with pytest.raises(ValueError, match=r"t\.json is not a coca_min tokenizer \(expected what Tokenizer\.save writes"):
        Tokenizer.load(tmp_path / "t.json")
    (tmp_path / "t.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"t\.json is not a coca_min tokenizer \(expected what Tokenizer\.save writes"):
        Tokenizer.load(tmp_path / "t.json")


def merges_by_recounting(texts, vocab_size):
    """The plain BPE training loop (Tokenizer.train before it counted incrementally): after every
    merge, recount every pair of every word. Slow, obviously right: the reference."""
    chunk_counts = Counter(c for text in texts for c in re.findall(SPLIT_PATTERN, text))
    words = {chunk: [BYTE_OFFSET + b for b in chunk.encode("utf-8")] for chunk in chunk_counts}
    merges = []
    while BYTE_OFFSET + 256 + len(merges) < vocab_size:
        pairs = Counter()
        for chunk, ids in words.items():
            for pair in zip(ids, ids[1:]):
                pairs[pair] += chunk_counts[chunk]
        if not pairs or max(pairs.values()) < 2:
            break
        pair = max(pairs, key=lambda p: (pairs[p], -p[0], -p[1]))  # ties: lowest ids first
        new_id = BYTE_OFFSET + 256 + len(merges)
        merges.append(pair)
        words = {chunk: _merge(ids, pair, new_id) for chunk, ids in words.items()}
    return merges


def synthetic_captions(seed=0, n_words=300, n_captions=3000):
    """Made-up words of 1 to 12 symbols (letters, some é and 🙂, digits, punctuation), drawn
    with Zipf-like weights into captions of 1 to 12 words. Few symbols and repeated words make
    many equal counts, so the tie rule decides many merges."""
    rng = random.Random(seed)
    symbols = "abcde" * 4 + "éé🙂" + "012" + ".,!-'"
    vocabulary = ["".join(rng.choice(symbols) for _ in range(rng.randint(1, 12))) for _ in range(n_words)]
    vocabulary += vocabulary[: n_words // 10]  # some words twice, with two weights
    weights = [1 / (rank + 1) for rank in range(len(vocabulary))]
    return [" ".join(rng.choices(vocabulary, weights, k=rng.randint(1, 12))) for _ in range(n_captions)]


@pytest.mark.parametrize("n_words, n_captions, n_merges, stops_early", [
    (300, 3000, 400, False),  # the vocabulary size is reached
    (40, 300, 10_000, True),  # training runs until no pair occurs twice
])
def test_training_learns_the_merges_of_the_recounting_algorithm(n_words, n_captions, n_merges, stops_early):
    texts = synthetic_captions(0, n_words, n_captions)
    expected = merges_by_recounting(texts, BYTE_OFFSET + 256 + n_merges)
    assert (len(expected) < n_merges) == stops_early
    assert list(Tokenizer.train(texts, BYTE_OFFSET + 256 + n_merges).merges) == expected


@pytest.mark.parametrize("texts", [
    ["aaaa aaa aaaaa"],  # runs: (a, a) merges without overlapping, then pairs with the new id
    ["aaaaaaaa aaaaaaa", "aaa"],
    ["ab ab ab", "abab", "ba ba"],  # equal counts: the lowest ids win
    ["éé 🙂🙂 éé 🙂🙂 12 12 !! !!"],  # several bytes a character, digits, punctuation
    ["x", "y z"],  # no pair at all
    ["abcd", "dcba"],  # every pair once: no merge
])
def test_training_edge_cases_equal_the_recounting_algorithm(texts):
    for vocab_size in [259, 260, 262, 300, 10_000]:  # from no merge to stopping early
        assert list(Tokenizer.train(texts, vocab_size).merges) == merges_by_recounting(texts, vocab_size)
