"""CPU mini-benchmark: the papers' protocol, reduced, on the demo backbone and real data.

Six tasks in VTAB-1k's own layout (this script writes them from ../shared/data and the
built-in generators, then loads them through ``vtab:`` like any VTAB task):

* natural:    dtd10 (DTD, 10 classes), fashion_mnist, mnist
* structured: position, orientation, count (generated)

Each has train800 / val200 / train800val200 and a test split (2,000 images; dtd10 has
only 1,200 images in all, so its test split is the 200 left over). Methods: every
registered method (the papers' baselines full, linear, partial, mlp, sidetune, bias,
adapter, lora; then vpt-shallow, vpt-deep, e2vpt and pruned e2vpt), each through
``e2vpt sweep`` with the default recipe: a 3-point lr grid (the method's default base
lr ×{1/5, 1, 5}) on train800 → val200, then 3 seeds on train800val200 → test.
Tasks run one after another, every method on a task before the next task, so a
partial run has whole columns. Resumable: rerun the same command after a kill and
finished trials are skipped.

    uv run python benchmarks/mini_benchmark.py            # hours on 2 CPU cores
    uv run python benchmarks/mini_benchmark.py --report-only

On a GPU (the GPU campaign): the papers' 100 epochs, a wider grid, another backbone's
weights, several trials at once on one GPU (``--devices cuda cuda cuda``):

    python benchmarks/mini_benchmark.py --epochs 100 --lr-factors 0.04 0.2 1 5 25 \
        --weights campaign/pretrain/weights/demo_vit_cifar10.safetensors \
        --devices cuda cuda cuda cuda --precision bf16 --name mini_benchmark_gpu
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from e2vpt.data.synthetic import generate_split
from e2vpt.errors import ConfigError, SweepError, exit_code_of
from e2vpt.methods import get_method, list_methods, method_config
from e2vpt.sweeps import SweepSettings, run_sweep
from e2vpt.training.config import TrainConfig

REPO = Path(__file__).resolve().parent.parent
TASKS = {  # name → report group
    "dtd10": "natural",
    "fashion_mnist": "natural",
    "mnist": "natural",
    "position": "structured",
    "orientation": "structured",
    "count": "structured",
}
REAL_TASKS = ("dtd10", "fashion_mnist", "mnist")


def runs_at_defaults(method: str) -> bool:
    """peft needs a config file of the user's: not one of the benchmark's methods."""
    try:
        method_config(method)
    except ConfigError:
        return False
    return True


METHODS = [m for m in list_methods() if runs_at_defaults(m)]  # e2vpt also yields e2vpt-pruned
LR_FACTORS = [0.2, 1.0, 5.0]  # × the method's default base lr (a subset of the papers' grid)
WEIGHT_DECAY = 1e-4
SEEDS = [42, 44, 82]
EPOCHS = 10
BATCH = 64
TEST_SIZE = 2000


def lr_grid(method: str, factors: list[float] = LR_FACTORS) -> list[float]:
    """Base lrs around the method's own default for its optimizer."""
    config = get_method(method).config_cls
    default = config.default_base_lr[config.optimizer]
    return [float(f"{default * f:.3g}") for f in factors]


