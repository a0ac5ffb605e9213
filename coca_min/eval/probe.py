"""Frozen-feature evaluation: an attentive probe and a linear probe on a frozen CoCa (paper §4.2).

The paper's "frozen" results (ImageNet 90.6%, Table 2) keep the whole image encoder fixed and
train only "a new pooler" on its output tokens: one attentional pooler with a single query,
then a linear classifier, with softmax cross-entropy ("attentive probing"). Its comparison is
the linear probe of CLIP: a linear classifier on the one vector the contrastive loss trained
(here the unit-norm image embedding). The attentive probe sees every image token, so it can
find what the contrastive embedding has pooled away.

Because the encoder is frozen, its outputs are computed once (`frozen_features`, under
`torch.inference_mode()`) and the probes train on those stored tensors: a probe step costs a
pooler, not a ViT. The model itself is never changed.

On tiny_data (`python -m coca_min.eval.probe --checkpoint …`), three label sets (`TASKS`):

- `pair`: tiny_data's 40 colour-shape classes on the `classes` split (25 one-object images of
  each; 15 train the probe, 10 test it). "held-out": the test images of the 8 pairs CoCa never
  saw in training.
- `shape_position`: shape × position (45 classes) of one-object images: trained on `train`,
  tested on `test`; "held-out": `test_comp`'s one-object images, each a pair unseen by CoCa and
  by the probe.
- `count`: how many objects (1-3): trained on `train`, tested on `test` and `test_comp`.

Left out: fine-tuning (the paper's third column), data augmentation and a search over the
probes' learning rates.
"""

import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from coca_min.data.synthetic import shapes
from coca_min.model.pooler import AttentionalPooler
from coca_min.schedule import Schedule


class AttentiveProbe(nn.Module):
    """A new attentional pooler (one query) and a linear classifier: (B, N, Dv) tokens -> (B, C)."""

    def __init__(self, context_dim: int, n_classes: int, dim: int = 128, n_heads: int = 4):
        super().__init__()
        self.pooler = AttentionalPooler(dim, 1, n_heads, context_dim, query_std=0.02)
        self.classifier = nn.Linear(dim, n_classes)

    def forward(self, tokens):  # (B, N, Dv) -> (B, C) logits
        return self.classifier(self.pooler(tokens)[:, 0])  # the single query's output (B, dim)


class LinearProbe(nn.Module):
    """A linear classifier on the contrastive image embedding: (B, E) -> (B, C). The embedding is
    unit norm, so its entries are about 1/√E; they are scaled by √E to unit size first."""

    def __init__(self, embed_dim: int, n_classes: int):
        super().__init__()
        self.scale = embed_dim**0.5
        self.classifier = nn.Linear(embed_dim, n_classes)

    def forward(self, embeddings):  # (B, E) -> (B, C)
        return self.classifier(embeddings * self.scale)


