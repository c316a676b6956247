"""``e2vpt report``: every finished sweep under a folder as one table per method —
each task's mean ± std over seeds, each group's mean, the mean of the VTAB group means
(the papers' headline), the plain mean over VTAB-group tasks (the 19-task mean), the
FGVC mean, CIFAR-100-LT as error rates, and tunable parameters — plus a plot of
accuracy against tunable parameters. Optional rows: the papers' published numbers."""

from __future__ import annotations

import io
import json
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2vpt.data.vtab import VTAB_GROUPS, VTAB_TASKS
from e2vpt.errors import SweepError
from e2vpt.files import atomic_write_bytes, atomic_write_text
from e2vpt.methods.base import list_methods, registered_methods
from e2vpt.reporting import format_table, write_csv, write_json
from e2vpt.runs import SWEEP_SUMMARY_FILE
from e2vpt.sweeps.protocol import PRUNED_SUFFIX

GROUP_ORDER = (*VTAB_GROUPS, "fgvc", "cifar100-lt")
HEADLINE = "mean of group means"
TASK_MEAN = "mean of tasks"

ANCHOR_SOURCE = "the VPT / E²VPT papers, ViT-B/16 IN-21k"


def method_order() -> tuple[str, ...]:
    """The registry's order (the papers' tables), each method's pruned row after it."""
    return tuple(n for name in list_methods() for n in (name, name + PRUNED_SUFFIX))


def paper_anchors() -> dict[str, dict[str, float]]:
    """Each method's published top-1 % (VTAB-1k group means, FGVC mean), as it registers."""
    return {s.name: dict(s.paper_anchors) for s in registered_methods() if s.paper_anchors}


@dataclass
class Entry:
    """One method on one task: the final seeds' summary."""

    task: str
    group: str
    metric: str  # top1 | error
    method: str
    mean: float | None  # in the metric's unit (top-1 % or error %)
    std: float | None
    seeds: int
    tunable_params: int | None
    tunable_without_head: int | None
    tunable_percent: float | None
    backbone: str
    status: str
    source: str


def _order(name: str, order: tuple[str, ...]) -> tuple[int, str]:
    return (order.index(name) if name in order else len(order), name)


