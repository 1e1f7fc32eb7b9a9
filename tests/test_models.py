"""Default model builders: shapes, parameter counts, argument checks, sizing rule, summary."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from descend._errors import ConfigError
from descend.models import default_hidden, describe_model, mlp


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("activation", ["relu", "gelu", "tanh", "silu", "leaky_relu"])
def test_mlp_output_shape_for_every_activation(activation):
    model = mlp(5, 3, hidden=(7, 4), activation=activation)
    assert model(torch.randn(11, 5)).shape == (11, 3)
    assert sum(isinstance(m, nn.Linear) for m in model) == 3


def test_mlp_parameter_count_and_names():
    model = mlp(10, 2, hidden=(32, 16))
    assert n_params(model) == (10 * 32 + 32) + (32 * 16 + 16) + (16 * 2 + 2)
    assert [name for name, _ in model.named_parameters()] == [
        "linear1.weight",
        "linear1.bias",
        "linear2.weight",
        "linear2.bias",
        "output.weight",
        "output.bias",
    ]


def test_mlp_without_hidden_layers_is_linear():
    model = mlp(4, 1, hidden=())
    assert len(model) == 1 and isinstance(model[0], nn.Linear)
    assert n_params(model) == 5


def test_mlp_batch_norm_and_dropout_layers():
    model = mlp(6, 3, hidden=(8,), dropout=0.5, batch_norm=True)
    kinds = [type(m) for m in model]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Dropout, nn.Linear]
    assert model.linear1.bias is None  # the norm's shift replaces it
    assert n_params(model) == 6 * 8 + 2 * 8 + 8 * 3 + 3
    model.eval()
    x = torch.randn(4, 6)
    torch.testing.assert_close(model(x), model(x))  # dropout off in eval mode


def test_mlp_seed_is_reproducible_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    a = mlp(3, 2, hidden=(5,), seed=7)
    b = mlp(3, 2, hidden=(5,), seed=7)
    assert torch.rand(1) == expected
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb)
    c = mlp(3, 2, hidden=(5,), seed=8)
    assert not torch.equal(a.linear1.weight, c.linear1.weight)


def test_mlp_spec_rebuilds_the_architecture():
    model = mlp(4, 2, hidden=(6, 6), activation="gelu", dropout=0.1)
    again = mlp(**model.spec)
    assert str(again) == str(model)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"in_features": 0}, r"mlp: in_features must be an integer >= 1; got 0"),
        ({"out_features": 2.5}, r"mlp: out_features must be an integer >= 1; got 2\.5"),
        (
            {"hidden": 64},
            r"mlp: hidden must be a sequence of layer widths; got 64 — pass e\.g\. hidden=\(64,\)",
        ),
        ({"hidden": (32, 0)}, r"mlp: hidden must be an integer >= 1; got 0"),
        (
            {"activation": "rellu"},
            r"mlp: activation must be one of .*got 'rellu' — did you mean 'relu'",
        ),
        ({"dropout": 1.0}, r"mlp: dropout must be in \[0, 1\); got 1\.0"),
        ({"batch_norm": "yes"}, r"mlp: batch_norm must be True or False; got 'yes'"),
        ({"in_features": True}, r"in_features must be an integer >= 1; got True"),
    ],
)
def test_mlp_refuses_bad_arguments(kwargs, pattern):
    args = {"in_features": 4, "out_features": 2, **kwargs}
    with pytest.raises(ConfigError, match=pattern):
        mlp(**args)


def test_default_hidden_rule():
    assert default_hidden(150, 4, 3) == (64, 64)  # floor of 64
    assert default_hidden(1797, 64, 10) == (128, 128)  # 2 * 64 features
    assert default_hidden(100_000, 20, 1) == (512, 512)  # sqrt(100k) = 316 → 512
    assert default_hidden(10**9, 5000, 1) == (512, 512)  # ceiling
    assert default_hidden(1000, 3, 200) == (512, 512)  # 2 * 200 outputs → 512
    # Classification: one hidden layer twice as wide.
    assert default_hidden(150, 4, 3, classification=True) == (128,)
    assert default_hidden(1797, 64, 10, classification=True) == (256,)
    assert default_hidden(10**9, 5000, 2, classification=True) == (1024,)
    with pytest.raises(
        ConfigError, match=r"default_hidden: n_samples must be an integer >= 1; got 0"
    ):
        default_hidden(0, 4, 1)


def test_describe_model_lists_layers_and_parameter_count():
    text = describe_model(mlp(4, 3, hidden=(8,), batch_norm=True))
    lines = text.splitlines()
    assert lines[0] == "Sequential: 4 → 8 → 3, relu, batch norm"
    assert (
        "linear1" in lines[1] and "Linear(4 → 8, no bias)" in lines[1] and lines[1].endswith("32")
    )
    assert lines[-1] == "75 parameters (75 trainable)"
    frozen = nn.Linear(3, 2)
    frozen.bias.requires_grad_(False)
    assert describe_model(frozen).splitlines()[-1] == "8 parameters (6 trainable)"


def test_mlp_seed_out_of_torch_range_is_refused_and_numpy_seeds_work():
    import numpy as np

    with pytest.raises(ConfigError, match=r"seed must be an integer in \[0, 2\*\*63\)"):
        mlp(3, 2, hidden=(5,), seed=2**64)
    a, b = mlp(3, 2, hidden=(5,), seed=np.int64(7)), mlp(3, 2, hidden=(5,), seed=7)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


def test_numpy_numbers_are_taken_as_sizes_and_rates():
    """np.int64 widths (y.max() + 1, an array's shape) were refused as 'must be an integer >= 1;
    got 3', and an np.float32 dropout as 'must be in [0, 1); got 0.1'."""
    import numpy as np

    y = np.array([0, 1, 2, 1])
    model = mlp(np.int64(4), y.max() + 1, hidden=[np.int64(8)], dropout=np.float32(0.5), seed=0)
    assert model(torch.randn(2, 4)).shape == (2, 3)
    assert model.spec["out_features"] == 3 and type(model.spec["out_features"]) is int
    assert model.spec["hidden"] == (8,) and model.spec["dropout"] == 0.5
    assert default_hidden(np.int64(150), np.int64(4), np.int64(3)) == default_hidden(150, 4, 3)
