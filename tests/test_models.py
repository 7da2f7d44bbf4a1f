"""Shapes per registered model and the study's parameter counts."""
import pytest
import torch

from daelab.errors import ConfigError
from daelab.models import MODELS, ModelConfig, build_model, example_input, format_summary, summary_rows


def test_study_parameter_counts():
    model = build_model(ModelConfig())
    _, totals = summary_rows(model)
    assert totals == {"total": 1_438_676, "trainable": 1_434_580, "non_trainable": 4_096}
    assert sum(p.numel() for p in model.parameters()) == 1_434_580
    table = format_summary(model)
    assert "Total params: 1,438,676" in table and "(None, 196)" in table


@pytest.mark.parametrize("name", sorted(MODELS))
def test_shapes_per_registered_model(name):
    model = build_model(ModelConfig(name=name)).eval()
    images = example_input(model, batch=3).uniform_()
    with torch.no_grad():
        codes = model.encode(images)
    with torch.no_grad():
        out = model(images)
    assert out.shape == images.shape and codes.shape[0] == 3
    if hasattr(model, "encode_with_skips"):  # U-Net-like models decode from codes plus skip tensors
        with torch.no_grad():
            codes, skips = model.encode_with_skips(images)
            assert torch.allclose(model.decode(codes, skips), out)
    else:
        with torch.no_grad():
            assert torch.allclose(model.decode(codes), out)
    assert float(out.min()) >= 0 and float(out.max()) <= 1


def test_study_layers_and_init():
    model = build_model(ModelConfig())
    assert model.encoder[3].negative_slope == 0.3 and model.encoder[2].p == 0.2
    assert [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)] == [0.2, 0.2]
    bn = model.encoder[1]
    assert bn.eps == 1e-3 and bn.momentum == pytest.approx(0.01)
    weight = model.encoder[0].weight
    assert abs(float(weight.detach().std()) - 0.05) < 0.002 and float(model.encoder[0].bias.detach().abs().max()) == 0


def test_unknown_model_lists_valid():
    with pytest.raises(ConfigError, match="valid: .*mlp"):
        build_model(ModelConfig(name="transformer"))
    with pytest.raises(ConfigError, match="dropout"):
        ModelConfig(dropout=1.5)


def test_bit_dropout_statistics_and_eval_identity():
    from daelab.models import BitDropout
    layer = BitDropout(0.2)
    x = torch.ones(400, 1000)
    torch.manual_seed(0)
    out = layer(x)
    assert abs(float((out == 0).float().mean()) - 0.2) < 0.005
    assert torch.allclose(out[out != 0], torch.tensor(1.25))
    assert abs(float(out.mean()) - 1.0) < 0.01  # unbiased, like nn.Dropout
    torch.manual_seed(0)
    assert torch.equal(layer(x), out)  # reproducible from the global seed
    layer.eval()
    assert layer(x) is x
    x.requires_grad_(True)
    layer.train()
    out = layer(x)
    out.sum().backward()
    assert torch.equal(x.grad, out.detach())  # gradient passes through kept units only, scaled


def test_in_batches_equals_one_call_and_never_passes_more_than_a_batch():
    from daelab.models import in_batches
    seen = []
    weights = torch.randn(7, 3)

    def fn(batch):
        seen.append(len(batch))
        return batch @ weights

    rows = torch.randn(23, 7, dtype=torch.float64)
    out = in_batches(lambda b: fn(b.float()), rows, batch_size=5)
    assert seen == [5, 5, 5, 5, 3]
    torch.testing.assert_close(out, rows.float() @ weights)
    stacked = torch.randn(2, 11, 7)  # (S, N, D) batched along N; outputs (S, N) batched along dim 1
    predicted = in_batches(lambda b: (b @ weights).argmax(-1), stacked, batch_size=4, dim=1, out_dim=1)
    assert torch.equal(predicted, (stacked @ weights).argmax(-1))
