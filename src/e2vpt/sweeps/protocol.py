"""The papers' protocol for one task × method: an lr × weight-decay grid
trained on ``train`` (VTAB's train800) and scored on ``val`` (val200) at the last epoch;
the best point (ties → smaller lr, then larger weight decay) is retrained on
``trainval`` (train800val200) with each final seed and scored on ``test``;
mean ± sample std over seeds. With ``prune`` (E²VPT), the pruning search runs on the
selected grid point (fractions picked on val), then every final seed's run is pruned at
those fractions and rewound on trainval.

Layout: ``OUT/<task>/<method>/{grid/lr…_wd…, final/seed…, prune/, final_pruned/seed…}``
and ``sweep.json`` + ``sweep.md`` (rewritten atomically after every trial). Every trial's
``trial.json`` is written last, so a sweep killed at any moment resumes where it stopped."""

from __future__ import annotations

import dataclasses
import statistics
from typing import Any

from e2vpt.data import TRAINVAL, Task
from e2vpt.errors import SweepError
from e2vpt.files import atomic_write_text
from e2vpt.methods.base import ConfigError
from e2vpt.notices import note
from e2vpt.progressbars import progress_bar
from e2vpt.pruning.search import prune_run
from e2vpt.reporting import format_table, write_json
from e2vpt.runs import PRUNING_REPORT_NAME, SWEEP_MARKDOWN_FILE, SWEEP_SUMMARY_FILE, absolute
from e2vpt.sweeps.ray_engine import RayEngine
from e2vpt.sweeps.runner import Engine, InProcessEngine, ProcessPoolEngine, Trial, finished
from e2vpt.sweeps.settings import (  # noqa: F401 (the old home of these names)
    ADAMW_BASE_LRS,
    SPEC_BASE_LRS,
    SPEC_SEEDS,
    SPEC_WEIGHT_DECAYS,
    RaySettings,
    SweepSettings,
)
from e2vpt.training.config import TrainConfig

PRUNED_SUFFIX = "-pruned"