def read_idx(path: Path) -> np.ndarray:
    """An MNIST-format idx file (.gz): big-endian dims, then uint8 data."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def write_vtab_task(folder: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """images (N×H×W[×3] uint8) + labels per split → PNGs + VTAB split lists."""
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images").mkdir(parents=True)
    lines: dict[str, list[str]] = {}
    for split, (images, labels) in splits.items():
        lines[split] = []
        for i, (img, label) in enumerate(zip(images, labels, strict=True)):
            rel = f"images/{split}_{i:05d}.png"
            Image.fromarray(img).save(tmp / rel)
            lines[split].append(f"{rel} {int(label)}")
    lines["train800val200"] = lines["train800"] + lines["val200"]
    for split, rows in lines.items():
        (tmp / f"{split}.txt").write_text("\n".join(rows) + "\n")
    tmp.rename(folder)  # a half-written task folder never looks finished


def stratified(labels: np.ndarray, sizes: list[int], rng: np.random.Generator) -> list[np.ndarray]:
    """Disjoint index sets of the given sizes, each with classes as even as possible."""
    classes = np.unique(labels)
    pools = {c: rng.permutation(np.flatnonzero(labels == c)).tolist() for c in classes}
    out = []
    for size in sizes:
        picked: list[int] = []
        while len(picked) < size:
            for c in classes:
                if len(picked) < size and pools[c]:
                    picked.append(pools[c].pop())
        out.append(rng.permutation(np.array(picked)))
    return out


def prepare(source: Path, data_dir: Path, tasks: list[str] | None = None) -> None:
    """Write the task folders of ``tasks`` (default: all) that ``data_dir`` lacks. The
    real-image tasks draw their splits from one seeded generator in the order dtd10,
    fashion_mnist, mnist: written together (or dtd10 alone first), they are the splits
    of the committed tables."""
    data_dir.mkdir(parents=True, exist_ok=True)
    tasks = list(TASKS) if tasks is None else tasks
    rng = np.random.default_rng(0)
    if "dtd10" in tasks and not (data_dir / "dtd10").is_dir():
        extract = data_dir / "_dtd10_src"
        with tarfile.open(source / "dtd10.tar.gz") as tar:
            tar.extractall(extract, filter="data")
        files = sorted((extract / "dtd10").glob("*/*/*.jpg"))
        classes = sorted({f.parent.name for f in files})
        labels = np.array([classes.index(f.parent.name) for f in files])
        images = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
        train, val, test = stratified(labels, [800, 200, len(files) - 1000], rng)
        write_vtab_task(
            data_dir / "dtd10",
            {
                s: (images[i], labels[i])
                for s, i in zip(["train800", "val200", "test"], [train, val, test], strict=True)
            },
        )
        shutil.rmtree(extract)
    if "fashion_mnist" in tasks and not (data_dir / "fashion_mnist").is_dir():
        fm = source / "fashion-mnist"
        x, y = (
            read_idx(fm / "train-images-idx3-ubyte.gz"),
            read_idx(fm / "train-labels-idx1-ubyte.gz"),
        )
        tx, ty = (
            read_idx(fm / "t10k-images-idx3-ubyte.gz"),
            read_idx(fm / "t10k-labels-idx1-ubyte.gz"),
        )
        train, val = stratified(y, [800, 200], rng)
        (test,) = stratified(ty, [TEST_SIZE], rng)
        write_vtab_task(
            data_dir / "fashion_mnist",
            {
                "train800": (x[train], y[train]),
                "val200": (x[val], y[val]),
                "test": (tx[test], ty[test]),
            },
        )
    if "mnist" in tasks and not (data_dir / "mnist").is_dir():
        mn = source / "mnist-test"  # only MNIST's t10k is here: carve all splits from it
        x, y = (
            read_idx(mn / "t10k-images-idx3-ubyte.gz"),
            read_idx(mn / "t10k-labels-idx1-ubyte.gz"),
        )
        train, val, test = stratified(y, [800, 200, TEST_SIZE], rng)
        write_vtab_task(
            data_dir / "mnist",
            {
                s: (x[i], y[i])
                for s, i in zip(["train800", "val200", "test"], [train, val, test], strict=True)
            },
        )
    for task in ("position", "orientation", "count"):
        if task in tasks and not (data_dir / task).is_dir():
            splits = {}
            for ours, theirs, size in (
                ("train800", "train", 800),
                ("val200", "val", 200),
                ("test", "test", TEST_SIZE),
            ):
                images, labels, _ = generate_split(task, theirs, seed=0, size=size)
                splits[ours] = (images, labels)
            write_vtab_task(data_dir / task, splits)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "mini_benchmark")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--seeds", type=int, nargs="+", default=SEEDS)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--devices", nargs="+", help="one worker process per device (GPUs)")
    parser.add_argument(
        "--lr-factors",
        type=float,
        nargs="+",
        default=LR_FACTORS,
        help="the lr grid: these × each method's default base lr",
    )
    parser.add_argument("--backbone", default="demo_vit_cifar10")
    parser.add_argument("--weights", help="a local weights file for --backbone")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--prepare-only", action="store_true", help="write the task folders")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--name", default="mini_benchmark", help="the results files' name")
    args = parser.parse_args()

    data_dir = args.out / "data"
    sweeps_dir = args.out / "sweeps"
    # the generated tasks need no source
    missing = [t for t in args.tasks if t in REAL_TASKS and not (data_dir / t).is_dir()]
    if not args.report_only:
        if missing and not args.source.is_dir():
            print(
                f"data source {args.source} not found (the project machines' "
                "../shared/data; pass --source)",
                file=sys.stderr,
            )
            return 2
        prepare(args.source, data_dir, args.tasks)
        if args.prepare_only:
            return 0
        for task in args.tasks:
            for method in args.methods:
                start = time.perf_counter()
                cfg = TrainConfig(
                    method=method,
                    backbone=args.backbone,
                    weights=args.weights,
                    data=f"vtab:{data_dir / task}",
                    epochs=args.epochs,
                    batch_size=BATCH,
                    device=args.device,
                    precision=args.precision,  # fp32 by default: the same on CPU and GPU
                    progress=True,
                )
                settings = SweepSettings(
                    base_lrs=lr_grid(method, args.lr_factors),
                    weight_decays=[WEIGHT_DECAY],
                    seeds=args.seeds,
                    output_dir=str(sweeps_dir),
                    devices=args.devices,
                    group=TASKS[task],
                    prune=method == "e2vpt",
                    prune_token_fractions=[0.5],
                    prune_segment_fractions=[0.0, 0.5],
                )
                run_sweep(cfg, settings)
                print(
                    f"== {task} × {method}: {time.perf_counter() - start:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
    if not sweeps_dir.is_dir():  # the report's own message names `e2vpt sweep`'s flag
        raise SweepError(
            f"no finished sweeps in {sweeps_dir}; run without --report-only first, "
            "or pass the --out of an earlier run"
        )
    from e2vpt.sweeps.report import build_report, write_report

    report = build_report(sweeps_dir, expected_tasks={t: TASKS[t] for t in args.tasks})
    write_report(report, args.results, name=args.name)
    print(report.markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(
        exit_code_of(
            main, "mini_benchmark.py", "finished trials are kept; run the same command to go on"
        )
    )
