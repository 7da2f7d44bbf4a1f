"""The reference point for speed: the study's DAE trained by a plain PyTorch loop, as a careful user writes it.

fp32, the whole training set in memory as one float tensor, a fresh random order each epoch, fresh
Gaussian noise (0.1, clipped to [0, 1]) per batch of 256, Adam 1e-3, MSE. The model is the study's
784-512-512-256-196-256-512-784 MLP (Linear -> BatchNorm -> Dropout 0.2 -> LeakyReLU 0.3 in the
first two encoder blocks, no dropout after) in an ``nn.Sequential`` with PyTorch's default init.
It does what ``../shared/bench/plain_torch_dae.py`` does (the project's reference beside the
repository), so a clone anywhere can re-measure daelab against it; ``--reference-loop`` times both
side by side. Nothing here imports daelab: the baseline is PyTorch alone.

Importable (:class:`PlainLoop`, which :mod:`bench_train` runs in its own process) and a script:

    python benchmarks/plain_loop.py --epochs 3 [--data-dir DIR] [--json]
    python benchmarks/plain_loop.py --reference-loop ../shared/bench/plain_torch_dae.py --rounds 3 --epochs 3

The script prints one line per epoch and, with ``--json``, a final JSON object with the steady-state
samples/s (the median of the epochs after the first), as the shared loop does. With
``--reference-loop`` it runs this script and the reference alternately as subprocesses, ``--rounds``
times (the order flipping each round), and prints both rates and their ratio per round.
"""
from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import median

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"
TRAIN_IMAGES = "train-images-idx3-ubyte"
NOISE_STD = 0.1


def load_train_images(data_dir: str | Path = DEFAULT_DATA_DIR) -> torch.Tensor:
    """The training images of an MNIST-format directory as (N, 784) float32 in [0, 1].

    Reads ``train-images-idx3-ubyte.gz`` (or the file without ``.gz``): a 16-byte IDX header, then
    N x 28 x 28 uint8 pixels.
    """
    path = Path(data_dir) / (TRAIN_IMAGES + ".gz")
    opener = gzip.open if path.is_file() else open
    path = path if path.is_file() else Path(data_dir) / TRAIN_IMAGES
    with opener(path, "rb") as handle:
        pixels = np.frombuffer(handle.read(), np.uint8, offset=16)
    return torch.from_numpy(pixels.reshape(-1, 784).astype(np.float32) / 255.0)


def _dense(n_in: int, n_out: int, dropout: float) -> list[nn.Module]:
    return [nn.Linear(n_in, n_out), nn.BatchNorm1d(n_out), *([nn.Dropout(dropout)] if dropout else []),
            nn.LeakyReLU(0.3)]


def study_dae(dropout: float = 0.2) -> nn.Sequential:
    """The study's MLP DAE: (N, 784) noisy images -> (N, 784) denoised, through a 196-wide code."""
    encoder = [*_dense(784, 512, dropout), *_dense(512, 512, dropout), *_dense(512, 256, 0.0), nn.Linear(256, 196)]
    decoder = [*_dense(196, 256, 0.0), *_dense(256, 512, 0.0), nn.Linear(512, 784), nn.Sigmoid()]
    return nn.Sequential(*encoder, *decoder)


@dataclass
class Epoch:
    """One epoch of the plain loop: mean training loss, wall seconds and samples/s."""

    loss: float
    seconds: float
    samples_per_s: float


