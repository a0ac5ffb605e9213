"""The evaluations: class embeddings, the captioner as a scorer, object scores, and the tiny
set's zero-shot, retrieval and caption reports end to end on small subsets."""

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from coca_min.data.datasets import TinyShapes
from coca_min.data.image_files import CaptionManifest
from coca_min.data.synthetic import shapes
from coca_min.eval.evaluate import (
    TINY_CLASSES,
    class_embeddings,
    evaluate_captions,
    evaluate_retrieval,
    evaluate_tiny_zero_shot,  # fmt: skip
    likelihood_scores,
    object_scores,
    plot_confusion,
)


@pytest.fixture(scope="module")
def classes():
    return TinyShapes("classes", limit=80)  # every colour-shape pair twice


def test_class_embedding_is_normalised_mean_of_normalised_templates(tiny, classes):
    tok, templates = classes.tokenizer, ["there is {}", "{} is in the center"]
    got = class_embeddings(tiny, tok, ["a red circle", "a blue cross"], templates)
    with torch.no_grad():
        for row, name in zip(got, ["a red circle", "a blue cross"]):
            per_template, _ = tiny.encode_text(tok.encode_batch([t.format(name) for t in templates], 32))
            torch.testing.assert_close(row, F.normalize(F.normalize(per_template, dim=-1).mean(0), dim=0))
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(2))


def test_likelihood_scores_are_log_p_of_the_prompt_given_the_image(tiny, classes):
    prompts = ["there is a red circle", "there is an orange cross and a blue square"]
    scores, kept = likelihood_scores(tiny, classes.tokenizer, TinyShapes("classes", limit=3), prompts, ["{}"])
    assert kept.tolist() == [0, 1, 2]
    tokens = classes.tokenizer.encode_batch(prompts, 32)
    with torch.no_grad():
        for i in range(3):
            image = classes.images([i]).expand(2, -1, -1, -1)
            log_p = tiny(image, tokens)["logits"].log_softmax(-1)  # (2, T-1, V)
            expected = [sum(log_p[c, t, tokens[c, t + 1]] for t in range(31) if tokens[c, t + 1] != 0) for c in range(2)]
            torch.testing.assert_close(scores[i], torch.stack(expected), atol=1e-4, rtol=0)


def test_object_scores_worked_example():
    objects = torch.full((2, 3, 5), -1, dtype=torch.int8).numpy()
    objects[0, :2] = [[0, 0, 0, 0, 0], [1, 2, 1, 1, 1]]  # small red circle top left; large blue square center
    objects[1, :1] = [[4, 7, 0, 2, 2]]  # small white cross bottom right
    captions = [
        "a small red circle at the top left and a small blue square in the center",  # 1 of 2 right
        "a small white cross at the bottom right",  # exact
    ]
    scores = object_scores(captions, objects)
    assert scores["object_precision"] == pytest.approx(2 / 3) and scores["object_recall"] == pytest.approx(2 / 3)
    assert scores["object_F1"] == pytest.approx(2 / 3) and scores["exact_match"] == 0.5
    assert object_scores(["there is a white cross"], objects[1:])["object_recall"] == 0.0  # no size, place


def test_tiny_zero_shot_report(tiny, classes, tmp_path):
    report, scores, labels = evaluate_tiny_zero_shot(tiny, classes.tokenizer, classes)
    assert scores.shape == (80, 40) and labels.tolist() == [i % 40 for i in range(80)]
    assert {"top1", "top5", "top1_seen", "top1_held_out", "colour_accuracy", "shape_accuracy"} <= set(report)
    assert all(0.0 <= v <= 1.0 for v in report.values())
    matrix = plot_confusion(scores, labels, TINY_CLASSES, tmp_path / "confusion.png")
    assert (tmp_path / "confusion.png").stat().st_size > 1000 and matrix.sum() == 80
    assert TINY_CLASSES[shapes.PAIRS.index(("orange", "square"))] == "an orange square"


