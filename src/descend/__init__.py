"""descend — optimize the loss.

Give it a model (any ``torch.nn.Module`` or a plain function of tensors), data and a loss; it
finds the parameters that minimize the loss with backpropagation and the gradient-descent
family, choosing its own learning rate and schedule unless told otherwise.

>>> import torch, descend
>>> X = torch.randn(512, 4); y = X.sum(1)
>>> result = descend.fit(torch.nn.Linear(4, 1), (X, y), "mse", epochs=3, verbose=0, seed=0)
>>> result.stop_reason in descend.StopReason
True
"""

from descend import (
    checkpoint,
    data,
    datasets,
    distributed,
    losses,
    models,
    optim,
    schedules,
    tabular,
    transforms,
)
from descend._errors import CheckpointError, ConfigError, DescendError, InputError
from descend.minimize import minimize
from descend.train import Callback, History, Result, StopReason, fit

__version__ = "0.1.0"


def __getattr__(name: str):
    # scikit-learn estimators load lazily: `import descend` stays light.
    if name in ("Classifier", "Regressor"):
        from descend import sklearn as _sk

        return getattr(_sk, name)
    if name == "lr_find":
        from descend.train.lr_find import lr_find

        return lr_find
    raise AttributeError(f"module 'descend' has no attribute {name!r}")


__all__ = [
    "Callback",
    "CheckpointError",
    "ConfigError",
    "DescendError",
    "History",
    "InputError",
    "Result",
    "StopReason",
    "__version__",
    "checkpoint",
    "data",
    "datasets",
    "distributed",
    "fit",
    "losses",
    "minimize",
    "models",
    "optim",
    "schedules",
    "tabular",
    "transforms",
]
