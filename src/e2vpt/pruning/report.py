"""The pruning report: one table row per grid point and a plot of accuracy against the
prompt values kept."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any


def _percent(value: float | None) -> float | None:
    return None if value is None else round(100 * value, 2)


def report_rows(
    original: dict[str, Any], points: list[dict[str, Any]], selected: dict[str, Any]
) -> list[dict[str, Any]]:
    rows = []
    for point in [original, *points]:
        params = point.get("parameters") or {}
        is_original = point is original
        rows.append(
            {
                "model": "unpruned run" if is_original else "rewound",
                "token frac": point["plan"]["token_fraction"],
                "segment frac": point["plan"]["segment_fraction"],
                "tokens kept": point["tokens_kept"],
                "prompt values": point["prompt_values"],
                "tunable params": params.get("tunable"),
                "val top-1 %": _percent(point["val_top1"]),
                f"{point.get('eval_split', 'test')} top-1 %": _percent(point["eval_top1"]),
                "selected": "" if is_original else ("*" if point is selected else ""),
            }
        )
    return rows


def plot_pruning(
    original: dict[str, Any],
    points: list[dict[str, Any]],
    selected: dict[str, Any],
    path: Path,
    title: str = "",
) -> None:
    """Left: val/test top-1 against prompt values kept. Right: val top-1 against the
    token fraction, one line per segment fraction. Written atomically (temp + rename)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from e2vpt.files import atomic_write_bytes

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    _plot_kept_values(left, original, points, selected)
    _plot_token_fractions(right, original, points)
    fig.suptitle(f"E²VPT pruning + rewinding {title}", fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def _plot_kept_values(
    ax: Any, original: dict[str, Any], points: list[dict[str, Any]], selected: dict[str, Any]
) -> None:
    """Top-1 of every rewound point against the prompt values it keeps."""
    kept = [p["prompt_values"] for p in points]
    val = [100 * p["val_top1"] for p in points]
    ax.scatter(kept, val, label="rewound, val", color="tab:blue")
    test = [
        (p["prompt_values"], 100 * p["eval_top1"]) for p in points if p["eval_top1"] is not None
    ]
    if test:
        ax.scatter(
            *zip(*test, strict=True),
            label="rewound, test",
            facecolors="none",
            edgecolors="tab:blue",
        )
    for p in points:
        frac = p["plan"]
        ax.annotate(
            f"{frac['token_fraction']:g}/{frac['segment_fraction']:g}",
            (p["prompt_values"], 100 * p["val_top1"]),
            textcoords="offset points",
            xytext=(4, 3),
            fontsize=7,
        )
    if original.get("val_top1") is not None:
        ax.scatter(
            [original["prompt_values"]],
            [100 * original["val_top1"]],
            marker="*",
            s=140,
            color="tab:orange",
            label="unpruned run, val",
        )
    ax.scatter(
        [selected["prompt_values"]],
        [100 * selected["val_top1"]],
        s=160,
        facecolors="none",
        edgecolors="tab:red",
        linewidths=2,
        label="selected",
    )
    ax.set_xlabel("visual prompt values kept (token/segment fraction pruned)")
    ax.set_ylabel("top-1 %")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def _plot_token_fractions(ax: Any, original: dict[str, Any], points: list[dict[str, Any]]) -> None:
    """Val top-1 against the token fraction pruned, one line per segment fraction."""
    by_segment: dict[float, list[tuple[float, float]]] = {}
    for p in points:
        frac = p["plan"]
        by_segment.setdefault(frac["segment_fraction"], []).append(
            (frac["token_fraction"], 100 * p["val_top1"])
        )
    for seg, values in sorted(by_segment.items()):
        values.sort()
        ax.plot(*zip(*values, strict=True), marker="o", label=f"segments pruned {seg:g}")
    if original.get("val_top1") is not None:
        ax.axhline(100 * original["val_top1"], color="tab:orange", ls="--", label="unpruned")
    ax.set_xlabel("fraction of visual tokens pruned")
    ax.set_ylabel("val top-1 %")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