def collect(runs_dir: str | Path, include_running: bool = False) -> list[Entry]:
    """Every sweep.json under ``runs_dir`` (any depth), one entry per reported method;
    a sweep still running (or killed) only with ``include_running``."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise SweepError(
            f"runs folder {runs_dir} does not exist; pass the --output-dir of `e2vpt sweep`"
        )
    entries = []
    for path in sorted(runs_dir.rglob(SWEEP_SUMMARY_FILE)):
        try:
            summary = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise SweepError(
                f"cannot read sweep results {path}: {err}; rerun that sweep to rewrite it"
            ) from err
        if summary.get("status") != "complete" and not include_running:
            continue
        metric = summary.get("metric", "top1")
        for result in summary.get("results", []):
            mean = result.get("test_top1_mean")
            if mean is not None and metric == "error":
                mean = 100.0 - mean
            entries.append(
                Entry(
                    task=summary["task"],
                    group=summary.get("group") or "other",
                    metric=metric,
                    method=result["method"],
                    mean=mean,
                    std=result.get("test_top1_std"),
                    seeds=len(result.get("seeds", [])),
                    tunable_params=result.get("tunable_params"),
                    tunable_without_head=result.get("tunable_without_head"),
                    tunable_percent=result.get("tunable_percent"),
                    backbone=summary.get("backbone", ""),
                    status=summary.get("status", ""),
                    source=str(path),
                )
            )
    return entries


@dataclass
class Report:
    entries: list[Entry]
    rows: list[dict[str, Any]]  # one per method (numbers); anchors appended when asked
    tasks: list[tuple[str, str, str]]  # (group, task, metric) in column order
    groups: list[str]
    notes: list[str] = field(default_factory=list)  # printed under the table

    def markdown(self) -> str:
        by_backbone = any("backbone" in row for row in self.rows)
        columns = ["method", "backbone"] if by_backbone else ["method"]
        first = len(columns)
        for _, task, metric in self.tasks:
            columns.append(f"{task} (err)" if metric == "error" else task)
        columns += [f"{g} mean" for g in self.groups if g != "cifar100-lt"]
        if any(g in VTAB_GROUPS for g in self.groups):
            columns += [HEADLINE, TASK_MEAN]
        columns += ["tunable params", "% of backbone"]
        table = []
        for row in self.rows:
            cells: dict[str, Any] = {"method": row["method"], "backbone": row.get("backbone", "")}
            for (_, task, _), column in zip(self.tasks, columns[first:], strict=False):
                mean, std = row.get(task), row.get(f"{task} std")
                if mean is None:
                    cells[column] = ""
                else:
                    cells[column] = f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"
            for column in columns[first + len(self.tasks) :]:
                cells[column] = row.get(column)
            table.append(cells)
        text = format_table(table, columns, float_digits=2)
        return "\n\n".join([text, *self.notes]) if self.notes else text

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "tasks": [{"group": g, "task": t, "metric": m} for g, t, m in self.tasks],
            "groups": self.groups,
            "notes": self.notes,
            "entries": [e.__dict__ for e in self.entries],
        }


def partial_vtab_groups(tasks: list[tuple[str, str, str]]) -> list[str]:
    """Warnings for VTAB groups holding only some of VTAB-1k's tasks: their means are not
    comparable with the papers' group means."""
    notes = []
    for group in VTAB_GROUPS:
        present = {t for g, t, _ in tasks if g == group}
        full = [t for t, (g, _) in VTAB_TASKS.items() if g == group]
        if present and present <= set(full) and len(present) < len(full):
            missing = ", ".join(t for t in full if t not in present)
            notes.append(
                f"Note: the {group} mean covers {len(present)} of VTAB-1k's {len(full)} "
                f"{group} tasks (missing: {missing}); the papers' group means cover all."
            )
    return notes


def build_report(
    runs_dir: str | Path,
    anchors: bool = False,
    include_running: bool = False,
    expected_tasks: Mapping[str, str] | None = None,
) -> Report:
    """``expected_tasks`` (task → group): tasks that belong in the table even before
    their sweeps finish — a group's mean waits for all of them."""
    entries = collect(runs_dir, include_running)
    found = {(e.group, e.task, e.metric) for e in entries}
    seen = {t for _, t, _ in found}
    found |= {(g, t, "top1") for t, g in (expected_tasks or {}).items() if t not in seen}
    tasks = sorted(found, key=lambda t: (_order(t[0], GROUP_ORDER), t[1]))
    groups = sorted({g for g, _, _ in tasks}, key=lambda g: _order(g, GROUP_ORDER))
    order = method_order()
    methods = sorted({e.method for e in entries}, key=lambda m: _order(m, order))
    # the same task × method on other backbones are other results: one row each
    backbones = sorted({e.backbone for e in entries})
    rows = []
    for method, backbone in ((m, b) for b in backbones for m in methods):
        mine = {e.task: e for e in entries if e.method == method and e.backbone == backbone}
        if not mine:
            continue
        row: dict[str, Any] = {"method": method}
        if len(backbones) > 1:
            row["backbone"] = backbone
        for _, task, _ in tasks:
            entry = mine.get(task)
            row[task] = None if entry is None else entry.mean
            row[f"{task} std"] = None if entry is None else entry.std
        # a group's mean only when this method has every task of the group
        for group in groups:
            in_group = [t for g, t, _ in tasks if g == group]
            values = [row[t] for t in in_group]
            complete = all(v is not None for v in values)
            row[f"{group} mean"] = statistics.fmean(values) if complete and values else None
        vtab = [g for g in groups if g in VTAB_GROUPS]
        if vtab:
            group_means = [row[f"{g} mean"] for g in vtab]
            row[HEADLINE] = statistics.fmean(group_means) if None not in group_means else None
            task_values = [row[t] for g, t, _ in tasks if g in VTAB_GROUPS]
            row[TASK_MEAN] = statistics.fmean(task_values) if None not in task_values else None
        percents = [e.tunable_percent for e in mine.values() if e.tunable_percent is not None]
        params = [e.tunable_params for e in mine.values() if e.tunable_params is not None]
        row["tunable params"] = round(statistics.fmean(params)) if params else None
        row["% of backbone"] = statistics.fmean(percents) if percents else None
        row["tasks"] = len(mine)
        rows.append(row)
    if anchors:
        for method, values in paper_anchors().items():
            row = {"method": f"paper: {method}", "source": ANCHOR_SOURCE}
            for group in groups:
                if group in values:
                    row[f"{group} mean"] = values[group]
            vtab = [g for g in VTAB_GROUPS if g in values]
            if any(g in VTAB_GROUPS for g in groups):
                row[HEADLINE] = statistics.fmean([values[g] for g in vtab])
            rows.append(row)
    notes = partial_vtab_groups(tasks)
    return Report(entries=entries, rows=rows, tasks=tasks, groups=groups, notes=notes)