class PlainLoop:
    """The plain training loop, one epoch at a time, keeping its model and optimizer between epochs.

    Parameters
    ----------
    clean : torch.Tensor
        (N, 784) float32 training images in [0, 1].
    batch_size : int
        Samples per Adam step.
    lr : float
        Adam's learning rate.
    seed : int
        Seeds the weights (through the global generator, as a script does) and the order and noise
        (through the loop's own generator, so other work in the process does not shift them).
    """

    def __init__(self, clean: torch.Tensor, batch_size: int = 256, lr: float = 1e-3, seed: int = 0):
        torch.manual_seed(seed)
        self.clean, self.batch_size = clean, batch_size
        self.model = study_dae()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)
        self.generator = torch.Generator().manual_seed(seed)
        self.epochs = 0

    def epoch(self) -> Epoch:
        """Train one epoch over all of ``clean``; returns its loss and speed."""
        self.model.train()
        n = len(self.clean)
        total = 0.0
        began = time.perf_counter()
        order = torch.randperm(n, generator=self.generator)
        for start in range(0, n, self.batch_size):
            batch = self.clean[order[start:start + self.batch_size]]  # (B, 784)
            noise = torch.randn(batch.shape, generator=self.generator)
            noisy = (batch + NOISE_STD * noise).clamp_(0.0, 1.0)
            loss = F.mse_loss(self.model(noisy), batch)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += loss.item() * len(batch)
        seconds = time.perf_counter() - began
        self.epochs += 1
        return Epoch(total / n, seconds, n / seconds)

    @torch.no_grad()
    def val_loss(self, noisy: torch.Tensor, clean: torch.Tensor, batch_size: int = 4096) -> float:
        """Mean squared error of the model in eval mode on (M, 784) ``noisy`` against ``clean``."""
        self.model.eval()
        total = sum(F.mse_loss(self.model(noisy[i:i + batch_size]), clean[i:i + batch_size], reduction="sum").item()
                    for i in range(0, len(clean), batch_size))
        self.model.train()
        return total / clean.numel()


def steady_rate(rates: list[float]) -> float:
    """The steady-state rate of a run's epochs: the median of those after the first (warm-up)."""
    return float(median(rates[1:] or rates))


def run_script(script: str | Path, epochs: int, data_dir: str | None = None) -> dict:
    """Run a plain-loop script (this one or the shared reference) with ``--json``; its final JSON object."""
    cmd = [sys.executable, str(script), "--epochs", str(epochs), "--json"]
    cmd += ["--data-dir", str(data_dir)] if data_dir else []
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def compare(reference: str | Path, rounds: int, epochs: int, data_dir: str | None = None) -> list[dict]:
    """This loop and ``reference`` as subprocesses, alternately, ``rounds`` times (the order flips each round).

    Returns one dict per round: ``{"in_repo": samples/s, "reference": samples/s, "ratio": in_repo / reference}``.
    """
    results = []
    for r in range(rounds):
        order = [("in_repo", Path(__file__)), ("reference", Path(reference))]
        rates = {name: run_script(script, epochs, data_dir)["samples_per_s"]
                 for name, script in (order if r % 2 == 0 else order[::-1])}
        rates["ratio"] = rates["in_repo"] / rates["reference"]
        results.append(rates)
        print(f"round {r + 1}/{rounds}: in-repo {rates['in_repo']:,.0f} samples/s, reference "
              f"{rates['reference']:,.0f} samples/s, ratio {rates['ratio']:.3f}", flush=True)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3, help="epochs (the first is warm-up)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    parser.add_argument("--json", action="store_true", help="end with a JSON object of the steady-state rate")
    parser.add_argument("--reference-loop", type=Path, metavar="PATH", help="time this script and PATH (a "
                        "plain_torch_dae.py) side by side instead")
    parser.add_argument("--rounds", type=int, default=3, help="with --reference-loop: alternating rounds")
    args = parser.parse_args(argv)
    if args.reference_loop is not None:
        results = compare(args.reference_loop, args.rounds, args.epochs, args.data_dir)
        ratios = [r["ratio"] for r in results]
        print(f"in-repo / reference: median {median(ratios):.3f} (rounds {min(ratios):.3f}-{max(ratios):.3f}); "
              f"in-repo median {median(r['in_repo'] for r in results):,.0f}, reference median "
              f"{median(r['reference'] for r in results):,.0f} samples/s ({torch.get_num_threads()} threads)")
        if args.json:
            print(json.dumps({"rounds": results, "ratio_median": median(ratios)}))
        return
    loop = PlainLoop(load_train_images(args.data_dir), batch_size=args.batch_size)
    rates = []
    for _ in range(args.epochs):
        epoch = loop.epoch()
        rates.append(epoch.samples_per_s)
        print(f"epoch {loop.epochs} loss {epoch.loss:.5f} {epoch.seconds:.2f}s {epoch.samples_per_s:.0f} samples/s",
              flush=True)
    if args.json:
        print(json.dumps({"samples_per_s": steady_rate(rates), "epochs": args.epochs, "final_loss": epoch.loss,
                          "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