def test_retrieval_and_caption_reports_on_a_subset(tiny):
    val = TinyShapes("val", limit=12)
    recalls = evaluate_retrieval(tiny, val)
    assert set(recalls) == {f"{d}_R@{k}" for d in ("image_to_text", "text_to_image") for k in (1, 5, 10)}
    assert all(0.0 <= v <= 1.0 for v in recalls.values())
    metrics, captions = evaluate_captions(tiny, val, max_new=12)
    assert len(captions) == 12 and {"BLEU-4", "CIDEr-D", "object_F1", "exact_match"} <= set(metrics)


def test_evaluation_leaves_an_unreadable_image_out_and_never_scores_another_in_its_place(tiny, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    val = TinyShapes("val", limit=6)
    for i in range(6):  # six tiny_data images as files, each with its three captions
        Image.fromarray(val.palette[val.pixels[i].long()].numpy()).save(folder / f"{i}.png")
    rows = [{"image": f"{i}.png", "caption": c} for i in range(6) for c in val.captions[i]]
    (tmp_path / "all.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "without_2.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows if r["image"] != "2.png"))
    files = CaptionManifest(tmp_path / "all.jsonl", folder, val.tokenizer, 48)
    expected_recalls = evaluate_retrieval(tiny, CaptionManifest(tmp_path / "without_2.jsonl", folder, val.tokenizer, 48))
    expected_metrics, expected_captions = evaluate_captions(tiny, CaptionManifest(tmp_path / "without_2.jsonl", folder,
                                                                                  val.tokenizer, 48), max_new=8)  # fmt: skip
    (folder / "2.png").write_bytes(b"broken after the set was built")
    with pytest.warns(UserWarning, match=r"left 1 of 6 images out of this evaluation.*2\.png"):
        recalls = evaluate_retrieval(tiny, files)
    assert recalls == expected_recalls  # the other five, each with its own captions
    with pytest.warns(UserWarning, match=r"left 1 of 6 images out"):
        metrics, captions = evaluate_captions(tiny, files, max_new=8)
    assert metrics == expected_metrics and captions[2] is None
    assert [c for c in captions if c is not None] == expected_captions
    strict = CaptionManifest(tmp_path / "without_2.jsonl", folder, val.tokenizer, 48, strict=True)
    (folder / "3.png").write_bytes(b"broken too")
    with pytest.raises(OSError, match=r"could not decode .*3\.png"):
        evaluate_retrieval(tiny, strict)


def test_evaluation_shows_no_progress_bar_outside_a_terminal(tiny, capsys):
    # ten batches would draw a bar in a terminal; in a log file or CI a bar is \r fragments
    evaluate_captions(tiny, TinyShapes("val", limit=10), batch_size=1, max_new=2)
    assert "\r" not in capsys.readouterr().err


def test_the_plot_functions_leave_pyplots_backend_and_figures_alone(tmp_path):
    # a notebook's inline backend and open figures must survive a call that writes a PNG: before
    # this, plot_confusion, plot_training and save_sample_grid switched pyplot to Agg, closing
    # every open figure (a new process, so that no other test's backend is changed)
    script = f"""
import matplotlib
matplotlib.use("svg")
import matplotlib.pyplot as plt
import torch
from coca_min.data.synthetic import shapes
from coca_min.eval.evaluate import plot_confusion
from coca_min.train.plots import plot_training

mine = plt.figure()
out = {str(tmp_path)!r}
plot_confusion(torch.eye(3), torch.arange(3), ["a", "b", "c"], out + "/confusion.png")
history = [{{"step": s, "loss": 3.0 / s, "contrastive": 2.0 / s, "caption": 1.0 / s, "lr": 1e-3}} for s in (1, 2)]
plot_training(history, [{{"step": 2, "val_loss": 1.0}}], out)
shapes.save_sample_grid(shapes.make_images("val", range(4)), out + "/grid.png", n=4)
assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
assert plt.get_fignums() == [mine.number], plt.get_fignums()
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    for picture in ["confusion.png", "losses.png", "lr.png", "metrics.png", "grid.png"]:
        assert Image.open(tmp_path / picture).size[0] > 200, picture
