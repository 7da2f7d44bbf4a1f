"""Benchmark: the study's classifier on Fashion-MNIST-sized features, 1 seed vs S seeds stacked.

Prints seconds per epoch and the projected time of the study's 100 epochs, for 196-d (codes) and
784-d (pixels) inputs, and the ratio "S seeds stacked / S x one seed". Timing does not depend on
the values, so the features are random. Run:

    PYTHONPATH=src python benchmarks/bench_probe.py --epochs 3 --seeds 5 --threads 2
"""
from __future__ import annotations

import argparse

import torch

from daelab.probe._classifier import ClassifierSettings, keras_validation_split, train_classifiers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="epochs timed per configuration")
    parser.add_argument("--seeds", type=int, default=5, help="seeds in the stacked run")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--n", type=int, default=60000, help="training images before the 2/9 validation split")
    parser.add_argument("--dims", default="196,784", help="input widths to time")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cut = keras_validation_split(args.n, 2 / 9)
    settings = ClassifierSettings(epochs=args.epochs)
    print(f"{cut} training samples, batch 128, {args.threads} threads, {args.epochs} epochs timed")
    for dim in (int(d) for d in args.dims.split(",")):
        features = torch.rand(args.n, dim)
        labels = torch.randint(0, 10, (args.n,))
        times = {}
        for n_seeds in (1, args.seeds):
            fit = train_classifiers(features[:cut], labels[:cut], features[cut:], labels[cut:],
                                    list(range(n_seeds)), settings)
            times[n_seeds] = fit.seconds / args.epochs
        one, many = times[1], times[args.seeds]
        print(f"dim {dim:4d}: 1 seed {one:6.3f} s/epoch ({100 * one:6.1f} s per 100 epochs); "
              f"{args.seeds} seeds stacked {many:6.3f} s/epoch ({100 * many:6.1f} s per 100 epochs); "
              f"stacked / ({args.seeds} x one) = {many / (args.seeds * one):.2f}")


if __name__ == "__main__":
    main()
