"""Figures shared by several stages, drawn with matplotlib's non-interactive Agg backend."""
from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_loss_curves(history: list[dict], path: str | os.PathLike,
                     title: str = "DAE reconstruction loss (MSE)") -> None:
    """Train vs validation loss per epoch, like the study's TensorBoard plot (log-scale y)."""
    epochs = [row["epoch"] for row in history]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    ax.plot(epochs, [row["train_loss"] for row in history], color="tab:red", label="train (noisy input, dropout on)")
    ax.plot(epochs, [row["val_loss"] for row in history], color="tab:green", label="validation (eval mode)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("MSE")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
