"""What a training run reports: the quick evaluation during training, the final report (a
table, report.json, the confusion matrix of the tiny set), the progress line, and the JSON files
it writes beside its checkpoint. Called by trainer.py, on rank 0.

Not a part of the paper; the metrics themselves are coca_min/eval/'s.
"""

import json
import os
import sys
import time

import torch
from tqdm import tqdm

from coca_min.data.datasets import TinyShapes, collate, normalize
from coca_min.eval.evaluate import (
    TINY_CLASSES,
    evaluate_captions,
    evaluate_retrieval,
    evaluate_tiny_zero_shot,
    plot_confusion,
    tiny_report,
)
from coca_min.model.losses import coca_loss


@torch.no_grad()
def evaluate_during_training(model, tokenizer, val, args, config):
    """Quick validation figures: loss, retrieval R@1, and on the tiny set, on small subsets,
    zero-shot top-1 (also on the held-out colour-shape pairs alone, and colour and shape
    accuracy on their own) and the greedy captions' object F1 on `val` and on `test_comp`
    (images with held-out pairs): what a run learns first, and what it does not."""
    model.eval()
    device = next(model.parameters()).device
    images, tokens = collate([val[i] for i in range(min(len(val), 256))])  # images: uint8 from files
    outputs = model(normalize(images.to(device)), tokens.to(device))
    losses = coca_loss(outputs, tokens.to(device), config.pad_id, args.caption_weight, args.contrastive_weight)
    out = {"val_loss": losses["loss"].item()}
    out.update(evaluate_retrieval(model, val, ks=(1,)))
    if args.data == "tiny":
        classes = TinyShapes("classes", tokenizer, config.context_length, limit=min(args.eval_images or 400, 1000))
        zero_shot = evaluate_tiny_zero_shot(model, tokenizer, classes)[0]
        out["zero_shot_top1"] = zero_shot["top1"]
        out["zero_shot_top1_held_out"] = zero_shot["top1_held_out"]
        out["zero_shot_colour"] = zero_shot["colour_accuracy"]
        out["zero_shot_shape"] = zero_shot["shape_accuracy"]
        subset = TinyShapes("val", tokenizer, config.context_length, limit=min(len(val), 128))
        out["caption_object_F1"] = evaluate_captions(model, subset)[0]["object_F1"]
        held_out = TinyShapes("test_comp", tokenizer, config.context_length, limit=min(args.eval_images or 128, 128))
        out["caption_object_F1_comp"] = evaluate_captions(model, held_out)[0]["object_F1"]
    model.train()
    return out


def final_report(model, tokenizer, val_set, args, config, train_seconds, step):
    """Evaluate on the test splits (tiny) or the validation set (real data); print a table and
    write report.json (and the zero-shot confusion matrix for the tiny set)."""
    model.eval()
    t0 = time.monotonic()
    if args.data == "tiny":
        report, (scores, labels) = tiny_report(model, tokenizer, limit=args.eval_images)
        plot_confusion(scores, labels, TINY_CLASSES, args.out / "confusion.png")
    elif val_set is not None:
        report = {"val": {**evaluate_retrieval(model, val_set), **evaluate_captions(model, val_set)[0]}}
    else:
        report = {}
    report["run"] = {"steps": step, "train_seconds": round(train_seconds, 1), "eval_seconds": round(time.monotonic() - t0, 1),
                     "parameters": sum(p.numel() for p in model.parameters()), "size": args.size}  # fmt: skip
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    n = args.eval_images
    what = ((f"the first {n} images of each split (--eval-images)" if n else
             "whole test splits; zero-shot on `classes`; hard negatives on 500 test images") if args.data == "tiny"
            else f"{args.val_data}" if val_set is not None else None)  # fmt: skip
    if what is None:
        print("\nno final report: there is no evaluation set (give --val-data FILE --images DIR)")
    else:
        print(f"\nfinal report ({what}):")
        print(f"{'':<24}" + "".join(f"{split:>13}" for split in report if split != "run"))
    rows = sorted({k for split, r in report.items() if split != "run" for k, v in r.items() if isinstance(v, float)})
    for key in rows:
        print(f"{key:<24}" + "".join(f"{r[key]:>13.3f}" if key in r else f"{'':>13}" for s, r in report.items() if s != "run"))
    for split in ("test", "test_comp"):
        for example in report.get(split, {}).get("examples", [])[:3]:
            print(f"[{split}] {example['generated']!r}  (reference: {example['reference']!r})")
    print(f"trained {step} steps in {train_seconds:.0f} s, evaluated in {report['run']['eval_seconds']:.0f} s -> {args.out}/")


class Progress:
    """Training progress: a tqdm bar in a terminal; elsewhere (a file, a CI log), where a bar
    leaves thousands of carriage-return fragments, one plain line every `every` seconds and at
    the last step."""

    def __init__(self, total, initial, desc, enabled=True, every=10.0):
        self.tty, self.enabled, self.every, self.desc = sys.stderr.isatty(), enabled, every, desc
        self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True) if enabled and self.tty else None
        self.last_line = time.monotonic()
        self.figures = {}  # the losses and lr last read from the device (step.read_logs), as text

    def show(self, **figures):
        """The figures to show from now on (the losses are read every --log-every steps)."""
        self.figures = {k: f"{v:.3f}" if k != "lr" else f"{v:.2e}" for k, v in figures.items()}

    def update(self, step, total, pairs_s):
        text = {**self.figures, "pairs_s": f"{pairs_s:.0f}"}
        if self.bar is not None:
            self.bar.total = total
            self.bar.set_postfix(text, refresh=False)
            self.bar.update(1)
        elif self.enabled and (time.monotonic() - self.last_line >= self.every or step == total):
            self.last_line = time.monotonic()
            print(f"{self.desc}: step {step}/{total or '?'}  " + "  ".join(f"{k} {v}" for k, v in text.items()),
                  file=sys.stderr, flush=True)  # fmt: skip

    def write(self, line):
        if self.bar is not None:
            self.bar.write(line)
        elif self.enabled:
            print(line, file=sys.stderr, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def write_json(path, data):
    """Written to a temporary file, then renamed: never half a file. history.json holds one row
    per step (loss, contrastive, caption, lr) and the evaluations, to plot a run without loading
    the checkpoint; args.json the run's arguments."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, default=str) + "\n")  # default: Path -> str
    os.replace(temporary, path)
