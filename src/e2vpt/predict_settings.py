"""How a :class:`~e2vpt.predict.Predictor` classifies images (every field is a flag of
``e2vpt predict``). Torch-free, so the command line builds its flags without importing
the model code."""

from __future__ import annotations

from dataclasses import dataclass

from e2vpt.devices import DEVICE_CHOICES
from e2vpt.errors import ConfigError
from e2vpt.settings import setting

PRECISIONS = ("fp32", "bf16", "auto")


@dataclass(frozen=True)
class PredictSettings:
    top_k: int = setting(5, "classes per image")
    batch_size: int = setting(64, "images per forward")
    device: str = setting("auto", DEVICE_CHOICES)
    precision: str = setting("fp32", " | ".join(PRECISIONS), choices=PRECISIONS)
    weights: str | None = setting(
        None,
        "the backbone's weights file, when the path the run stored does not hold it here "
        "(a run made on another machine)",
    )

    def validate(self) -> None:
        """Bounds first, before a model is loaded."""
        if self.top_k < 1:
            raise ConfigError(f"`top_k` must be >= 1, got {self.top_k}")
        if self.batch_size < 1:
            raise ConfigError(f"`batch_size` must be >= 1, got {self.batch_size}")
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"`precision` must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"
            )
