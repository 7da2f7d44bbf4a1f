"""Precise BatchNorm: the running statistics re-estimated from fixed training batches with the current weights.

Training normalises each batch by its own statistics; the running averages PyTorch keeps for eval
mode are an exponential average (momentum 0.1) over the last few dozen batches, so they trail the
weights by those batches, and at a high learning rate they describe a network that has moved on.
For the natural-image ``ffdnet`` (15 BatchNorm layers) that cost 1-4 dB on Set12 in eval mode in the
middle of its run (docs/natural.md). With ``bn_recalibration = N`` (``--bn-recalibration N``) the
loop replaces them, before each validation, by the exact average over N fixed batches computed with
the epoch's weights (:func:`recalibrate_batchnorm`), in the precision the run trains in.

It changes no weight and draws from no generator the training uses (its batches are drawn once,
from their own stream, :data:`daelab.seeds.BN_RECALIBRATION`), so a run trains along the same path
with it or without it (tested): only the statistics saved, the validation loss and with it the
choice of ``best.pt`` differ. :func:`recalibrate_run` applies it to a finished run's checkpoint.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from daelab.folders import PatchSampler
from daelab.seeds import BN_RECALIBRATION

_BATCHNORM = nn.modules.batchnorm._BatchNorm


def batchnorm_layers(model: nn.Module) -> list[nn.Module]:
    """The model's BatchNorm layers that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, _BATCHNORM) and m.track_running_stats]


def recalibration_batches(config, train_data, n_batches: int | None = None) -> list[torch.Tensor]:
    """The fixed noisy batches precise BatchNorm averages over: ``n_batches`` of ``config.batch_size``.

    Parameters
    ----------
    config : the run's :class:`~daelab.train.TrainConfig` (batch size, noise, seed; ``bn_recalibration``
        is the number of batches unless ``n_batches`` is given).
    train_data : the run's :class:`~daelab.train._data.TrainData`: for an image folder, patches are
        drawn from its training images as training draws them (augmented, same size); for a tensor
        dataset, the first samples of its training set.
    n_batches : the number of batches (default ``config.bn_recalibration``).

    Returns
    -------
    list of (B, ...) float32 noisy batches on the training data's device, drawn with
    :data:`~daelab.seeds.BN_RECALIBRATION` of ``config.seed`` (the same every time).
    """
    from daelab.noise import parse_noise

    n_batches = config.bn_recalibration if n_batches is None else n_batches
    total = n_batches * config.batch_size
    sampler = train_data.sampler
    if sampler is not None:
        clean = PatchSampler(sampler.folder, sampler.patch_size, total,
                             seed=BN_RECALIBRATION.seed(config.seed)).draw(0)
    else:
        clean = train_data.train[:total].cpu()
    noisy = parse_noise(config.noise)(clean.float(), BN_RECALIBRATION.generator(config.seed))
    return list(noisy.to(train_data.train.device).split(config.batch_size))


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: list[torch.Tensor], bf16: bool = False) -> int:
    """Set every BatchNorm layer's running mean and variance to their exact average over ``batches``.

    The model runs in eval mode except its BatchNorm layers (so dropout is off and draws nothing),
    with the cumulative average (``momentum=None``) from reset statistics; each layer's momentum and
    ``num_batches_tracked`` are restored afterwards, and the model's train/eval mode.

    Parameters
    ----------
    model : the model (its fp32 master weights).
    batches : the noisy input batches (:func:`recalibration_batches`).
    bf16 : run the forward passes under bf16 autocast, as a bf16 run trains.

    Returns
    -------
    int : the number of BatchNorm layers recalibrated (0: the model has none, nothing done).
    """
    layers = batchnorm_layers(model)
    if not layers or not batches:
        return 0
    was_training = model.training
    saved = [(layer.momentum, layer.num_batches_tracked.clone()) for layer in layers]
    model.eval()
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None
        layer.train()
    try:
        for batch in batches:
            with torch.autocast(batch.device.type, dtype=torch.bfloat16, enabled=bf16):
                model(batch)
    finally:
        for layer, (momentum, tracked) in zip(layers, saved):
            layer.momentum = momentum
            layer.num_batches_tracked.copy_(tracked)
        model.train(was_training)
    return len(layers)


def recalibrate_run(run_dir: str | os.PathLike, n_batches: int, checkpoint: str = "last") -> dict:
    """Precise BatchNorm on a finished run's checkpoint, as ``--bn-recalibration n_batches`` would have done.

    The checkpoint's weights are kept; its BatchNorm statistics are re-estimated by
    :func:`recalibrate_batchnorm` over the batches the run's own settings draw
    (:func:`recalibration_batches`), in the precision it trained in (its ``config.json``), and its
    ``train_config`` records ``bn_recalibration``. The checkpoint is rewritten atomically.

    Returns
    -------
    dict : ``checkpoint`` (the path), ``layers`` recalibrated, ``val_loss_before`` and ``val_loss_after``
    (eval-mode MSE on the run's fixed validation set).
    """
    from daelab.checkpoint import load_checkpoint, save_checkpoint
    from daelab.config import from_jsonable, to_jsonable
    from daelab.models import ModelConfig, build_model
    from daelab.runs import CONFIG_FILE, checkpoint_path, read_json
    from daelab.train._config import TrainConfig
    from daelab.train._data import prepare_data
    from daelab.train._steps import evaluate_loss

    path = checkpoint_path(run_dir, checkpoint)
    state = load_checkpoint(path)
    model_config = from_jsonable(ModelConfig, state["model_config"])
    config = from_jsonable(TrainConfig, {**state["train_config"], "bn_recalibration": n_batches})
    model = build_model(model_config)
    model.load_state_dict(state["model"])
    data = prepare_data(config, model.input_layout, torch.device("cpu"))
    before = evaluate_loss(model, data.val_noisy, data.val_clean)
    precision = read_json(Path(run_dir) / CONFIG_FILE).get("precision", "fp32")
    layers = recalibrate_batchnorm(model, recalibration_batches(config, data), bf16=precision == "bf16")
    after = evaluate_loss(model, data.val_noisy, data.val_clean)
    save_checkpoint(path, {**state, "model": model.state_dict(), "train_config": to_jsonable(config)})
    return {"checkpoint": str(path), "layers": layers, "val_loss_before": before, "val_loss_after": after}
