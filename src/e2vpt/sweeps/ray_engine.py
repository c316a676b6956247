"""Sweeps on a Ray cluster: every trial a Ray Tune trial, optional ASHA early stopping.

Trials are the same plain data the in-process engine runs, executed by the same
``run_trial``, so results land in the same ``trial.json`` files (the run folders must
be on a filesystem every node sees: a local disk for a one-machine cluster, NFS or
similar for several). Resuming is the sweep's own: finished trials are never sent to
Ray again. ASHA (only ever on grid trials) compares trials by validation top-1 after
each epoch and stops the laggards; a stopped trial is recorded as such and never
selected. Ray is an optional extra: ``pip install e2vpt[ray]``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from e2vpt.methods.base import ConfigError
from e2vpt.reporting import write_json
from e2vpt.runs import TRIAL_RECORD_FILE
from e2vpt.sweeps.runner import Trial, finished, run_trial, task_for_worker
from e2vpt.sweeps.settings import RaySettings


def _import_ray() -> Any:
    # Under `uv run`, Ray would rebuild the driver's environment in every worker (minutes
    # per worker); workers use this interpreter instead. Read by Ray at import.
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    try:
        import ray
    except ImportError as err:
        raise ConfigError(
            "`engine` ray needs Ray Tune: pip install 'e2vpt[ray]' (or uv sync --extra ray)"
        ) from err
    return ray


def _report(epoch: int, train_loss: float, val_top1: float | None) -> None:
    from ray import tune

    tune.report({"epoch": epoch, "train_loss": train_loss, "val_top1": val_top1 or 0.0})


def ray_trial(config: dict[str, Any]) -> None:
    """What a Ray Tune trial runs: one e2vpt trial, reporting every epoch. The last
    epoch is reported only once the trial's files are written: a scheduler that stops
    the trial at that report must not cut off its checkpoint and ``trial.json``."""
    trial = Trial(**config["trial"])
    epochs = int(trial.config["epochs"])

    def on_epoch(row: dict[str, Any]) -> None:
        if row["epoch"] < epochs:
            _report(row["epoch"], row["train_loss"], row.get("val_top1"))

    record = run_trial(trial, task=task_for_worker(trial.config), on_epoch=on_epoch)
    if record.get("diverged"):
        _report(epochs, float("inf"), 0.0)
    else:
        _report(epochs, 0.0, record.get("val_top1"))


class RayEngine:
    """Runs a batch of trials as one Ray Tune experiment and yields their records."""

    def __init__(self, settings: RaySettings, storage: str | Path, epochs: int) -> None:
        self.settings = settings
        self.storage = Path(storage).resolve()
        self.epochs = epochs
        _import_ray()

    def _connect(self) -> Any:
        ray = _import_ray()
        if not ray.is_initialized():
            ray.init(address=self.settings.address, log_to_driver=False, include_dashboard=False)
        return ray

    def _resources(self, ray: Any) -> dict[str, float]:
        gpus = self.settings.gpus_per_trial
        if gpus is None:
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        return {"cpu": self.settings.cpus_per_trial, "gpu": gpus}

    def _scheduler(self, trials: Sequence[Trial]) -> Any:
        if not self.settings.asha or any(t.kind != "grid" for t in trials):
            return None
        from ray.tune.schedulers import ASHAScheduler

        return ASHAScheduler(
            time_attr="training_iteration",
            metric="val_top1",
            mode="max",
            max_t=self.epochs,
            grace_period=self.settings.asha_grace_period,
            reduction_factor=self.settings.asha_reduction_factor,
        )

    def run(self, trials: Sequence[Trial]) -> Iterator[dict[str, Any]]:
        if not trials:
            return
        ray = self._connect()
        from ray import tune

        quiet = [{**t.to_dict(), "config": {**t.config, "progress": False}} for t in trials]
        tuner = tune.Tuner(
            tune.with_resources(ray_trial, self._resources(ray)),
            param_space={"trial": tune.grid_search(quiet)},
            tune_config=tune.TuneConfig(
                scheduler=self._scheduler(trials),
                max_concurrent_trials=self.settings.max_concurrent_trials,
            ),
            run_config=tune.RunConfig(
                name=f"{trials[0].kind}-{os.getpid()}",
                storage_path=str(self.storage),
                verbose=0,
            ),
        )
        outcome = {result.config["trial"]["label"]: result for result in tuner.fit()}
        errors = []
        for trial in trials:
            record = finished(trial)
            result = outcome.get(trial.label)
            if record is None and result is not None and result.error is not None:
                errors.append(f"{trial.label}: {result.error}")
                continue
            if record is None:  # stopped by ASHA before its last epoch
                metrics = result.metrics if result is not None else {}
                record = {
                    "key": trial.key(),
                    **trial.to_dict(),
                    "diverged": False,
                    "stopped_early": True,
                    "stopped_after_epochs": metrics.get("training_iteration"),
                    "val_top1": None,  # not comparable with full-length trials
                    "last_val_top1": metrics.get("val_top1"),
                    "test_top1": None,
                }
                Path(trial.run_dir).mkdir(parents=True, exist_ok=True)
                write_json(Path(trial.run_dir) / TRIAL_RECORD_FILE, record)
            yield record
        if errors:
            raise RuntimeError(
                "Ray trials failed (rerun the sweep to retry them; finished trials are kept): "
                + "; ".join(errors)
            )
