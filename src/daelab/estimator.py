"""The scikit-learn face of daelab: a denoising autoencoder as an estimator and transformer.

:class:`DenoisingAutoencoder` wraps the study's MLP DAE (:class:`daelab.models.MLPDAE`, built for
any number of input features) so that it drops into a ``Pipeline`` or a ``GridSearchCV``: ``fit``
trains it with daelab's own training step (:func:`daelab.train.train_steps`), ``transform`` gives
the bottleneck codes, ``inverse_transform`` decodes codes, and ``predict`` (alias ``denoise``)
reconstructs. It follows scikit-learn's conventions exactly: ``__init__`` only stores its keyword
arguments, learned state ends in ``_``, and ``sklearn.utils.estimator_checks`` pass.

Data range: the model ends in a sigmoid and its noise is clipped to [0, 1], so it works in [0, 1].
With ``rescale=True`` (the default) ``fit`` learns ONE affine map (the global minimum and maximum
of X, not per feature, so images keep their relative pixel values; images that span [0, 1]
already pass through unchanged) sending the data to [0, 1]; later inputs are mapped the same way
and clipped to [0, 1], and reconstructions are mapped back. With ``rescale=False`` any value
outside [0, 1] is a ``ValueError``.
"""
from __future__ import annotations

import math
import numbers

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from daelab.distributed import DistContext, epoch_order
from daelab.errors import DaelabError
from daelab.models import ModelConfig, build_model, in_batches
from daelab.noise import parse_noise
from daelab.seeds import MODEL_INIT, TRAIN_NOISE
from daelab.train import TrainConfig, make_optimizer, make_training_policy, resolve_device, train_steps, usable_samples


