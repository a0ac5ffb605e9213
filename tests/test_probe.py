"""Frozen-feature probes: they learn a separable toy task, they never change the encoder, and the
tiny label sets say what the ground truth says."""

import numpy as np
import pytest
import torch

from coca_min.data.datasets import TINY_DATA, TinyShapes
from coca_min.data.synthetic import shapes
from coca_min.eval import probe

CHECKPOINT = TINY_DATA.parent / "lessons" / "assets" / "tiny_coca.pt"  # the lessons' trained tiny model


def toy_tokens(n, generator, n_tokens=8, dim=16, n_classes=4):
    """Noise tokens (n, n_tokens, dim); the class c of a row is written into one token, at a random
    place, as +3 on feature c: separable by attending to that token, hidden in a mean by 7 noise tokens."""
    tokens = 0.5 * torch.randn(n, n_tokens, dim, generator=generator)
    labels = torch.randint(n_classes, (n,), generator=generator)
    where = torch.randint(n_tokens, (n,), generator=generator)
    tokens[torch.arange(n), where, labels] += 3.0
    return tokens, labels


def test_the_attentive_probe_learns_a_separable_toy_task():
    generator = torch.Generator().manual_seed(0)
    train, test = toy_tokens(2048, generator), toy_tokens(512, generator)
    torch.manual_seed(0)
    attentive = probe.AttentiveProbe(context_dim=16, n_classes=4, dim=32)
    assert probe.accuracy(attentive, *test) < 0.5  # untrained: about chance (1/4)
    losses = probe.fit(attentive, *train, steps=150, lr=3e-3)
    assert np.mean(losses[-10:]) < 0.25 * np.mean(losses[:10])
    assert probe.accuracy(attentive, *test) > 0.95


def test_the_linear_probe_learns_linearly_separable_unit_embeddings():
    generator = torch.Generator().manual_seed(1)
    centres = torch.nn.functional.normalize(torch.randn(5, 32, generator=generator), dim=-1)
    labels = torch.randint(5, (1000,), generator=generator)
    embeddings = torch.nn.functional.normalize(centres[labels] + 0.1 * torch.randn(1000, 32, generator=generator), dim=-1)
    linear = probe.LinearProbe(32, 5)
    probe.fit(linear, embeddings[:800], labels[:800], steps=100, lr=1e-2)
    assert probe.accuracy(linear, embeddings[800:], labels[800:]) == 1.0


def test_probing_leaves_the_encoder_exactly_as_it_was(tiny):
    before = {name: tensor.clone() for name, tensor in tiny.state_dict().items()}
    flags = [p.requires_grad for p in tiny.parameters()]
    tiny.train()  # the probe evaluates in eval mode and gives the model back in the mode it came in
    features = probe.tiny_features(tiny, train_images=300)
    result = probe.probe_task("shape_position", features, steps=20)
    assert tiny.training and [p.requires_grad for p in tiny.parameters()] == flags
    assert all(p.grad is None for p in tiny.parameters())
    after = tiny.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert set(result) == {"train images", "linear", "attentive"} and 0 <= result["attentive"]["test"] <= 1
    tiny.eval()


def test_frozen_features_are_the_models_own_tokens_and_embedding(tiny):
    images = TinyShapes("test", limit=10).images(list(range(10)))
    tokens, embeddings = probe.frozen_features(tiny, images, batch_size=4)  # batches of 4, 4, 2
    with torch.inference_mode():
        expected_embedding, _ = tiny.encode_image(images)
        expected_tokens = tiny.image_encoder(images)
    assert tokens.shape == (10, tiny.config.n_image_tokens, tiny.config.vision_width)
    torch.testing.assert_close(tokens, expected_tokens, atol=1e-5, rtol=0)
    torch.testing.assert_close(embeddings, expected_embedding, atol=1e-5, rtol=0)


def test_the_tiny_label_sets_follow_the_ground_truth():
    classes = TinyShapes("classes")
    rows, labels = probe.task_labels("pair", classes.objects)
    assert np.array_equal(rows, np.arange(1000)) and np.array_equal(labels, np.arange(1000) % 40)  # image i: pair i % 40
    test = TinyShapes("test")
    rows, labels = probe.task_labels("shape_position", test.objects)
    assert len(rows) == 371  # tiny_data/README.md: 371 one-object test images
    for row, label in zip(rows[:50], labels[:50]):
        shape, _, _, r, c = test.objects[row, 0]
        assert label == shape * 9 + r * 3 + c and test.objects[row, 1, 0] == shapes.NO_OBJECT
    rows, labels = probe.task_labels("count", test.objects)
    assert np.bincount(labels).tolist() == [371, 310, 319]


def test_the_pair_tasks_held_out_rows_are_the_test_images_of_the_pairs_coca_never_saw():
    objects = TinyShapes("classes").objects
    fake = {"classes": (torch.arange(1000.0)[:, None, None], torch.arange(1000.0)[:, None], objects)}  # row id as feature
    parts = probe.task_splits("pair", fake)
    train_rows, test_rows = parts["train"][1][:, 0].long(), parts["test"][1][:, 0].long()
    assert len(train_rows) == 600 and len(test_rows) == 400 and not set(train_rows.tolist()) & set(test_rows.tolist())
    held_rows, held_labels = parts["held-out"][1][:, 0].long(), parts["held-out"][2]
    held_pairs = {shapes.PAIRS[i] for i in held_labels.tolist()}
    assert held_pairs == set(shapes.HELD_OUT) and len(held_rows) == 80 and set(held_rows.tolist()) <= set(test_rows.tolist())


def test_the_command_prints_a_table_for_a_checkpoint(capsys):
    results = probe.main(["--checkpoint", str(CHECKPOINT), "--tasks", "count", "--steps", "30", "--train-images", "200"])
    printed = capsys.readouterr().out
    assert "| count | 3 | 200 | attentive, on the tokens |" in printed and "linear, on the embedding" in printed
    assert results["count"]["attentive"]["test"] > 0.5  # 30 steps on a trained encoder: well above chance (1/3)


def test_the_command_refuses_a_missing_checkpoint_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        probe.main(["--checkpoint", str(tmp_path / "nothing.pt")])
    assert exit.value.code == 2 and "checkpoint not found" in capsys.readouterr().err
