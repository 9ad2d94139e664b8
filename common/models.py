"""Models shared by server and sites. All pass Opacus' ModuleValidator (no BatchNorm)."""

from __future__ import annotations

from torch import nn

from fedward.common.errors import ConfigError


class LogisticRegression(nn.Module):
    """Linear softmax classifier: the least noise-sensitive model under DP-SGD."""

    def __init__(self, num_features: int, num_classes: int = 2) -> None:
        super().__init__()
        self.linear = nn.Linear(num_features, num_classes)

    def forward(self, x):
        return self.linear(x)


class TabularMLP(nn.Module):
    """Small two-layer perceptron for lab data."""

    def __init__(self, num_features: int, num_classes: int = 2, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(num_features, hidden), nn.Tanh(), nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.net(x)


TABULAR_MODELS = ("logreg", "mlp")


def build_tabular_model(name: str, num_features: int, num_classes: int = 2):
    """A tabular model by name: `logreg` or `mlp`."""
    if name == "logreg":
        return LogisticRegression(num_features, num_classes)
    if name == "mlp":
        return TabularMLP(num_features, num_classes)
    raise ConfigError(f"unknown model {name!r} for tabular data; expected one of {TABULAR_MODELS}")
