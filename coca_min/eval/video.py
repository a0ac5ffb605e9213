"""Video with CoCa: every frame through the shared image encoder, then attentional pooling over
the tokens of all frames (paper §4.2, "video action recognition").

    clip (B, F, 3, H, W) ─ image_encoder, frame by frame ─ (B, F, N, Dv)
        ─ + time embedding (F, Dv), one learned vector per frame ─ flatten ─ (B, F·N, Dv)
        ─ the CoCa's two poolers (`CoCa.pool`) ─ embedding (B, E), caption tokens (B, n_q, D)
        ─ the same contrastive loss and text decoder as for images

The paper trains "an additional pooler on top of the spatial and temporal feature tokens" of
the frozen encoder, with one query, so that pooling over all F·N tokens stays cheap. Attention
is a function of a *set* of tokens: without the time embedding, shuffling the frames changes
nothing, and a clip could not be told from itself played backwards. The tiny demonstration
(`python -m coca_min.eval.video --checkpoint …`, on `coca_min/data/synthetic/moving_shapes.py`'s clips):

1. motion classification by attentive probes on the frozen image encoder, from (a) the middle
   frame, (b) the frames' average, (c) all frames' tokens with the time embedding, and (c
   without the time embedding);
2. a video CoCa trained briefly from the image checkpoint (its encoder frozen, so that frame
   tokens are computed once), with the accuracy of its greedy captions' object and motion.

Left out: fine-tuning the encoder on video, frame sampling from real videos, zero-shot video
retrieval by the mean of frame embeddings (the paper's simpler route, which (b) stands for).
"""

import sys

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from coca_min.data.synthetic import moving_shapes
from coca_min.data.tokenizer import drop_padding_columns
from coca_min.model.generate import generate_from_caption_tokens
from coca_min.model.losses import coca_loss
from coca_min.schedule import Schedule

from .probe import AttentiveProbe, accuracy, fit, frozen_features


class TimeEmbedding(nn.Module):
    """Adds one learned vector per frame to that frame's tokens and flattens the frames:
    (B, F, N, D) -> (B, F·N, D). Starts at unit scale, like the ViT's position embedding."""

    def __init__(self, n_frames: int, dim: int):
        super().__init__()
        self.embedding = nn.Parameter(torch.randn(n_frames, dim))  # (F, D)

    def forward(self, frame_tokens):  # (B, F, N, D) -> (B, F·N, D)
        return (frame_tokens + self.embedding[:, None]).flatten(1, 2)  # frame f's tokens all get row f


class VideoCoCa(nn.Module):
    """A CoCa whose poolers attend over the tokens of every frame of a clip."""

    def __init__(self, coca, n_frames: int):
        super().__init__()
        self.coca, self.config = coca, coca.config
        self.time_embedding = TimeEmbedding(n_frames, coca.config.vision_width)

    def frame_tokens(self, clips):  # (B, F, 3, H, W) -> (B, F, N, Dv): the shared encoder, per frame
        n_frames, size = len(self.time_embedding.embedding), self.config.image_size
        if not isinstance(clips, torch.Tensor) or clips.dim() != 5:
            got = tuple(clips.shape) if isinstance(clips, torch.Tensor) else type(clips).__name__
            raise ValueError(f"clips: expected a 5-D tensor (batch, {n_frames} frames, 3, {size}, {size}); got {got}")
        if clips.shape[1] != n_frames:
            raise ValueError(f"clips: expected {n_frames} frames (the time embedding has one row per frame); got {clips.shape[1]}")
        B, F = clips.shape[:2]
        frames = clips.flatten(0, 1)  # (B·F, 3, H, W)
        self.coca._check_images(frames)  # channels, size, dtype: the image model's messages
        return self.coca.image_encoder(frames).unflatten(0, (B, F))

    def pool(self, frame_tokens):  # (B, F, N, Dv) -> embedding (B, E), caption tokens (B, n_q, D)
        return self.coca.pool(self.time_embedding(frame_tokens))

    def encode_video(self, clips):
        return self.pool(self.frame_tokens(clips))

    def forward(self, clips, tokens):
        """`CoCa.forward` for clips (B, F, 3, H, W); the same output dict."""
        return self.forward_tokens(self.frame_tokens(clips), tokens)

    def forward_tokens(self, frame_tokens, tokens):
        """`forward` from the frames' ViT tokens (B, F, N, Dv): a frozen encoder runs once."""
        video_embedding, caption_tokens = self.pool(frame_tokens)
        text_embedding, token_features = self.coca.encode_text(tokens)
        logits = self.coca.caption_logits(caption_tokens, tokens, token_features)
        return {"image_embedding": video_embedding, "text_embedding": text_embedding, "logits": logits,
                "logit_scale": self.coca.log_logit_scale.exp()}  # fmt: skip