def plot_points(report: Report) -> tuple[list[tuple[str, float, float]], str]:
    """(method, % of backbone, accuracy) per method, and what the accuracy is: the
    headline where every method has it, else the mean over the top-1 tasks every method
    has (so no method is scored on an easier subset), else each method's own task mean."""
    rows = [
        r
        for r in report.rows
        if not r["method"].startswith("paper:") and (r.get("% of backbone") or 0) > 0
    ]
    if rows and all(r.get(HEADLINE) is not None for r in rows):
        return [(_label(r), r["% of backbone"], r[HEADLINE]) for r in rows], HEADLINE
    top1 = [t for _, t, m in report.tasks if m == "top1"]
    common = [t for t in top1 if all(r.get(t) is not None for r in rows)]
    points = []
    for row in rows:
        values = [row[t] for t in (common or top1) if row.get(t) is not None]
        if values:
            points.append((_label(row), row["% of backbone"], statistics.fmean(values)))
    if common:
        label = f"mean of the {len(common)} task(s) every method has"
    else:
        label = "each method's mean over its own tasks"
    return points, label


def _label(row: dict[str, Any]) -> str:
    return f"{row['method']} ({row['backbone']})" if row.get("backbone") else row["method"]


PLOT_MARKERS = "osD^v<>ph*"


def point_styles(count: int) -> list[tuple[str, str]]:
    """(marker, colour) per point: 20 distinct pairs before any repeats (a table has 12
    methods and more with backbones), so no two methods look alike in a legend."""
    import matplotlib

    colours = [matplotlib.colors.to_hex(c) for c in matplotlib.colormaps["tab20"].colors]
    return [(PLOT_MARKERS[i % len(PLOT_MARKERS)], colours[i % len(colours)]) for i in range(count)]


def plot_report(report: Report, path: Path, title: str = "") -> None:
    """Accuracy against tunable % of the backbone, one point per method, log x-axis.
    Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points, label = plot_points(report)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    # a legend, not labels by the points: methods with similar budgets sit on top of
    # each other, and labels there become ambiguous; outside the axes, so it hides none
    for (method, x, y), (marker, colour) in zip(points, point_styles(len(points)), strict=True):
        ax.scatter([x], [y], s=60, marker=marker, color=colour, label=method, alpha=0.85)
    if points:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_xscale("log")
    ax.set_xlabel("tunable parameters, % of the backbone (log)")
    ax.set_ylabel(f"top-1 % ({label})", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.set_title(title or "accuracy vs tunable parameters", fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def write_report(report: Report, out_dir: str | Path, name: str = "report") -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.{ext}" for ext in ("md", "csv", "json", "png")]
    atomic_write_text(paths[0], report.markdown() + "\n")
    flat_columns = sorted({k for r in report.rows for k in r}, key=lambda k: (k != "method", k))
    write_csv(paths[1], [{c: r.get(c) for c in flat_columns} for r in report.rows])
    write_json(paths[2], report.to_dict())
    plot_report(report, paths[3])
    return paths
