"""The bottleneck adapter (Pfeiffer et al. 2020) that :mod:`e2vpt.methods.adapter` puts
after every block's MLP: down → activation → up, with a residual. The up projection
starts at zero, so the wrapped model starts as the backbone."""

from __future__ import annotations

import torch
from torch import nn


def activation_module(name: str) -> nn.Module:
    """``relu`` → ``nn.ReLU()``: torch's activation of that name (the adapter config
    says which names it takes)."""
    found = [getattr(nn, n) for n in dir(nn) if n.lower() == name.lower()]
    if not found:
        raise ValueError(f"torch.nn has no activation {name!r}")
    return found[0]()


class Bottleneck(nn.Module):
    def __init__(self, width: int, hidden: int, activation: str) -> None:
        super().__init__()
        self.down = nn.Linear(width, hidden)
        self.act = activation_module(activation)
        self.up = nn.Linear(hidden, width)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.act(self.down(x)))


class MLPWithAdapter(nn.Module):
    """A block's own MLP, then the adapter on its output (the block adds the residual
    of the MLP branch as before)."""

    def __init__(self, mlp: nn.Module, adapter: Bottleneck) -> None:
        super().__init__()
        self.mlp, self.adapter = mlp, adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.mlp(x))