def clip_tokens(coca, frames, clips_per_batch=64, progress=False):
    """Frozen ViT tokens of every frame of `moving_shapes` clips (N, F, 48, 48) palette indices
    -> (N, F, n_tokens, Dv) float32. Pixels are made a batch at a time (all at once: 28 kB a frame)."""
    tokens = []
    for start in tqdm(range(0, len(frames), clips_per_batch), desc="frame tokens", disable=not progress, leave=False):
        pixels = moving_shapes.to_pixels(frames[start : start + clips_per_batch])  # (b, F, 3, 48, 48)
        batch, _ = frozen_features(coca, pixels.flatten(0, 1), batch_size=len(pixels) * pixels.shape[1])
        tokens.append(batch.unflatten(0, pixels.shape[:2]))  # (b, F, n_tokens, Dv)
    return torch.cat(tokens)


# --- 1. motion classification: what each summary of a clip can tell -------------------------

SUMMARIES = {  # name: (what the probe reads, from frame tokens (B, F, N, Dv))
    "(a) middle frame": lambda t: t[:, t.shape[1] // 2],  # (B, N, Dv)
    "(b) frames averaged": lambda t: t.mean(dim=1),  # (B, N, Dv)
    "(c) all frames, no time embedding": lambda t: t.flatten(1, 2),  # (B, F·N, Dv): a set of tokens
    "(c) all frames + time embedding": None,  # TimeEmbedding, learned with the probe
}


def motion_probes(train_tokens, train_motion, test_tokens, test_motion, steps=400, seed=0, progress=False) -> dict:
    """Test accuracy of an attentive probe (new 1-query pooler + linear) for each summary."""
    results = {}
    n_frames, dim = train_tokens.shape[1], train_tokens.shape[3]
    for name, summary in SUMMARIES.items():
        torch.manual_seed(seed)
        head = AttentiveProbe(dim, len(moving_shapes.MOTIONS))
        if summary is None:
            probe, train, test = nn.Sequential(TimeEmbedding(n_frames, dim), head), train_tokens, test_tokens
        else:
            probe, train, test = head, summary(train_tokens), summary(test_tokens)
        fit(probe, train, train_motion, steps=steps, seed=seed, progress=progress)
        results[name] = accuracy(probe, test, test_motion)
    return results


# --- 2. a video CoCa, trained briefly on frozen frame tokens -------------------------------


def train_video_coca(video, frame_tokens, tokens, steps=800, batch_size=64, lr=2e-3, seed=0, progress=False):
    """Train the poolers, the time embedding and the text decoder (the image encoder stays as it
    is: its tokens are given) with CoCa's loss. Returns the losses."""
    trainable = [p for name, p in video.named_parameters() if not name.startswith("coca.image_encoder.")]
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.01)
    schedule, generator, losses = Schedule(lr, warmup=max(1, steps // 10)), torch.Generator().manual_seed(seed), []
    video.train()
    for step in tqdm(range(steps), desc="video CoCa", disable=not progress, leave=False):
        rows = torch.randint(len(tokens), (batch_size,), generator=generator)
        for group in optimizer.param_groups:
            group["lr"] = schedule.lr(step)
        batch_tokens = drop_padding_columns(tokens[rows], video.config.pad_id)
        loss = coca_loss(video.forward_tokens(frame_tokens[rows], batch_tokens), batch_tokens, video.config.pad_id)
        optimizer.zero_grad(set_to_none=True)
        loss["loss"].backward()
        optimizer.step()
        video.coca.clamp_logit_scale_()
        schedule.advance(step + 1, steps)
        losses.append(loss["loss"].item())
    video.eval()
    return losses


@torch.inference_mode()
def caption_clips(video, tokenizer, clips, **options) -> list[str]:
    """Captions of clips (B, F, 3, H, W), as `generate.caption` gives for images (same options)."""
    _, caption_tokens = video.encode_video(clips)  # (B, n_queries, D)
    return _texts(video, tokenizer, caption_tokens, **options)


def _texts(video, tokenizer, caption_tokens, **options) -> list[str]:  # decoded captions of pooled clips
    generated, _ = generate_from_caption_tokens(video.coca, caption_tokens, **options)
    return [tokenizer.decode(row) for row in generated]


@torch.inference_mode()
def caption_accuracy(video, tokenizer, frame_tokens, labels, batch_size=256) -> dict:
    """Greedy captions of clips, parsed: the fraction whose shape, colour, object (both), motion,
    and object and motion are right; and a few captions. labels: (N, 3) shape, colour, motion."""
    texts = []
    for start in range(0, len(labels), batch_size):
        _, caption_tokens = video.pool(frame_tokens[start : start + batch_size])
        texts += _texts(video, tokenizer, caption_tokens)
    parsed = [moving_shapes.parse_caption(t) or (-1, -1, -1) for t in texts]
    said, truth = np.array(parsed), np.asarray(labels)
    right = said == truth  # (N, 3): shape, colour, motion
    object_right = right[:, 0] & right[:, 1]
    return {"shape": right[:, 0].mean(), "colour": right[:, 1].mean(), "object": object_right.mean(),
            "motion": right[:, 2].mean(), "both": (object_right & right[:, 2]).mean(), "examples": texts[:6]}  # fmt: skip


def main(argv=None):
    from coca_min.checkpoint import load_checkpoint
    from coca_min.cli import Parser, ranged

    parser = Parser(prog="python -m coca_min.eval.video", description="Video by frame pooling on tiny moving shapes: "
                    "motion probes on a frozen image encoder, then a briefly trained video CoCa's captions.")  # fmt: skip
    parser.add_argument("--checkpoint", required=True, help="a tiny image CoCa (e.g. lessons/assets/tiny_coca.pt)")
    parser.add_argument("--train-clips", type=ranged(int, minimum=6), default=3000, help="training clips, at least 6 (default: 3000)")
    parser.add_argument("--test-clips", type=ranged(int, minimum=6), default=600, help="test clips, at least 6 (default: 600)")
    parser.add_argument("--probe-steps", type=ranged(int, minimum=1), default=400, help="steps of each probe (default: 400)")
    parser.add_argument("--caption-steps", type=ranged(int, minimum=0), default=800,
                        help="steps of the video CoCa, 0 for none (default: 800)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed of the new weights and the batches (default: 0)")
    args = parser.parse_args(argv)

    try:
        run = load_checkpoint(args.checkpoint)
    except (OSError, ValueError) as error:  # missing, not a checkpoint, not coca_min's: one line
        parser.error(str(error))
    coca, tokenizer = run["model"], run["tokenizer"]
    if coca.config.image_size != moving_shapes.SIZE:
        parser.error(f"the clips' frames are {moving_shapes.SIZE} px; this checkpoint takes {coca.config.image_size} px")
    progress = sys.stderr.isatty()  # a bar only in a terminal: in a log it is \r fragments
    say = lambda text: print(text, file=sys.stderr, flush=True)  # what it is doing, also in a log
    say(f"frame tokens of {args.train_clips} + {args.test_clips} clips, then 4 motion probes of {args.probe_steps} steps")
    train, test = moving_shapes.make_clips("train", args.train_clips), moving_shapes.make_clips("test", args.test_clips)
    train_tokens, test_tokens = (clip_tokens(coca, d["frames"], progress=progress) for d in (train, test))
    motion = {split: torch.from_numpy(d["labels"][:, 2]) for split, d in [("train", train), ("test", test)]}
    probes = motion_probes(train_tokens, motion["train"], test_tokens, motion["test"], args.probe_steps, args.seed, progress)
    print(f"\nmotion classification ({len(moving_shapes.MOTIONS)} motions, chance {100 / len(moving_shapes.MOTIONS):.1f}%), "
          f"attentive probes on the frozen encoder, {args.train_clips} training clips, {args.probe_steps} steps:\n")  # fmt: skip
    print("| what the probe sees | test accuracy |\n|---|---|")
    for name, value in probes.items():
        print(f"| {name} | {100 * value:.1f}% |")
    results = {"motion probes": probes}
    if args.caption_steps:
        say(f"training the video CoCa for {args.caption_steps} steps")
        torch.manual_seed(args.seed)
        video = VideoCoCa(coca, moving_shapes.FRAMES)
        tokens = tokenizer.encode_batch(train["captions"], coca.config.context_length)
        losses = train_video_coca(video, train_tokens, tokens, args.caption_steps, seed=args.seed, progress=progress)
        scores = caption_accuracy(video, tokenizer, test_tokens, test["labels"])
        print(f"\nvideo CoCa, {args.caption_steps} steps from the image checkpoint (loss {losses[0]:.2f} -> "
              f"{np.mean(losses[-10:]):.2f}); greedy captions of {args.test_clips} test clips:\n")  # fmt: skip
        names = ["shape", "colour", "object", "motion", "both"]  # object: shape and colour; both: object and motion
        print("| " + " | ".join(f"{name} right" for name in names) + " |\n|" + "---|" * len(names))
        print("| " + " | ".join(f"{100 * scores[name]:.1f}%" for name in names) + " |")
        print("\nfor example: " + "; ".join(f'"{t}"' for t in scores["examples"][:3]))
        results["captions"] = scores
    return results


if __name__ == "__main__":
    main()
