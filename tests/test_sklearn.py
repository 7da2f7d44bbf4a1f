"""The scikit-learn estimator: sklearn's own checks, a Pipeline, pickling, GridSearchCV."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.utils.estimator_checks import parametrize_with_checks

from conftest import make_synthetic
from daelab.estimator import DenoisingAutoencoder


def small(**kwargs) -> DenoisingAutoencoder:
    values = dict(hidden=(16,), code_dim=4, decoder_hidden=(16,), epochs=2, batch_size=32, random_state=0)
    return DenoisingAutoencoder(**{**values, **kwargs})


# Every check applies and passes: no expected failures are declared.
@parametrize_with_checks([small()])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def flat(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1).astype(np.float32) / 255.0


@pytest.fixture(scope="module")
def data():
    dataset = make_synthetic(n_train=400, n_test=200, size=12, seed=1)
    return flat(dataset.train_images), dataset.train_labels, flat(dataset.test_images), dataset.test_labels


def test_pipeline_dae_then_logistic_regression(data):
    X, y, X_test, y_test = data
    pipe = Pipeline([("dae", small(code_dim=16, epochs=5, lr=3e-3)), ("clf", LogisticRegression(max_iter=500))])
    pipe.fit(X, y)
    assert pipe.named_steps["dae"].transform(X_test).shape == (200, 16)
    assert pipe.score(X_test, y_test) > 0.5  # 10 classes: chance is 0.1
    curve = pipe.named_steps["dae"].loss_curve_
    assert len(curve) == 5 and curve[-1] < curve[0]


def test_pickle_round_trip_gives_identical_outputs(data):
    X = data[0]
    dae = small().fit(X)
    clone = pickle.loads(pickle.dumps(dae))
    np.testing.assert_array_equal(dae.transform(X), clone.transform(X))
    np.testing.assert_array_equal(dae.predict(X), clone.predict(X))
    assert clone.n_features_in_ == X.shape[1]


def test_unfitted_and_wrong_width_raise(data):
    X = data[0]
    with pytest.raises(NotFittedError):
        small().transform(X)
    dae = small().fit(X)
    with pytest.raises(ValueError, match="features"):
        dae.transform(X[:, :-1])
    with pytest.raises(ValueError, match="features"):
        dae.inverse_transform(np.zeros((3, 5)))
    assert dae.inverse_transform(dae.transform(X)).shape == X.shape


def test_rescale_false_rejects_out_of_range_data(data):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        small(rescale=False).fit(data[0] * 2)


def test_rescale_maps_back_to_the_input_units(data):
    X = data[0]
    scaled = small(epochs=4, lr=3e-3).fit(X * 50 - 7)
    denoised = scaled.predict(X * 50 - 7)
    assert denoised.min() >= -7 - 1e-3 and denoised.max() <= 43 + 1e-3
    assert denoised.max() - denoised.min() > 5  # not collapsed into [0, 1]


def test_bad_noise_spec_is_a_value_error(data):
    with pytest.raises(ValueError, match="noise"):
        small(noise="bogus:0.1").fit(data[0])


def test_grid_search_over_code_dim(data):
    X, y = data[0], data[1]
    search = GridSearchCV(small(), {"code_dim": [2, 8]}, cv=2)
    search.fit(X, y)
    assert search.best_params_["code_dim"] in (2, 8)
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()


def test_the_old_import_path_still_gives_the_estimator():
    from daelab.estimator import DenoisingAutoencoder as current
    from daelab.sklearn import DenoisingAutoencoder as compatible
    assert compatible is current


@pytest.mark.parametrize("shape", [
    dict(hidden=(16,), code_dim=4, decoder_hidden=(16,)),  # PyTorch's training step
    {},  # the study's DAE: daelab's fused CPU kernels where they load (bf16 CPUs)
], ids=["small", "study"])
def test_random_state_trains_what_daelab_train_seed_trains(tmp_path, shape):
    """``random_state=s`` draws from daelab's named streams as ``fit(..., TrainConfig(seed=s))`` does."""
    import torch

    from daelab.models import ModelConfig
    from daelab.train import TrainConfig, fit
    dataset = make_synthetic(n_train=300, n_test=40, seed=2)
    settings = dict(epochs=2, batch_size=32, lr=1e-3, noise="gaussian:0.1")
    trained = fit(ModelConfig(**shape), TrainConfig(seed=5, device="cpu", **settings), tmp_path / "run",
                  dataset=dataset, progress=False)["model"]
    # uint8 / 255 in float64 rounds to the float32 values daelab.data.to_tensor computes (all 256 of them)
    X = dataset.train_images.reshape(300, -1) / 255.0
    dae = DenoisingAutoencoder(**shape, **settings, rescale=False, random_state=5).fit(X)
    expected, got = trained.state_dict(), dae.model_.state_dict()
    assert expected.keys() == got.keys()
    for name, value in expected.items():
        assert torch.equal(got[name], value), name
    other = DenoisingAutoencoder(**shape, **settings, rescale=False, random_state=6).fit(X).model_.state_dict()
    assert not torch.equal(other["encoder.0.weight"], expected["encoder.0.weight"])  # the seed matters


def test_random_state_instances_and_none_follow_sklearn(data):
    X = data[0][:100]
    first = small(random_state=np.random.RandomState(3)).fit(X).transform(X)
    again = small(random_state=np.random.RandomState(3)).fit(X).transform(X)
    np.testing.assert_array_equal(first, again)  # the same RandomState state: the same draw, the same model
    state = np.random.RandomState(3)
    small(random_state=state).fit(X)
    second = small(random_state=state).fit(X).transform(X)  # the instance moved on: another seed
    assert not np.array_equal(first, second)
    np.random.seed(11)  # None: NumPy's global RandomState, as scikit-learn's estimators use it
    unseeded = small(random_state=None).fit(X).transform(X)
    np.random.seed(11)
    np.testing.assert_array_equal(unseeded, small(random_state=None).fit(X).transform(X))
    with pytest.raises(ValueError):
        small(random_state=-1).fit(X)
