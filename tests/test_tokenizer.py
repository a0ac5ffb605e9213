"""The byte-level BPE tokenizer: round trips, a worked example, save/load, special ids."""

import numpy as np
import pytest

from coca_min import PRESETS
from coca_min.data.datasets import TINY_DATA
from coca_min.data.synthetic import shapes
from coca_min.data.tokenizer import BOS, EOS, PAD, Tokenizer


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
