"""Which importance score should choose the E²VPT tokens to prune? A measurement.

For each task of the CPU mini-benchmark (written from ../shared/data and the built-in
generators, as ``benchmarks/mini_benchmark.py`` does) and each seed: train E²VPT
(default recipe) on train800, then for every score prune half of the visual tokens
(no segments) and measure val200 / test top-1

* right after pruning (the trained values of the surviving tokens, no retraining), and
* after rewinding (survivors back to their initial values, retrained with the run's
  recipe) — for the scores in ``--rewind-scores``.

Scores: ``official`` (signed mean of ∂L/∂mask, lowest pruned first), ``abs`` (the
paper's mean |∂L/∂mask|), ``signed`` (mean −∂L/∂mask), ``ablation`` (the loss rise when
a token is taken out, measured) and ``random``. Resumable: every cell is one JSON file.

    uv run python benchmarks/prune_importance.py                 # ~1 h on 2 CPU cores
    uv run python benchmarks/prune_importance.py --report-only
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from e2vpt.checkpoint import load
from e2vpt.errors import exit_code_of
from e2vpt.inference import model_data_settings, top1
from e2vpt.pruning import apply_plan, importance_scores, make_plan
from e2vpt.reporting import format_table, write_csv, write_json
from e2vpt.training.config import TrainConfig
from e2vpt.training.trainer import load_task_for, train

REPO = Path(__file__).resolve().parent.parent
TASKS = ["dtd10", "fashion_mnist", "orientation", "count"]
SCORES = ["official", "abs", "signed", "ablation", "random"]
REWIND_SCORES = ["official", "ablation", "random"]
SEEDS = [42, 44, 82]
EPOCHS = 10
BATCH = 64
BASE_LR = 0.25  # e2vpt's default SGD base lr on the demo backbone
WEIGHT_DECAY = 1e-4
TOKEN_FRACTION = 0.5


def mini_benchmark() -> Any:
    """The mini-benchmark script as a module (for its task writer)."""
    spec = importlib.util.spec_from_file_location(
        "mini_benchmark", REPO / "benchmarks" / "mini_benchmark.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def run_cell(args: argparse.Namespace, data_dir: Path, task_name: str, seed: int) -> None:
    root = args.out / "runs" / task_name / f"seed{seed}"
    cfg = TrainConfig(
        method="e2vpt",
        data=f"vtab:{data_dir / task_name}",
        epochs=args.epochs,
        batch_size=BATCH,
        base_lr=BASE_LR,
        weight_decay=WEIGHT_DECAY,
        seed=seed,
        device=args.device,
        precision="fp32",
        output_dir=str(root / "unpruned"),
        progress=False,
    )
    task = None
    unpruned = read(root / "unpruned.json")
    if unpruned is None:
        task = load_task_for(cfg)
        result = train(cfg, task=task)
        unpruned = {"val_top1": result.val_top1, "test_top1": result.eval_top1}
        write_json(root / "unpruned.json", unpruned)
    todo = [s for s in args.scores if read(root / f"{s}.json") is None]
    if not todo:
        return
    task = task or load_task_for(cfg)
    trained = load(cfg.output_dir)
    _, normalizer = model_data_settings(trained)
    train_split = task.split("train")
    for score in todo:
        start = time.perf_counter()
        scores = importance_scores(
            trained,
            train_split.images,
            train_split.labels,
            batch_size=BATCH,
            mode=score,
            prepare=normalizer,
            seed=seed,
        )
        seconds = time.perf_counter() - start
        plan = make_plan(scores, TOKEN_FRACTION, 0.0)
        pruned = apply_plan(copy.deepcopy(trained), plan)
        cell: dict[str, Any] = {
            "task": task_name,
            "seed": seed,
            "score": score,
            "kept_tokens": list(plan.kept_tokens),
            "token_scores": scores.token.tolist(),
            "score_seconds": seconds,
            "unpruned_val_top1": unpruned["val_top1"],
            "unpruned_test_top1": unpruned["test_top1"],
            "pruned_val_top1": top1(
                pruned, task.split("val"), normalizer, torch.device("cpu"), "fp32"
            ),
            "pruned_test_top1": top1(
                pruned, task.split("test"), normalizer, torch.device("cpu"), "fp32"
            ),
        }
        if score in args.rewind_scores:
            rewind_cfg = dataclasses.replace(cfg, output_dir=str(root / f"rewind_{score}"))
            result = train(rewind_cfg, task=task, customize=lambda m, p=plan: apply_plan(m, p))
            cell["rewound_val_top1"] = result.val_top1
            cell["rewound_test_top1"] = result.eval_top1
        write_json(root / f"{score}.json", cell)
        print(
            f"{task_name} seed {seed} {score}: kept {plan.kept_tokens}, test "
            f"{100 * cell['pruned_test_top1']:.1f} % pruned"
            + (
                f", {100 * cell['rewound_test_top1']:.1f} % rewound"
                if "rewound_test_top1" in cell
                else ""
            ),
            file=sys.stderr,
            flush=True,
        )


def mean_std(values: list[float]) -> str:
    if not values:
        return ""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.fmean(values):.2f} ± {100 * std:.2f}"


def report(args: argparse.Namespace) -> list[dict[str, Any]]:
    cells = [
        c
        for task in args.tasks
        for seed in args.seeds
        for score in args.scores
        if (c := read(args.out / "runs" / task / f"seed{seed}" / f"{score}.json")) is not None
    ]
    rows = []
    unpruned = {(c["task"], c["seed"]): c["unpruned_test_top1"] for c in cells}
    rows.append(
        {
            "score": "unpruned (10 tokens)",
            **{
                t: mean_std([v for (task, _), v in unpruned.items() if task == t])
                for t in args.tasks
            },
            "mean over tasks, pruned": mean_std(list(unpruned.values())),
            "mean over tasks, rewound": "",
        }
    )
    for score in args.scores:
        mine = [c for c in cells if c["score"] == score]
        if not mine:
            continue
        row: dict[str, Any] = {"score": score}
        for t in args.tasks:
            pruned = [c["pruned_test_top1"] for c in mine if c["task"] == t]
            rewound = [
                c["rewound_test_top1"] for c in mine if c["task"] == t and "rewound_test_top1" in c
            ]
            row[t] = mean_std(pruned) + (f" → {mean_std(rewound)}" if rewound else "")
        row["mean over tasks, pruned"] = mean_std([c["pruned_test_top1"] for c in mine])
        row["mean over tasks, rewound"] = mean_std(
            [c["rewound_test_top1"] for c in mine if "rewound_test_top1" in c]
        )
        rows.append(row)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "prune_importance")
    parser.add_argument("--tasks", nargs="+", default=TASKS)
    parser.add_argument("--seeds", type=int, nargs="+", default=SEEDS)
    parser.add_argument("--scores", nargs="+", default=SCORES)
    parser.add_argument("--rewind-scores", nargs="+", default=REWIND_SCORES)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    data_dir = args.out / "data"
    if not args.report_only:
        if not args.source.is_dir():
            print(f"data source {args.source} not found (../shared/data)", file=sys.stderr)
            return 2
        mini_benchmark().prepare(args.source, data_dir)
        for task in args.tasks:
            for seed in args.seeds:
                run_cell(args, data_dir, task, seed)
    rows = report(args)
    write_json(args.results / "prune_importance.json", rows)
    write_csv(args.results / "prune_importance.csv", rows)
    table = format_table(rows)
    (args.results / "prune_importance.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(exit_code_of(main, "prune_importance.py"))