class DenoisingAutoencoder(TransformerMixin, BaseEstimator):
    """An MLP denoising autoencoder for (n_samples, n_features) data in [0, 1].

    Parameters
    ----------
    hidden : tuple of int, default=(512, 512, 256)
        Encoder hidden widths.
    code_dim : int, default=196
        Width of the codes ``transform`` returns.
    decoder_hidden : tuple of int, default=(256, 512)
        Decoder hidden widths.
    dropout : float, default=0.2
        Dropout after each encoder hidden layer but the last.
    noise : str, default="gaussian:0.1"
        Training corruption, a daelab noise spec (``gaussian:0.1``, ``masking:0.25``, ...).
    epochs : int, default=10
        Passes over the training data.
    batch_size : int, default=256
        Samples per Adam step.
    lr : float, default=1e-3
        Adam learning rate.
    rescale : bool, default=True
        Learn one global min-max map of X to [0, 1] (see the module notes); False requires X in [0, 1].
    random_state : int, RandomState instance or None, default=None
        Seeds the weights, the sample order, the noise and dropout. An int ``s`` is used as the
        seed itself, through daelab's named streams (:mod:`daelab.seeds`), so the estimator trains
        the same weights, bit for bit, as ``daelab train --seed s`` (:func:`daelab.train.fit` with
        ``TrainConfig(seed=s)``) with the same architecture, epochs, batch size, learning rate,
        noise and device, at ``precision="auto"`` and ``kernels="auto"`` (``daelab train``'s
        defaults), on the same training samples in the same order (``X`` as float32, or
        float64 that rounds to the same float32 values, e.g. uint8 images ``/ 255``; with
        ``rescale=False`` or data spanning [0, 1]). A RandomState instance or None (NumPy's global
        RandomState) gives one integer seed drawn from it. The global torch RNG is left as it was.
    device : str, default="cpu"
        ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
    verbose : int, default=0
        Print the loss after each epoch when > 0.

    Attributes
    ----------
    model_ : torch.nn.Module
        The trained :class:`~daelab.models.MLPDAE`, in eval mode.
    n_features_in_ : int
        Number of features seen by ``fit``.
    loss_curve_ : list of float
        Mean training MSE (on the [0, 1] scale) per epoch.
    data_min_, data_max_ : float
        The global range learned when ``rescale`` (0 and 1 otherwise).
    """

    def __init__(self, hidden=(512, 512, 256), code_dim=196, decoder_hidden=(256, 512), dropout=0.2,
                 noise="gaussian:0.1", epochs=10, batch_size=256, lr=1e-3, rescale=True, random_state=None,
                 device="cpu", verbose=0):
        self.hidden = hidden
        self.code_dim = code_dim
        self.decoder_hidden = decoder_hidden
        self.dropout = dropout
        self.noise = noise
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.rescale = rescale
        self.random_state = random_state
        self.device = device
        self.verbose = verbose

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags

    # ------------------------------------------------------------------------------- fitting
    def fit(self, X, y=None):
        """Train the DAE on X.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data, in [0, 1] unless ``rescale``.
        y : None
            Ignored (scikit-learn's transformer signature).

        Returns
        -------
        DenoisingAutoencoder
            ``self``, fitted.
        """
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=True)
        if len(X) < 2:
            raise ValueError(f"n_samples = {len(X)}: a DAE with BatchNorm needs at least 2 samples")
        if self.rescale:
            self.data_min_, self.data_max_ = float(X.min()), float(X.max())
        else:
            self.data_min_, self.data_max_ = 0.0, 1.0
        clean = self._to_unit(X, check=not self.rescale)
        try:
            model_config = ModelConfig(hidden=tuple(self.hidden), code_dim=int(self.code_dim),
                                       decoder_hidden=tuple(self.decoder_hidden), dropout=float(self.dropout),
                                       input_dim=X.shape[1])
            train_config = TrainConfig(epochs=int(self.epochs), batch_size=int(self.batch_size), lr=float(self.lr),
                                       noise=self.noise, device=self.device)
            device = resolve_device(self.device)
        except DaelabError as exc:  # scikit-learn callers expect ValueError for bad parameters
            raise ValueError(str(exc)) from None
        seed = self._seed()
        noise = parse_noise(self.noise)
        # one dense row-major block (sklearn may pass F-ordered arrays): the training step gathers rows
        clean = torch.tensor(np.ascontiguousarray(clean), dtype=torch.float32, device=device)
        n = len(clean)
        # a last batch of one sample would break BatchNorm: leave that one sample out of the epoch
        n_used = usable_samples(n, train_config.batch_size)
        steps = math.ceil(n_used / train_config.batch_size)
        self.loss_curve_ = []
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # the caller's global torch RNG stays as it was
            # The streams and the order of the draws are daelab.train.fit's: weights (and then dropout)
            # from the global RNG seeded MODEL_INIT, the noise from TRAIN_NOISE (rank 0), each epoch's
            # order from its own permutation -- so random_state=s trains what `daelab train --seed s` does.
            torch.manual_seed(MODEL_INIT.seed(seed))
            model = build_model(model_config).to(device)
            optimizer = make_optimizer(model, train_config)
            generator = TRAIN_NOISE.generator(seed, 0, device)
            policy = make_training_policy(model, optimizer, train_config, device)
            single_process = DistContext()  # the estimator never trains under torchrun
            for epoch in range(train_config.epochs):
                order = epoch_order(n, seed, epoch, single_process, device)[:n_used]
                done = train_steps(policy, optimizer, clean, order, noise, generator, train_config, device, 0, steps)
                loss = done.loss_sum / max(done.samples, 1)
                if not math.isfinite(loss):
                    raise ValueError(f"training loss became non-finite in epoch {epoch + 1}; try a lower lr")
                self.loss_curve_.append(loss)
                if self.verbose:
                    print(f"epoch {epoch + 1}/{train_config.epochs}: loss {loss:.6f}")
        self.model_ = model.eval()
        return self

    # ------------------------------------------------------------------------------ inference
    def transform(self, X):
        """X (n_samples, n_features) -> codes (n_samples, code_dim)."""
        X = self._check_input(X)
        return self._run(self.model_.encode, self._to_unit(X), X.dtype)

    def inverse_transform(self, X):
        """Codes (n_samples, code_dim) -> reconstructions (n_samples, n_features) in X's units."""
        check_is_fitted(self)
        codes = check_array(X, dtype=[np.float64, np.float32])
        if codes.shape[1] != self.model_.code_dim:
            raise ValueError(f"X has {codes.shape[1]} features, but {type(self).__name__} decodes codes of "
                             f"{self.model_.code_dim} features")
        return self._from_unit(self._run(self.model_.decode, codes, codes.dtype))

    def predict(self, X):
        """Reconstructions (denoised X), (n_samples, n_features), in X's units."""
        X = self._check_input(X)
        return self._from_unit(self._run(self.model_, self._to_unit(X), X.dtype))

    denoise = predict

    def score(self, X, y=None):
        """Negative mean squared reconstruction error of X on the [0, 1] scale (higher is better)."""
        X = self._check_input(X)
        unit = self._to_unit(X)
        return -float(np.mean((self._run(self.model_, unit, np.float64) - unit) ** 2))

    # -------------------------------------------------------------------------------- helpers
    def _seed(self) -> int:
        """The integer seed of ``random_state``: an int as it is (``daelab train --seed``'s meaning), else one
        draw from the RandomState (None: NumPy's global one), as scikit-learn's own estimators draw."""
        random_state = check_random_state(self.random_state)  # also rejects ints no RandomState accepts
        if isinstance(self.random_state, numbers.Integral):
            return int(self.random_state)
        return int(random_state.randint(2 ** 31 - 1))

    def _check_input(self, X):
        check_is_fitted(self)
        return validate_data(self, X, dtype=[np.float64, np.float32], reset=False)

    def _to_unit(self, X, check=False):
        if check and (X.min() < 0 or X.max() > 1):
            raise ValueError(f"X must lie in [0, 1] when rescale=False, found [{X.min():g}, {X.max():g}]")
        span = self.data_max_ - self.data_min_
        unit = (X - self.data_min_) / (span if span > 0 else 1.0)
        return np.clip(unit, 0.0, 1.0)

    def _from_unit(self, unit):
        span = self.data_max_ - self.data_min_
        return unit * (span if span > 0 else 1.0) + self.data_min_

    def _run(self, fn, array, dtype, batch_size=4096):
        device = next(self.model_.parameters()).device
        rows = torch.from_numpy(np.ascontiguousarray(array))
        out = in_batches(lambda batch: fn(batch.to(device, torch.float32)), rows, batch_size)
        return out.numpy().astype(dtype, copy=False)

    # --------------------------------------------------------------------------------- pickle
    def __getstate__(self):
        # store the weights as a state dict on the CPU, not the live module, so a pickle loads
        # anywhere (no CUDA needed) and does not depend on torch pickling module classes
        state = dict(super().__getstate__())
        if "model_" in state:
            model = state.pop("model_")
            state["_model_state"] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            state["_model_config"] = model.config
        return state

    def __setstate__(self, state):
        model_state = state.pop("_model_state", None)
        model_config = state.pop("_model_config", None)
        super().__setstate__(state)
        if model_state is not None:
            model = build_model(model_config)
            model.load_state_dict(model_state)
            self.model_ = model.eval()