def select_grid_point(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Best val top-1 at the last epoch; ties → smaller lr, then larger weight decay."""
    usable = [r for r in records if not r["diverged"] and r.get("val_top1") is not None]
    if not usable:
        raise SweepError("every grid point diverged or has no val score; try smaller --base-lrs")
    return min(
        usable,
        key=lambda r: (-r["val_top1"], r["extra"]["base_lr"], -r["extra"]["weight_decay"]),
    )


def seed_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    ok = sorted((r for r in records if not r["diverged"]), key=lambda r: r["extra"]["seed"])
    scores = [100 * r["test_top1"] for r in ok]
    params = ok[0]["parameters"] if ok else {}
    return {
        "seeds": [r["extra"]["seed"] for r in ok],
        "test_top1": scores,
        "test_top1_mean": statistics.fmean(scores) if scores else None,
        "test_top1_std": statistics.stdev(scores) if len(scores) > 1 else 0.0 if scores else None,
        "diverged_seeds": [r["extra"]["seed"] for r in records if r["diverged"]],
        "tunable_params": params.get("tunable"),
        "tunable_without_head": params.get("tunable_without_head"),
        "tunable_percent": params.get("percent"),
        "backbone_params": params.get("backbone"),
        "train_seconds": sum(r.get("train_seconds") or 0.0 for r in ok),
    }


def _check_task(task: Task) -> None:
    missing = [s for s in ("train", "val", TRAINVAL, "test") if not task.has_split(s)]
    if missing:
        raise ConfigError(
            f"task {task.name!r} lacks split(s) {missing} (has {sorted(task.splits)}); a sweep "
            "selects on train/val and reports trainval → test"
        )


class Sweep:
    """One task × method; ``run()`` does (or resumes) all of it."""

    def __init__(self, cfg: TrainConfig, settings: SweepSettings, task: Task | None = None):
        cfg.validate()
        settings.validate(cfg)
        # paths absolute before any trial exists: a worker whose working directory is
        # not ours (a Ray trial's) must read the data and write the run where we would
        self.cfg = dataclasses.replace(
            cfg.with_absolute_paths(), compare_linear=False, progress=settings.progress
        )
        self.settings = settings
        if task is None:
            from e2vpt.training.trainer import load_task_for

            task = load_task_for(self.cfg)
        _check_task(task)
        self.task = task
        resolved = self.cfg.resolve()
        self.method_cfg = resolved.method
        self.method = self.method_cfg.method_name
        self.task_name = settings.task_name or task.name
        self.root = absolute(settings.output_dir) / self.task_name / self.method
        self.optimizer = resolved.optimizer
        self.lrs, self.wds = settings.grid(self.optimizer)
        self.engine: Engine | RayEngine
        if settings.engine == "ray":
            self.engine = RayEngine(settings.ray, self.root / "ray", self.cfg.epochs)
        elif settings.devices:
            self.engine = ProcessPoolEngine(settings.devices)
        else:
            self.engine = InProcessEngine(task)
        self.records: dict[str, dict[str, dict[str, Any]]] = {
            "grid": {},
            "final": {},
            "final-pruned": {},
        }
        self.prune_search: dict[str, Any] | None = None

    # -- trials -------------------------------------------------------------------
    def _config(self, **changes: Any) -> dict[str, Any]:
        return dataclasses.replace(self.cfg, **changes).to_dict()

    def grid_trials(self) -> list[Trial]:
        return [
            Trial(
                kind="grid",
                label=f"lr{lr:g}_wd{wd:g}",
                run_dir=str(self.root / "grid" / f"lr{lr:g}_wd{wd:g}"),
                config=self._config(
                    base_lr=lr,
                    weight_decay=wd,
                    train_split="train",
                    val_split="val",
                    eval_split=None,
                    output_dir=str(self.root / "grid" / f"lr{lr:g}_wd{wd:g}"),
                ),
                # a backbone-sized checkpoint (full fine-tuning): kept for finals only
                save_checkpoint=not self.method_cfg.large_checkpoint,
                extra={"base_lr": lr, "weight_decay": wd},
            )
            for lr in self.lrs
            for wd in self.wds
        ]

    def final_trials(self, selected: dict[str, Any]) -> list[Trial]:
        lr, wd = selected["extra"]["base_lr"], selected["extra"]["weight_decay"]
        trials = []
        for seed in self.settings.seeds:
            run_dir = str(self.root / "final" / f"seed{seed}")
            trials.append(
                Trial(
                    kind="final",
                    label=f"seed{seed}",
                    run_dir=run_dir,
                    config=self._config(
                        base_lr=lr,
                        weight_decay=wd,
                        seed=seed,
                        train_split=TRAINVAL,
                        val_split=None,
                        eval_split="test",
                        output_dir=run_dir,
                    ),
                    extra={"base_lr": lr, "weight_decay": wd, "seed": seed},
                )
            )
        return trials

    def pruned_trials(self, finals: list[Trial], plan: dict[str, Any]) -> list[Trial]:
        pruning = self.settings.pruning(self.cfg)
        return [
            Trial(
                kind="final-pruned",
                label=t.label,
                run_dir=str(self.root / "final_pruned" / t.label),
                config=t.config,
                prune={
                    "source": t.run_dir,
                    "token_fraction": plan["token_fraction"],
                    "segment_fraction": plan["segment_fraction"],
                    "score": pruning.score,
                    "prune_mode": pruning.prune_mode,
                },
                extra=t.extra,
            )
            for t in finals
        ]

    def _run(self, trials: list[Trial], desc: str) -> list[dict[str, Any]]:
        done = {t.label: r for t in trials if (r := finished(t)) is not None}
        todo = [t for t in trials if t.label not in done]
        store = self.records[trials[0].kind] if trials else {}
        store.update(done)
        if done:
            note(f"{desc}: {len(done)} of {len(trials)} trials done earlier, reused", once=False)
        bar = progress_bar(
            total=len(trials),
            initial=len(done),
            desc=f"{self.task_name}/{self.method} {desc}",
            unit="trial",
            show=self.settings.progress,
            every=1,  # in a log file: a line per trial
            position=0,
        )
        for record in self.engine.run(todo):
            store[record["label"]] = record
            bar.update(1)
            self.write_summary(status="running")
        bar.close()
        return [store[t.label] for t in trials]

    # -- the protocol ------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        self.root.mkdir(parents=True, exist_ok=True)
        grid = self._run(self.grid_trials(), "grid")
        selected = select_grid_point(grid)
        finals = self.final_trials(selected)
        self._run(finals, "final seeds")
        if self.settings.prune:
            report = prune_run(
                selected["run_dir"],
                self.settings.prune_settings(output_dir=str(self.root / "prune")),
                task=self.task,
            )
            self.prune_search = {
                "token_fraction": report.selected["plan"]["token_fraction"],
                "segment_fraction": report.selected["plan"]["segment_fraction"],
                "val_top1": report.selected["val_top1"],
                "tokens_kept": report.selected["tokens_kept"],
                "prompt_values": report.selected["prompt_values"],
                "report": str(report.output_dir / f"{PRUNING_REPORT_NAME}.md"),
            }
            self._run(self.pruned_trials(finals, report.selected["plan"]), "pruned finals")
        return self.write_summary(status="complete")

    # -- results -----------------------------------------------------------------
    def summary(self, status: str) -> dict[str, Any]:
        grid = list(self.records["grid"].values())
        compact = [
            {
                "base_lr": r["extra"]["base_lr"],
                "weight_decay": r["extra"]["weight_decay"],
                "val_top1": r.get("val_top1"),
                "diverged": r["diverged"],
                "stopped_early_after": r.get("stopped_after_epochs")
                if r.get("stopped_early")
                else None,
                "train_seconds": r.get("train_seconds"),
            }
            for r in sorted(
                grid, key=lambda r: (r["extra"]["base_lr"], -r["extra"]["weight_decay"])
            )
        ]
        selected = None
        if len(grid) == len(self.lrs) * len(self.wds):
            best = select_grid_point(grid)
            selected = {**best["extra"], "val_top1": best["val_top1"]}
        results = []
        if self.records["final"]:
            results.append(
                {"method": self.method, **seed_summary(list(self.records["final"].values()))}
            )
        if self.records["final-pruned"]:
            pruned = list(self.records["final-pruned"].values())
            results.append(
                {
                    "method": self.method + PRUNED_SUFFIX,
                    **seed_summary(pruned),
                    "pruning": self.prune_search,
                    "prompt_values": pruned[0].get("prompt_values"),
                }
            )
        return {
            "status": status,
            "task": self.task_name,
            "data": self.cfg.data,
            "group": self.settings.group or self.task.group,
            "metric": self.task.metric,
            "num_classes": self.task.num_classes,
            "backbone": self.cfg.backbone,
            "method": self.method,
            "method_config": self.cfg.method_config,
            "optimizer": self.optimizer,
            "epochs": self.cfg.epochs,
            "batch_size": self.cfg.batch_size,
            "grid": {"base_lrs": self.lrs, "weight_decays": self.wds, "trials": compact},
            "selected": selected,
            "seeds": self.settings.seeds,
            "results": results,
        }

    def write_summary(self, status: str) -> dict[str, Any]:
        summary = self.summary(status)
        write_json(self.root / SWEEP_SUMMARY_FILE, summary)
        atomic_write_text(self.root / SWEEP_MARKDOWN_FILE, sweep_markdown(summary))
        return summary


def sweep_markdown(summary: dict[str, Any]) -> str:
    grid = [
        {
            "base lr": f"{t['base_lr']:g}",
            "weight decay": f"{t['weight_decay']:g}",
            "val top-1 %": None if t["val_top1"] is None else 100 * t["val_top1"],
            "note": "diverged"
            if t["diverged"]
            else f"stopped by ASHA after {t['stopped_early_after']} epoch(s)"
            if t.get("stopped_early_after")
            else "",
        }
        for t in summary["grid"]["trials"]
    ]
    finals = [
        {
            "method": r["method"],
            "seeds": len(r["seeds"]),
            "test top-1 % (mean)": r["test_top1_mean"],
            "std": r["test_top1_std"],
            "tunable params": r["tunable_params"],
            "% of backbone": r["tunable_percent"],
        }
        for r in summary["results"]
    ]
    sel = summary["selected"]
    chosen = (
        f"Selected: base lr {sel['base_lr']:g}, weight decay {sel['weight_decay']:g} "
        f"(val {100 * sel['val_top1']:.2f} %)."
        if sel
        else "Grid not finished."
    )
    return (
        f"# Sweep: {summary['task']} × {summary['method']} ({summary['status']})\n\n"
        f"## Grid (train → val, last epoch)\n\n{format_table(grid)}\n\n{chosen}\n\n"
        f"## Final seeds (trainval → test)\n\n{format_table(finals)}\n"
    )


def run_sweep(cfg: TrainConfig, settings: SweepSettings, task: Task | None = None) -> dict:
    return Sweep(cfg, settings, task).run()
