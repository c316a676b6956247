"""What a sweep is told, torch-free: the papers' grids and seeds, :class:`SweepSettings`
and the Ray engine's :class:`RaySettings`. ``e2vpt sweep`` builds its flags from these
before torch is imported; :mod:`e2vpt.sweeps.protocol` runs them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from e2vpt.errors import ConfigError
from e2vpt.pruning.settings import PruneSettings, ResolvedPruning

if TYPE_CHECKING:
    from e2vpt.training.config import TrainConfig

SPEC_BASE_LRS = [50.0, 25.0, 10.0, 5.0, 2.5, 1.0, 0.5, 0.25, 0.1, 0.05]
SPEC_WEIGHT_DECAYS = [0.01, 1e-3, 1e-4, 0.0]
# full fine-tuning trains with AdamW, whose useful lrs are ~1000× smaller than SGD's
ADAMW_BASE_LRS = [5e-3, 1e-3, 5e-4, 1e-4]
SPEC_SEEDS = [42, 44, 82, 100, 800]


@dataclass
class RaySettings:
    address: str | None = None  # None: start a local Ray instance; "auto": the running cluster
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None  # None: 1 where the cluster has GPUs, else 0
    max_concurrent_trials: int | None = None  # None: as many as the resources allow
    asha: bool = False  # early stopping of grid trials by val top-1
    asha_grace_period: int = 1  # epochs every grid trial runs before it can be stopped
    asha_reduction_factor: float = 2.0  # keep the top 1/factor at every rung


@dataclass
class SweepSettings:
    base_lrs: list[float] | None = None  # None: the papers' grid (SGD) or ADAMW_BASE_LRS
    weight_decays: list[float] | None = None  # None: the papers' {0.01, 1e-3, 1e-4, 0}
    seeds: list[int] = field(default_factory=lambda: list(SPEC_SEEDS))
    output_dir: str = "runs/sweeps"
    devices: list[str] | None = None  # one worker process per device; None: in-process
    engine: str = "local"  # local (in-process, or --devices workers) | ray
    ray: RaySettings = field(default_factory=RaySettings)  # --engine ray only
    task_name: str | None = None  # folder / report name; None: the task's own
    group: str | None = None  # report group; None: the task's own (VTAB group, fgvc, …)
    prune: bool = False  # E²VPT: also the pruned model (search on val, then pruned finals)
    prune_token_fractions: list[float] | None = None  # None: the recipe's grid
    prune_segment_fractions: list[float] | None = None  # None: the recipe's grid
    prune_score: str | None = None  # None: the recipe's importance score
    prune_mode: str | None = None  # remove | zero; None: the recipe's
    progress: bool = True

    def validate(self, cfg: TrainConfig) -> None:
        for name in ("base_lrs", "weight_decays", "seeds"):
            values = getattr(self, name)
            if values is not None and not values:
                raise ConfigError(f"--{name.replace('_', '-')} needs at least one value")
        if self.base_lrs is not None and min(self.base_lrs) <= 0:
            raise ConfigError(f"every base lr must be > 0, got {self.base_lrs}")
        if self.weight_decays is not None and min(self.weight_decays) < 0:
            raise ConfigError(f"every weight decay must be >= 0, got {self.weight_decays}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"`seeds` repeats a seed: {self.seeds}")
        if self.prune and cfg.build_method_config().method_name != "e2vpt":
            raise ConfigError("`prune` applies to `method` e2vpt only")
        if self.prune:
            self.pruning(cfg)  # a pruning setting the recipe contradicts fails before any work
        if self.engine not in ("local", "ray"):
            raise ConfigError(f"unknown --engine {self.engine!r}; choose local or ray")
        if self.engine == "ray" and self.devices:
            raise ConfigError("`devices` is for the local `engine`; Ray places trials itself")
        if self.ray.asha and self.engine != "ray":
            raise ConfigError("`asha` needs `engine` ray")
        if self.ray.asha and not 1 <= self.ray.asha_grace_period <= cfg.epochs:
            raise ConfigError(
                f"`asha_grace_period` must be between 1 and `epochs` ({cfg.epochs}), "
                f"got {self.ray.asha_grace_period}"
            )
        if self.ray.asha_reduction_factor <= 1:
            raise ConfigError("`asha_reduction_factor` must be > 1")

    def prune_settings(self, output_dir: str | None = None) -> PruneSettings:
        return PruneSettings(
            token_fractions=self.prune_token_fractions,
            segment_fractions=self.prune_segment_fractions,
            score=self.prune_score,
            prune_mode=self.prune_mode,
            output_dir=output_dir,
            progress=self.progress,
        )

    def pruning(self, cfg: TrainConfig) -> ResolvedPruning:
        return self.prune_settings().resolve(cfg.recipe, setting_prefix="prune_")

    def grid(self, optimizer: str) -> tuple[list[float], list[float]]:
        lrs = self.base_lrs or (ADAMW_BASE_LRS if optimizer == "adamw" else SPEC_BASE_LRS)
        return list(lrs), list(self.weight_decays or SPEC_WEIGHT_DECAYS)