@torch.inference_mode()
def frozen_features(model, images, batch_size=512, progress=False):
    """What the frozen CoCa gives each image: ViT tokens (N, n_tokens, Dv) and the contrastive
    embedding (N, E), float32 on the CPU. images: (N, 3, H, W) normalised, or a function from a
    list of indices to such a batch, with `len(images)` known."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    tokens, embeddings = [], []
    starts = range(0, len(images), batch_size)
    for start in tqdm(starts, desc="frozen features", disable=not progress, leave=False):
        batch = images[start : start + batch_size].to(device)  # (b, 3, H, W)
        vit_tokens = model.image_encoder(batch)  # (b, n_tokens, Dv)
        tokens.append(vit_tokens.float().cpu())
        embeddings.append(model.pool(vit_tokens)[0].float().cpu())  # (b, E)
    model.train(was_training)
    return torch.cat(tokens), torch.cat(embeddings)


def fit(probe, features, labels, steps=400, batch_size=256, lr=2e-3, weight_decay=1e-4, seed=0, progress=False):
    """Train `probe` on stored features (n, …) and labels (n,) with AdamW, a 5% warm-up and a
    cosine decay, on random mini-batches drawn from `seed`. Returns the training losses."""
    if len(features) != len(labels) or len(labels) == 0:
        raise ValueError(f"expected as many labels as feature rows, at least one; got {len(labels)} and {len(features)}")
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = Schedule(lr, warmup=max(1, steps // 20))
    probe.train()
    losses = []
    for step in tqdm(range(steps), desc="probe", disable=not progress, leave=False):
        rows = torch.randint(len(labels), (min(batch_size, len(labels)),), generator=generator)
        for group in optimizer.param_groups:
            group["lr"] = schedule.lr(step)
        loss = F.cross_entropy(probe(features[rows]), labels[rows])  # softmax cross-entropy
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.advance(step + 1, steps)
        losses.append(loss.item())
    probe.eval()
    return losses


@torch.no_grad()
def accuracy(probe, features, labels, batch_size=1024) -> float:
    """The fraction of rows whose highest logit is their label."""
    if len(labels) == 0:
        return float("nan")
    probe.eval()
    predicted = torch.cat([probe(features[i : i + batch_size]).argmax(-1) for i in range(0, len(labels), batch_size)])
    return (predicted == labels).float().mean().item()


# --- the tiny_data label sets --------------------------------------------------------------


def _one_object(objects):  # (N, 3, 5) -> (N,) bool: exactly one object
    return (objects[:, :, 0] >= 0).sum(1) == 1


def task_labels(task, objects):
    """The rows of a split that a task labels, and their labels: (rows (M,), labels (M,)) int64."""
    one = np.flatnonzero(_one_object(objects))
    first = objects[one, 0]  # (M, 5) shape, colour, size, row, col of the only object
    if task == "pair":  # colour-major, as shapes.PAIRS
        return one, first[:, 1].astype(np.int64) * len(shapes.SHAPES) + first[:, 0]
    if task == "shape_position":  # shape-major: 5 shapes × 9 cells
        return one, first[:, 0].astype(np.int64) * 9 + first[:, 3] * 3 + first[:, 4]
    if task == "count":
        return np.arange(len(objects)), (objects[:, :, 0] >= 0).sum(1).astype(np.int64) - 1
    raise ValueError(f"unknown task {task!r}; expected one of {list(TASKS)}")


TASKS = {"pair": 40, "shape_position": 45, "count": 3}  # task: number of classes


def task_splits(task, features):
    """{"train", "test", "held-out"}: (feature rows, labels) of one task, from `features`, a dict
    split -> (tokens, embeddings, objects) of the tiny splits (see `tiny_features`)."""
    def rows_of(split, keep=None):
        tokens, embeddings, objects = features[split]
        rows, labels = task_labels(task, objects)
        if keep is not None:
            chosen = keep(rows)
            rows, labels = rows[chosen], labels[chosen]
        rows = torch.from_numpy(rows)
        return tokens[rows], embeddings[rows], torch.from_numpy(labels)

    if task == "pair":  # the classes split: image i shows pair i % 40; the first 15 of each pair train
        per_pair = len(shapes.PAIRS)
        held_out = {shapes.PAIRS.index(p) for p in shapes.HELD_OUT}
        return {
            "train": rows_of("classes", lambda rows: rows // per_pair < 15),
            "test": rows_of("classes", lambda rows: rows // per_pair >= 15),
            "held-out": rows_of("classes", lambda rows: (rows // per_pair >= 15) & np.isin(rows % per_pair, list(held_out))),
        }  # fmt: skip
    return {"train": rows_of("train"), "test": rows_of("test"), "held-out": rows_of("test_comp")}


def tiny_features(model, train_images=12000, progress=False):
    """Frozen features of the tiny splits the tasks use: split -> (tokens, embeddings, objects)."""
    from coca_min.data.datasets import TinyShapes

    features = {}
    for split, limit in [("train", train_images), ("test", None), ("test_comp", None), ("classes", None)]:
        data = TinyShapes(split, limit=limit)
        images = data.images(list(range(len(data))))  # (N, 3, 48, 48)
        features[split] = (*frozen_features(model, images, progress=progress), data.objects)
    return features


def probe_task(task, features, steps=400, seed=0, progress=False) -> dict:
    """Both probes on one task: {"linear" | "attentive": {"test", "held-out"} accuracies}."""
    parts = task_splits(task, features)
    tokens, embeddings, labels = parts["train"]
    torch.manual_seed(seed)  # the probes' initial weights
    probes = {"linear": (LinearProbe(embeddings.shape[1], TASKS[task]), 1),
              "attentive": (AttentiveProbe(tokens.shape[2], TASKS[task]), 0)}  # fmt: skip
    result = {"train images": len(labels)}
    for name, (probe, which) in probes.items():  # which: 0 tokens, 1 embedding
        fit(probe, parts["train"][which], labels, steps=steps, seed=seed, progress=progress)
        result[name] = {split: accuracy(probe, parts[split][which], parts[split][2]) for split in ("test", "held-out")}
    return result


def table(results) -> str:
    """A Markdown table of `probe_task` results by task."""
    rows = ["| task | classes | probe-train images | probe | test | held-out |", "|---|---|---|---|---|---|"]
    for task, result in results.items():
        for name, what in [("linear", "linear, on the embedding"), ("attentive", "attentive, on the tokens")]:
            test, held = (f"{100 * result[name][s]:.1f}%" for s in ("test", "held-out"))
            rows.append(f"| {task} | {TASKS[task]} | {result['train images']} | {what} | {test} | {held} |")
    return "\n".join(rows)


def main(argv=None):
    from coca_min.cli import Parser, ranged

    parser = Parser(prog="python -m coca_min.eval.probe", description="Frozen-feature evaluation of a trained tiny CoCa: "
                    "an attentive probe on the image tokens and a linear probe on the embedding, on tiny_data's labels.")  # fmt: skip
    parser.add_argument("--checkpoint", required=True, help="a checkpoint of train.py (e.g. lessons/assets/tiny_coca.pt)")
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS), help="label sets (default: all)")
    parser.add_argument("--steps", type=ranged(int, minimum=1), default=400, help="training steps of each probe (default: 400)")
    parser.add_argument("--train-images", type=ranged(int, minimum=1), default=12000,
                        help="how many train-split images to embed for the shape_position and count probes' training "
                        "(pair always trains on 600 of the classes split; default: 12000)")  # fmt: skip
    parser.add_argument("--random-encoder", action="store_true", help="also probe an untrained model of the same config")
    parser.add_argument("--seed", type=int, default=0, help="seed of the probes' initial weights and batches (default: 0)")
    args = parser.parse_args(argv)

    from coca_min.checkpoint import load_checkpoint
    from coca_min.model.coca import CoCa

    try:
        model = load_checkpoint(args.checkpoint)["model"]
    except (OSError, ValueError) as error:  # missing, not a checkpoint, not coca_min's: one line
        parser.error(str(error))
    if model.config.image_size != 48:
        parser.error(f"the probe's tasks are tiny_data's 48 px images; this checkpoint takes {model.config.image_size} px")
    models = {"trained": model}
    if args.random_encoder:
        torch.manual_seed(args.seed)
        models["random"] = CoCa(model.config).eval()
    progress = sys.stderr.isatty()  # a bar only in a terminal: in a log it is \r fragments
    for name, encoder in models.items():
        print(f"{name} encoder: embedding the tiny splits, then {len(args.tasks)} x 2 probes of {args.steps} steps",
              file=sys.stderr, flush=True)  # what it is doing, also in a log  # fmt: skip
        features = tiny_features(encoder, args.train_images, progress=progress)
        results = {task: probe_task(task, features, args.steps, args.seed, progress) for task in args.tasks}
        print(f"\n{name} encoder ({args.checkpoint if name == 'trained' else 'untrained, same config'}), {args.steps} probe steps:\n")
        print(table(results))
    return results


if __name__ == "__main__":
    main()
