"""The hidden layers of the MLP-k head (:mod:`e2vpt.methods.mlp`), between the pooled
features and the model's own head."""

from __future__ import annotations

from torch import nn


def mlp_pre_head(width: int, layers: int) -> nn.Sequential:
    """``layers`` − 1 Linear + ReLU pairs that keep the feature ``width`` (the last of
    the k layers is the head itself); empty for k = 1."""
    hidden: list[nn.Module] = []
    for _ in range(layers - 1):
        hidden += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*hidden)
