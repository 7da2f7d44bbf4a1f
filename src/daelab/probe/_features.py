"""The probe's feature sets: encoder codes (clean or noisy), raw pixels, and PCA of the same width.

Every feature set is a pair of float32 tensors, (N, D) for the training images and (M, D) for the
test images, computed once here and shared by every probe. PCA is fit on the probe's training split
only, so the held-out validation images and the test set never shape the features.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from daelab.data import Dataset, to_tensor
from daelab.models import in_batches
from daelab.noise import parse_noise
from daelab.probe._config import FEATURES
from daelab.seeds import CODES_NOISY


@torch.inference_mode()
def encode_images(model: torch.nn.Module, images: np.ndarray, batch_size: int = 4096) -> torch.Tensor:
    """Encoder codes of clean images, with the model in eval mode.

    Parameters
    ----------
    model : torch.nn.Module
        A daelab DAE (``encode``, ``input_layout``).
    images : numpy.ndarray
        (N, H, W) uint8, or float in [0, 1].
    batch_size : int
        Images per forward pass.

    Returns
    -------
    torch.Tensor
        (N, code_dim) float32 codes, on the CPU.
    """
    model.eval()
    device = next(model.parameters()).device
    tensor = to_tensor(images, model.input_layout)
    return in_batches(model.encode, tensor, batch_size, device)


@torch.inference_mode()
def encode_noisy(model: torch.nn.Module, images: np.ndarray, noise_spec: str, generator: torch.Generator,
                 batch_size: int = 4096) -> torch.Tensor:
    """Encoder codes of images corrupted once with ``noise_spec``, with the model in eval mode.

    Parameters
    ----------
    model : torch.nn.Module
        A daelab DAE (``encode``, ``input_layout``).
    images : numpy.ndarray
        (N, H, W) uint8, or float in [0, 1].
    noise_spec : str
        A daelab noise spec, e.g. ``gaussian:0.1`` (the run's training noise).
    generator : torch.Generator
        A CPU generator the noise is drawn from, batch after batch.
    batch_size : int
        Images per forward pass.

    Returns
    -------
    torch.Tensor
        (N, code_dim) float32 codes, on the CPU.
    """
    model.eval()
    device = next(model.parameters()).device
    noise = parse_noise(noise_spec)
    tensor = to_tensor(images, model.input_layout)
    # the noise is drawn on the CPU, batch after batch, so the draw does not depend on the device
    return in_batches(lambda batch: model.encode(noise(batch, generator).to(device)), tensor, batch_size)


def pca_features(train_pixels: np.ndarray, fit_rows: int, test_pixels: np.ndarray, dim: int, seed: int = 0):
    """PCA to ``dim`` components, fit on the first ``fit_rows`` training rows only.

    Parameters
    ----------
    train_pixels : numpy.ndarray
        (N, P) float32 training pixels.
    fit_rows : int
        The PCA sees ``train_pixels[:fit_rows]`` (the probe's training split) only.
    test_pixels : numpy.ndarray
        (M, P) float32 test pixels.
    dim : int
        Components (capped at ``fit_rows`` and P).
    seed : int
        scikit-learn's ``random_state`` (unused by the full SVD, kept for other solvers).

    Returns
    -------
    tuple
        (train projections (N, dim) float32, test projections (M, dim) float32, explained variance ratio).
    """
    from sklearn.decomposition import PCA
    dim = min(dim, fit_rows, train_pixels.shape[1])
    pca = PCA(n_components=dim, svd_solver="full", random_state=seed).fit(train_pixels[:fit_rows])
    return (pca.transform(train_pixels).astype(np.float32), pca.transform(test_pixels).astype(np.float32),
            float(pca.explained_variance_ratio_.sum()))


def extract_features(model, checkpoint: dict, dataset: Dataset, names, fit_rows: int, seed: int = 0) -> dict:
    """The probe's feature sets of a dataset.

    Parameters
    ----------
    model : torch.nn.Module
        The run's DAE.
    checkpoint : dict
        Its checkpoint (``codes_noisy`` uses its ``train_config``'s noise).
    dataset : Dataset
        The images (already subset).
    names : sequence of str
        Feature sets from :data:`daelab.probe.FEATURES`.
    fit_rows : int
        Training rows the probes train on (PCA is fit on these only).
    seed : int
        Seeds the noisy codes' draw (stream ``CODES_NOISY``) and the PCA.

    Returns
    -------
    dict
        ``{name: {"train": (N, D) float32 tensor, "test": (M, D), "dim": D, "description",
        "seconds", ...}}``.
    """
    features = {}
    train_pixels = to_tensor(dataset.train_images, "flat").numpy()
    test_pixels = to_tensor(dataset.test_images, "flat").numpy()
    for name in names:
        began = time.perf_counter()
        info: dict = {"description": FEATURES[name]}
        if name == "codes":
            train, test = encode_images(model, dataset.train_images), encode_images(model, dataset.test_images)
        elif name == "codes_noisy":
            spec = checkpoint["train_config"]["noise"]
            generator = CODES_NOISY.generator(seed)
            train = encode_noisy(model, dataset.train_images, spec, generator)
            test = encode_noisy(model, dataset.test_images, spec, generator)
            info["noise"] = spec
        elif name == "raw":
            train, test = torch.from_numpy(train_pixels), torch.from_numpy(test_pixels)
        else:  # pca
            train, test, explained = pca_features(train_pixels, fit_rows, test_pixels, model.code_dim, seed)
            train, test = torch.from_numpy(train), torch.from_numpy(test)
            info["explained_variance"] = explained
        info.update(train=train.contiguous(), test=test.contiguous(), dim=int(train.shape[1]),
                    seconds=time.perf_counter() - began)
        features[name] = info
    return features
