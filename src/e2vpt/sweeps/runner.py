"""Trials and the engines that run them.

A trial is plain data (a TrainConfig dict, plus a pruning step for pruned finals) and
``run_trial`` is a pure function of it that writes one run folder and, last, its
``trial.json``. Engines only decide *where* trials run: in this process, or one worker
process per GPU of this machine. A cluster engine (Ray) can reuse ``run_trial`` as is."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from e2vpt.data import Task
from e2vpt.errors import DivergedError
from e2vpt.reporting import write_json
from e2vpt.runs import TRIAL_RECORD_FILE, read_record, read_results
from e2vpt.training.config import RUNTIME_FIELDS, TrainConfig

# runtime fields change where, how fast or how visibly a trial runs, not what it
# computes. Keeping them out of its key also means trials finished before such a lever
# existed are still recognised as finished.
_NOT_IN_KEY = RUNTIME_FIELDS
# fields added later whose default means "as before the field existed": left out of the
# key at that value, so trials finished earlier are still recognised as finished
_NEUTRAL_DEFAULTS: dict[str, Any] = {"val_fraction": None}


@dataclass
class Trial:
    kind: str  # grid | final | final-pruned
    label: str  # lr0.1_wd0.0001 | seed42
    run_dir: str
    config: dict[str, Any]  # TrainConfig fields
    save_checkpoint: bool = True
    prune: dict[str, Any] | None = None  # final-pruned: source run + fractions + score
    extra: dict[str, Any] = field(default_factory=dict)  # lr, wd, seed: for the tables

    def key(self) -> str:
        """What the trial computes; a finished trial with another key is redone."""
        config = {
            k: v
            for k, v in self.config.items()
            if k not in _NOT_IN_KEY and not (k in _NEUTRAL_DEFAULTS and v == _NEUTRAL_DEFAULTS[k])
        }
        prune = None
        if self.prune is not None:
            prune = {k: v for k, v in self.prune.items() if k != "source"}
        blob = json.dumps([self.kind, config, prune, self.save_checkpoint], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def finished(trial: Trial) -> dict[str, Any] | None:
    """The trial's record if it completed with the same key; None means run it. The
    record's ``run_dir`` is the trial's own (a sweep written before run dirs were stored
    absolute kept them relative to the working directory of the time)."""
    record = read_record(Path(trial.run_dir) / TRIAL_RECORD_FILE)
    if record is None or record.get("key") != trial.key():
        return None
    return {**record, "run_dir": trial.run_dir}


def run_trial(
    trial: Trial,
    task: Task | None = None,
    device: str | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> dict:
    """Run one trial and return its record (written to ``trial.json`` last, atomically).
    A diverged run is a result, not a crash: it is recorded and never selected."""
    from e2vpt.pruning.search import PruneSettings, prune_fixed
    from e2vpt.training.trainer import train

    out = Path(trial.run_dir)
    record: dict[str, Any] = {"key": trial.key(), **trial.to_dict(), "diverged": False}
    try:
        if trial.prune is None:
            config = {**trial.config, "output_dir": str(out)}
            if device is not None:
                config["device"] = device
            cfg = TrainConfig.from_dict(config)
            result = train(
                cfg,
                task=task,
                save_checkpoint=trial.save_checkpoint,
                on_epoch=on_epoch,
                existing="continue",  # a trial stopped mid-way resumes from its last epoch
            )
            val, test, seconds = result.val_top1, result.eval_top1, result.train_seconds
        else:
            point = prune_fixed(
                trial.prune["source"],
                trial.prune["token_fraction"],
                trial.prune["segment_fraction"],
                out,
                task=task,
                settings=PruneSettings(
                    score=trial.prune["score"],
                    prune_mode=trial.prune.get("prune_mode"),
                    progress=bool(trial.config.get("progress", True)),
                    device=device,
                ),
            )
            val, test, seconds = point["val_top1"], point["eval_top1"], point["train_seconds"]
            record["prompt_values"] = point["prompt_values"]
    except DivergedError as err:
        record.update(diverged=True, error=str(err), val_top1=None, test_top1=None)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / TRIAL_RECORD_FILE, record)
        return record
    results = read_results(out)
    record.update(
        val_top1=val,
        test_top1=test,
        train_seconds=seconds,
        parameters=results.get("parameters", {}),
    )
    write_json(out / TRIAL_RECORD_FILE, record)
    return record


class InProcessEngine:
    """Trials one after another in this process, sharing the already-loaded task."""

    def __init__(self, task: Task | None = None) -> None:
        self.task = task

    def run(self, trials: Sequence[Trial]) -> Iterator[dict[str, Any]]:
        for trial in trials:
            yield run_trial(trial, task=self.task)


_worker_device: str | None = None
_worker_tasks: dict[str, Task] = {}


def _init_worker(devices: multiprocessing.Queue) -> None:
    global _worker_device
    _worker_device = devices.get()
    if _worker_device.startswith("cuda"):
        import torch

        torch.cuda.set_device(torch.device(_worker_device))


def task_for_worker(config: dict[str, Any]) -> Task:
    """The trial's task, loaded once per worker process and then shared."""
    from e2vpt.training.trainer import load_task_for

    cfg = TrainConfig.from_dict(config)
    cache_key = json.dumps([cfg.data, cfg.data_seed, cfg.backbone, cfg.weights])
    if cache_key not in _worker_tasks:
        _worker_tasks[cache_key] = load_task_for(cfg)
    return _worker_tasks[cache_key]


def _run_in_worker(trial: Trial) -> dict[str, Any]:
    task = task_for_worker({**trial.config, "device": _worker_device or "auto"})
    return run_trial(trial, task=task, device=_worker_device)


class ProcessPoolEngine:
    """One worker process per device (e.g. ``cuda:0 cuda:1``), each loading the task
    once; trials go to whichever worker is free."""

    def __init__(self, devices: Sequence[str]) -> None:
        if not devices:
            raise ValueError("ProcessPoolEngine needs at least one device")
        self.devices = list(devices)

    def run(self, trials: Sequence[Trial]) -> Iterator[dict[str, Any]]:
        if not trials:
            return
        context = multiprocessing.get_context("spawn")
        queue = context.Queue()
        for device in self.devices:
            queue.put(device)
        with ProcessPoolExecutor(
            max_workers=len(self.devices),
            mp_context=context,
            initializer=_init_worker,
            initargs=(queue,),
        ) as pool:
            futures = [pool.submit(_run_in_worker, t) for t in trials]
            for future in as_completed(futures):
                yield future.result()


Engine = InProcessEngine | ProcessPoolEngine
ProgressCallback = Callable[[dict[str, Any]], None]
