"""Pictures of a training run: loss curves, learning rate, evaluation metrics over time.

Not part of the paper. `train.py` keeps a history (a list of dicts, one per logged step) and
calls `plot_training` at every evaluation, so the PNGs in the output folder are always current.
"""

from pathlib import Path

from matplotlib.figure import Figure  # drawn straight to a file: no window, and pyplot's

# backend and figures, a notebook's among them, are left as they are


def _smooth(values, weight=0.9):
    out, last = [], values[0] if values else 0.0
    for v in values:
        last = weight * last + (1 - weight) * v
        out.append(last)
    return out


def plot_training(history, evaluations, out_dir) -> None:
    """history: [{"step", "loss", "contrastive", "caption", "lr"}, …];
    evaluations: [{"step", metric: value, …}, …]. Writes losses.png, lr.png, metrics.png."""
    out_dir = Path(out_dir)
    if history:
        steps = [h["step"] for h in history]
        fig = Figure(figsize=(13, 3.6))
        axes = fig.subplots(1, 3)
        for ax, key, title in zip(axes, ["loss", "contrastive", "caption"],
                                  ["total: 1·contrastive + 2·caption", "contrastive", "captioning"]):  # fmt: skip
            values = [h[key] for h in history]
            ax.plot(steps, values, alpha=0.3, color="C0")
            ax.plot(steps, _smooth(values), color="C0")
            ax.set_title(title)
            ax.set_xlabel("step")
            if min(values) > 0:  # a log scale shows the late, slow part of the curve
                ax.set_ylabel("loss (log scale)")
                ax.set_yscale("log")
            else:  # e.g. the contrastive loss with --contrastive-weight 0 is 0 throughout
                ax.set_ylabel("loss")
            ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out_dir / "losses.png", dpi=100)
        fig = Figure(figsize=(5, 3.2))
        ax = fig.subplots()
        ax.plot(steps, [h["lr"] for h in history])
        ax.set(title="learning rate", xlabel="step", ylabel="learning rate")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out_dir / "lr.png", dpi=100)
    if evaluations:
        steps = [e["step"] for e in evaluations]
        losses = [k for k in evaluations[-1] if "loss" in k]  # on their own axes: rates are in [0, 1]
        rates = [k for k in evaluations[-1] if k != "step" and k not in losses]
        fig = Figure(figsize=(12, 4))
        loss_ax, rate_ax = fig.subplots(1, 2, width_ratios=[1, 1.6])
        for ax, names in [(loss_ax, losses), (rate_ax, rates)]:
            for name in names:
                ax.plot(steps, [e.get(name) for e in evaluations], marker="o", markersize=3, label=name)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        loss_ax.set(title="validation loss", ylabel="loss")
        if losses and min(min(e.get(k, 1.0) for e in evaluations) for k in losses) > 0:
            loss_ax.set_yscale("log")
            loss_ax.set_ylabel("loss (log scale)")
        rate_ax.set(title="evaluation during training", ylabel="rate", ylim=(-0.02, 1.02))
        if rates:
            rate_ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
        fig.tight_layout()
        fig.savefig(out_dir / "metrics.png", dpi=100)
