"""The video model: the shared encoder per frame, the time embedding, pooling over all frames'
tokens; why an order-free summary cannot tell a motion from its reverse; the command."""

import pytest
import torch

from coca_min import CoCa
from coca_min.data.datasets import TINY_DATA
from coca_min.data.synthetic import moving_shapes
from coca_min.eval import video

CHECKPOINT = TINY_DATA.parent / "lessons" / "assets" / "tiny_coca.pt"  # the lessons' trained tiny model


def clips(count=6, split="test"):
    data = moving_shapes.make_clips(split, count)
    return moving_shapes.to_pixels(data["frames"]), data  # (count, 8, 3, 48, 48)


def test_the_time_embedding_adds_row_f_to_every_token_of_frame_f():
    time = video.TimeEmbedding(n_frames=3, dim=2)
    with torch.no_grad():
        time.embedding.copy_(torch.tensor([[1.0, 0.0], [0.0, 10.0], [100.0, 0.0]]))
    tokens = torch.zeros(1, 3, 2, 2)  # (B, F, N, D)
    assert time(tokens).tolist() == [[[1, 0], [1, 0], [0, 10], [0, 10], [100, 0], [100, 0]]]  # (1, F·N, D)


def test_every_frame_goes_through_the_same_image_encoder(tiny):
    pixels, _ = clips(2)
    model = video.VideoCoCa(tiny, n_frames=moving_shapes.FRAMES)
    with torch.no_grad():
        tokens = model.frame_tokens(pixels)  # (2, 8, 36, 64)
        for f in (0, 5):
            torch.testing.assert_close(tokens[:, f], tiny.image_encoder(pixels[:, f]), atol=1e-5, rtol=0)
    assert tokens.shape == (2, moving_shapes.FRAMES, tiny.config.n_image_tokens, tiny.config.vision_width)


def test_a_one_frame_video_with_a_zero_time_embedding_is_the_image_model(tiny):
    pixels, data = clips(3)
    tokens = torch.tensor([[1, 5, 9, 2, 0], [1, 7, 2, 0, 0], [1, 4, 4, 4, 2]])
    model = video.VideoCoCa(tiny, n_frames=1)
    with torch.no_grad():
        model.time_embedding.embedding.zero_()
        got, expected = model(pixels[:, 3:4], tokens), tiny(pixels[:, 3], tokens)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=0)


def test_without_time_embedding_a_clip_and_its_reverse_pool_alike_and_with_it_they_do_not(tiny):
    pixels, _ = clips(4)
    reversed_pixels = pixels.flip(1)  # the same frames, played backwards
    model = video.VideoCoCa(tiny, n_frames=moving_shapes.FRAMES)
    with torch.no_grad():
        forward, backward = model.encode_video(pixels)[0], model.encode_video(reversed_pixels)[0]
        assert (forward - backward).abs().max() > 1e-3  # the (random) time embedding tells the order
        model.time_embedding.embedding.zero_()  # attention over a set of tokens: frame order is lost
        torch.testing.assert_close(model.encode_video(pixels)[0], model.encode_video(reversed_pixels)[0], atol=1e-5, rtol=0)
        tokens = model.frame_tokens(pixels)
    average = video.SUMMARIES["(b) frames averaged"]
    torch.testing.assert_close(average(tokens), average(tokens.flip(1)), atol=1e-5, rtol=0)


def test_training_the_video_coca_lowers_its_loss_and_leaves_the_image_encoder_alone(tiny):
    coca = CoCa(tiny.config)
    coca.load_state_dict(tiny.state_dict())
    encoder_before = {k: v.clone() for k, v in coca.image_encoder.state_dict().items()}
    decoder_before = coca.text_decoder.token_embedding.weight.clone()
    pixels, data = clips(24, "train")
    from coca_min.data.tokenizer import Tokenizer

    tokenizer = Tokenizer.load(TINY_DATA / "tokenizer.json")
    frame_tokens = video.clip_tokens(coca, data["frames"])
    torch.manual_seed(0)
    model = video.VideoCoCa(coca, moving_shapes.FRAMES)
    losses = video.train_video_coca(model, frame_tokens, tokenizer.encode_batch(data["captions"], 32), steps=30, batch_size=8)
    assert sum(losses[-5:]) < 0.7 * sum(losses[:5])
    assert all(torch.equal(encoder_before[k], v) for k, v in coca.image_encoder.state_dict().items())
    assert not torch.equal(decoder_before, coca.text_decoder.token_embedding.weight)  # the rest did train
    scores = video.caption_accuracy(model, tokenizer, frame_tokens[:6], data["labels"][:6])
    assert 0 <= scores["both"] <= min(scores["object"], scores["motion"]) <= 1 and len(scores["examples"]) == 6


def test_the_command_prints_both_tables(capsys):
    video.main(["--checkpoint", str(CHECKPOINT), "--train-clips", "48", "--test-clips", "12",
                "--probe-steps", "3", "--caption-steps", "2"])  # fmt: skip
    printed = capsys.readouterr().out
    assert all(f"| {name} |" in printed for name in video.SUMMARIES)
    assert "| shape right | colour right | object right | motion right | both right |" in printed


def test_the_command_refuses_a_file_that_is_not_a_checkpoint_in_one_line(tmp_path, capsys):
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    with pytest.raises(SystemExit) as exit:
        video.main(["--checkpoint", str(tmp_path / "notes.pt")])
    error = capsys.readouterr().err
    assert exit.value.code == 2 and "is not a coca_min checkpoint" in error and error.count("\n") == 1


def test_captions_of_clips_are_the_decoded_pooling_of_their_frames(tiny):
    from coca_min.data.tokenizer import Tokenizer
    from coca_min.model.generate import generate_from_caption_tokens

    tokenizer = Tokenizer.load(TINY_DATA / "tokenizer.json")
    pixels, _ = clips(3)
    model = video.VideoCoCa(tiny, moving_shapes.FRAMES)
    texts = video.caption_clips(model, tokenizer, pixels, max_new=6)
    with torch.no_grad():
        expected, _ = generate_from_caption_tokens(tiny, model.pool(model.frame_tokens(pixels))[1], max_new=6)
    assert texts == [tokenizer.decode(row) for row in expected] and len(texts) == 3


def test_clips_of_the_wrong_shape_are_refused_in_the_users_terms(tiny):
    model = video.VideoCoCa(tiny, n_frames=moving_shapes.FRAMES)
    pixels, _ = clips(2)
    for bad, message in [(pixels[0], "expected a 5-D tensor"), (pixels[:, :4], "expected 8 frames"),
                         (pixels[..., :40, :40], "expected 48x48 pixels")]:  # fmt: skip
        with pytest.raises(ValueError, match=message):
            model.encode_video(bad)
