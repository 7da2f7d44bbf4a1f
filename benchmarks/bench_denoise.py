"""Denoising speed of an image model on one large image: seconds per image and per megapixel, side by side.

For MODEL (a run directory or a shipped name; default ``natural-gray``) and a SIZE x SIZE image
(default 512, the issue's yardstick), at each thread count it times, in one run:

- ``whole``: :func:`daelab.denoise.denoise_image` with its default tile (one piece up to 1024 px for
  a dncnn/ffdnet model), what ``daelab denoise`` does;
- ``tiled 256``: the same cut into 256-px tiles (bounded memory for huge images; exact for a model
  of known reach, so the ratio is the margins' cost);
- optionally (``--ensemble 2,4,8``) the self-ensembles of 2, 4 or 8 transforms, whole;
- optionally (``--bm3d``) the ``bm3d`` package on the same noisy image, one run: the classical
  denoiser the model is compared with on Set12.

The image is a real photo when ``--image`` is given (else a seeded piecewise-smooth synthetic one);
noise is the protocol's ``awgn:25``. Best of ``--repeats`` after one warm-up run. With
``DAELAB_ISA`` set (e.g. ``avx2``) PyTorch's libraries are capped to that class before torch loads,
as in ``bench_train.py``, so an AVX-512 machine measures the AVX2 path.

    python benchmarks/bench_denoise.py [MODEL] [--size 512] [--threads 1,2] [--repeats 3] [--ensemble 2,4,8] [--bm3d]
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

# The ISA cap must reach PyTorch's libraries before torch is imported (they read it when they start).
from daelab.cpu import apply_isa_cap, cpu_info, format_caps

CAPS_SET = apply_isa_cap()

import torch  # noqa: E402

from daelab.denoise import denoise_image  # noqa: E402
from daelab.pretrained import resolve_model  # noqa: E402


def synthetic(size: int, seed: int = 0) -> np.ndarray:
    """A piecewise-smooth test image in [0, 1]: a gradient, discs and bars (edges and flat areas)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    image = 0.3 + 0.4 * x * y
    for _ in range(12):
        cy, cx, r = rng.random(3) * [1, 1, 0.2]
        image[(y - cy) ** 2 + (x - cx) ** 2 < r ** 2] = rng.random()
    image[:, (np.arange(size) // 8) % 7 == 0] *= 0.5
    return np.clip(image, 0, 1).astype(np.float32)


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up: oneDNN picks and caches its kernels for this shape
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="natural-gray", help="run directory or shipped name")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels")
    parser.add_argument("--image", help="a grayscale PNG/JPEG to crop (top left) instead of a synthetic image")
    parser.add_argument("--threads", default="1,2", help="comma-separated PyTorch thread counts")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bm3d", action="store_true", help="also time the bm3d package once per thread count")
    parser.add_argument("--ensemble", default="", metavar="N,N", help="also time these self-ensembles, whole, e.g. "
                        "2,4,8 (best of 1)")
    args = parser.parse_args(argv)

    if args.image:
        from daelab.images import read_image_file
        picture = read_image_file(args.image).images[""]
        clean = (picture if picture.ndim == 2 else picture[0])[: args.size, : args.size].astype(np.float32)
    else:
        clean = synthetic(args.size)
    noisy = (clean + 25 / 255 * np.random.default_rng(1).standard_normal(clean.shape)).astype(np.float32)
    model, info = resolve_model(args.model)
    megapixels = clean.size / 1e6
    caps = f"; libraries capped: {format_caps(CAPS_SET)}" if CAPS_SET else ""
    print(f"CPU: {cpu_info().describe()}; torch {torch.__version__}{caps}")
    print(f"model: {args.model} ({info.get('source')}); image {clean.shape[0]}x{clean.shape[1]} "
          f"({megapixels:.3f} MP), awgn:25, best of {args.repeats}")
    print("| threads | contender | s / image | s / MP | x whole |")
    print("|---:|---|---:|---:|---:|")
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        whole = best_time(lambda: denoise_image(model, noisy, unclipped=True), args.repeats)
        rows = [("whole (default)", whole)]
        rows.append(("tiled 256", best_time(lambda: denoise_image(model, noisy, tile=256, unclipped=True),
                                            args.repeats)))
        for n in (int(n) for n in args.ensemble.split(",") if n):
            rows.append((f"whole, --ensemble {n}", best_time(lambda n=n: denoise_image(model, noisy, unclipped=True,
                                                                                     ensemble=n), 1)))
        if args.bm3d:
            import bm3d
            start = time.perf_counter()
            bm3d.bm3d(noisy, sigma_psd=25 / 255)
            rows.append(("bm3d (package)", time.perf_counter() - start))
        for name, seconds in rows:
            print(f"| {threads} | {name} | {seconds:.3f} | {seconds / megapixels:.2f} | {seconds / whole:.2f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
