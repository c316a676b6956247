"""The on-disk cache of decoded splits vs. decoding into RAM: time to a loaded task and
to the first training batch, and the memory it takes, for an image folder of N JPEGs.

Each phase runs in a fresh Python process (nothing cached in the interpreter):

1. first load — the cache empty: decode and write the entry, then map it
2. second load — from the cache (page cache warm: the entry was just written)
3. second load, cold — from the cache after its pages are dropped from the page cache
   (``posix_fadvise(DONTNEED)``; a virtual disk may still be cached by its host)
4. no cache — decoded into RAM, as before the cache (skipped when it would not fit)

"First step" is what training does first: 64 random training images gathered by index
and normalised to float.

    uv run python benchmarks/data_cache.py                      # 50,000 images at 224²
    uv run python benchmarks/data_cache.py --images 2000 --size 64 --out /tmp/r

Resumable: the generated folder is reused when complete. Prints a Markdown table and
writes benchmarks/results/data_cache.{md,csv,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
SPLIT_SHARES = {"train": 0.8, "val": 0.1, "test": 0.1}
GiB = 2**30
PHASES = {
    "first": "1 first load (cache empty: decode + write)",
    "second": "2 second load (from the cache)",
    "cold": "3 second load, page cache dropped",
    "memory": "4 no cache (decode into RAM)",
}


# ---------------------------------------------------------------- the image folder


def _layout(n: int, classes: int) -> list[tuple[str, str, int]]:
    """(split, class, index) of every image: 80/10/10 splits, classes round-robin."""
    rows = []
    start = 0
    for split, share in SPLIT_SHARES.items():
        count = round(n * share) if split != "test" else n - start
        rows.extend((split, f"class_{i % classes:02d}", i) for i in range(start, start + count))
        start += count
    return rows


def _write_images(job: tuple[str, list[tuple[str, str, int]], int]) -> int:
    """Smooth random colour fields with noise (JPEG-like content, fast to make)."""
    from PIL import Image

    root, rows, side = job
    for split, cls, i in rows:
        path = Path(root) / split / cls / f"img_{i:06d}.jpg"
        if path.is_file():
            continue
        rng = np.random.default_rng(i)
        coarse = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
        img = Image.fromarray(coarse).resize((side, side), Image.Resampling.BILINEAR)
        pixels = np.asarray(img, dtype=np.int16) + rng.integers(-12, 13, size=(side, side, 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
    return len(rows)


def generate(root: Path, n: int, classes: int, side: int) -> float:
    """The folder, reused when its marker says it is complete; returns seconds spent."""
    marker = root / ".complete.json"
    spec = {"images": n, "classes": classes, "side": side}
    if marker.is_file() and json.loads(marker.read_text()) == spec:
        return 0.0
    if root.exists() and not marker.is_file():
        print(f"completing the image folder {root} (files already there are kept)")
    elif root.exists():
        shutil.rmtree(root)  # another size: start over
    start = time.perf_counter()
    rows = _layout(n, classes)
    for split, cls, _ in rows:
        (root / split / cls).mkdir(parents=True, exist_ok=True)
    workers = os.cpu_count() or 1
    jobs = [(str(root), rows[k :: workers * 8], side) for k in range(workers * 8)]
    with ProcessPoolExecutor(workers) as pool:
        done = sum(pool.map(_write_images, jobs))
    assert done == n
    write_text(marker, json.dumps(spec))
    return time.perf_counter() - start


# ---------------------------------------------------------------- one measured phase


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class AnonSampler(threading.Thread):
    """The largest RssAnon seen, sampled every 10 ms (the kernel keeps a peak of the
    whole RSS, VmHWM, but none of its anonymous part)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = _status_kib("RssAnon")
        self.running = True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, _status_kib("RssAnon"))
            time.sleep(0.01)

    def stop(self) -> int:
        self.running = False
        self.join()
        self.peak = max(self.peak, _status_kib("RssAnon"))
        return self.peak


def child(data: str, size: int, batch: int, cache: bool) -> dict[str, Any]:
    """Load, take the first batch, report times and memory (runs in its own process)."""
    import torch

    from e2vpt.data import load_task

    torch.set_num_threads(min(2, torch.get_num_threads()))
    baseline_anon, baseline_file = _status_kib("RssAnon"), _status_kib("RssFile")
    sampler = AnonSampler()
    sampler.start()
    start, cpu_start = time.perf_counter(), time.process_time()
    task = load_task(data, size, progress=False, cache=cache)
    loaded, cpu_loaded = time.perf_counter(), time.process_time()
    train = task.split("train")
    idx = torch.randint(len(train), (batch,), generator=torch.Generator().manual_seed(0))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = (train.images[idx].to("cpu").float().div(255) - mean) / std
    stepped, cpu_stepped = time.perf_counter(), time.process_time()
    assert x.shape == (batch, 3, size, size)
    first_file = _status_kib("RssFile")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(1))
    for rows in order.split(batch):  # an epoch's gathers, as training takes them
        x = (train.images[rows].float().div(255) - mean) / std
    epoch, cpu_epoch = time.perf_counter() - stepped, time.process_time() - cpu_stepped
    peak_anon = sampler.stop()
    return {
        "load s": loaded - start,
        "first step s": stepped - start,
        "load CPU s": cpu_loaded - cpu_start,
        "epoch s": epoch,
        "epoch CPU s": cpu_epoch,
        "mapped after epoch GiB": (_status_kib("RssFile") - baseline_file) * 1024 / GiB,
        "peak RSS GiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GiB,
        "peak anon GiB": peak_anon * 1024 / GiB,
        "anon before load GiB": baseline_anon * 1024 / GiB,
        "anon growth GiB": (peak_anon - baseline_anon) * 1024 / GiB,
        "mapped resident GiB": (first_file - baseline_file) * 1024 / GiB,
        "images": sum(len(s) for s in task.splits.values()),
        "source": task.source,
    }


def drop_page_cache(folder: Path) -> None:
    """Ask the kernel to forget the cached pages of every file below ``folder``."""
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def run_phase(args: argparse.Namespace, data: Path, cache_dir: Path, phase: str) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--data",
        str(data),
        "--size",
        str(args.size),
        "--batch",
        str(args.batch),
    ]
    if phase == "memory":
        cmd.append("--no-cache")
    env = {**os.environ, "E2VPT_CACHE_DIR": str(cache_dir)}
    start = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        sys.exit(f"phase {phase} failed:\n{out.stderr[-4000:]}")
    row = json.loads(out.stdout.strip().splitlines()[-1])
    summary = [line for line in out.stderr.splitlines() if line.startswith("data: ")]
    return {
        "phase": PHASES[phase],
        "process s": wall,
        **row,
        "load average": os.getloadavg()[0],
        "summary": summary[-1],
    }


# ---------------------------------------------------------------- report


def machine() -> dict[str, Any]:
    import PIL
    import torch

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    mem = next(
        int(line.split()[1]) * 1024
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory GiB": round(mem / GiB, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "os": platform.platform(),
    }


COLUMNS = {
    "phase": "phase",
    "load s": "to loaded task s",
    "first step s": "to first step s",
    "load CPU s": "load CPU s",
    "process s": "process s",
    "peak RSS GiB": "peak RSS GiB",
    "peak anon GiB": "peak anon GiB",
    "anon growth GiB": "anon growth GiB",
    "mapped resident GiB": "mapped resident GiB",
    "epoch s": "epoch of batches s",
    "epoch CPU s": "epoch CPU s",
    "mapped after epoch GiB": "mapped after epoch GiB",
}


def markdown(rows: list[dict], info: dict[str, Any]) -> str:
    from e2vpt.reporting import format_table

    table = [{label: row[key] for key, label in COLUMNS.items()} for row in rows]
    m = info["machine"]
    decoded = info["decoded GiB"]
    lines = [
        f"### data cache: image folder of {info['images']:,} JPEGs "
        f"({info['source side']}² sources, {info['classes']} classes) loaded at "
        f"{info['size']}²",
        "",
        f"{m['cpu']}, {m['cores']} cores, {m['memory GiB']} GiB RAM; torch {m['torch']}, "
        f"numpy {m['numpy']}, Pillow {m['pillow']}. Decoded uint8 images: {decoded:.2f} GiB.",
        "",
        format_table(table),
        "",
        "Each phase is a fresh Python process. *to loaded task*: `load_task` (list the "
        "folder, fingerprint every file, decode or map); *to first step*: that plus one "
        "training batch of 64 random images gathered by index and normalised to float; "
        "*process*: the whole child process, interpreter start and imports included. *CPU s*: "
        "the process's CPU time (all threads, user + system) over the same span — steadier "
        "than wall time where other work shares the cores.",
        "",
        "*peak RSS* is the kernel's high-water mark of the resident set (VmHWM, "
        "`ru_maxrss`); it counts the pages of memory-mapped files, which are page cache: "
        "shared between processes mapping the same entry and reclaimable by the kernel "
        "under pressure. *peak anon* is the largest anonymous resident memory (RssAnon, "
        "sampled every 10 ms) — the process's own memory, which grows with the data set "
        "without the cache — and is the honest number; about "
        f"{info['anon baseline GiB']:.2f} GiB of it is the interpreter, torch and numpy "
        "before anything is loaded, and *anon growth* is the peak less that. *mapped "
        "resident*: file-backed resident memory gained by the load and the first batch "
        "(the cache's pages touched so far, plus any libraries loaded meanwhile). *epoch of "
        "batches*: then every training image once, in random batches of 64 gathered and "
        "normalised as in the first step (no model: the data path alone); *mapped after "
        "epoch*: the file-backed resident memory then — all of train's pages, page cache "
        "the kernel may drop and read back, where the no-cache run holds them as its own. "
        "*peak anon* covers the load and the epoch.",
        "",
    ]
    loads = ", ".join(f"{r['load average']:.1f}" for r in rows)
    lines += [
        f"1-minute load average at the end of each phase: {loads} ({m['cores']} cores; a "
        "value above what the benchmark itself uses, about 1–2, means other work shared "
        "the cores and the wall times are noisy — the CPU times much less so).",
        "",
    ]
    if info.get("notes"):
        lines += [f"Note: {note}" for note in info["notes"]] + [""]
    lines.append(
        "Reproduce: `uv run python benchmarks/data_cache.py "
        f"--images {info['images']} --size {info['size']}`"
    )
    return "\n".join(lines) + "\n"


def write_text(path: Path, text: str) -> None:
    """Whole or not at all: a temp file beside it, then the rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--size", type=int, default=224, help="the backbone's input side")
    parser.add_argument("--source-side", type=int, default=64, help="the JPEGs' side")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "e2vpt-data-cache-bench",
        help="where the image folder and the cache go (reused when complete)",
    )
    parser.add_argument(
        "--memory-phase",
        choices=("auto", "yes", "no"),
        default="auto",
        help="run the no-cache phase (auto: when the decoded images fit in half the RAM)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--no-cache", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.data, args.size, args.batch, not args.no_cache)))
        return

    from e2vpt.reporting import write_csv, write_json

    data = args.workdir / f"images_{args.images}_{args.source_side}"
    cache_dir = args.workdir / "cache"
    seconds = generate(data, args.images, args.classes, args.source_side)
    print(f"image folder {data}: " + (f"generated in {seconds:.0f} s" if seconds else "reused"))
    decoded = args.images * 3 * args.size**2 / GiB
    info: dict[str, Any] = {
        "images": args.images,
        "size": args.size,
        "source side": args.source_side,
        "classes": args.classes,
        "batch": args.batch,
        "decoded GiB": decoded,
        "machine": machine(),
        "notes": [],
    }
    shutil.rmtree(cache_dir, ignore_errors=True)
    phases = ["first", "second", "cold"]
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if args.memory_phase == "yes" or (args.memory_phase == "auto" and decoded < available / 2):
        phases.append("memory")
    else:
        info["notes"].append(
            f"the no-cache phase was skipped: {decoded:.1f} GiB of decoded images against "
            f"{available / GiB:.1f} GiB available"
        )
    rows = []
    for phase in phases:
        if phase == "cold":
            drop_page_cache(cache_dir)
        row = run_phase(args, data, cache_dir, phase)
        rows.append(row)
        print(f"{row['phase']}: {row['first step s']:.1f} s, peak anon {row['peak anon GiB']:.2f}")
        print(f"    {row['summary']}")
    info["anon baseline GiB"] = min(r["anon before load GiB"] for r in rows)
    shutil.rmtree(cache_dir, ignore_errors=True)  # gigabytes: not left behind
    text = markdown(rows, info)
    print("\n" + text)
    args.out.mkdir(parents=True, exist_ok=True)
    write_text(args.out / "data_cache.md", text)
    write_csv(args.out / "data_cache.csv", [{k: r[k] for k in COLUMNS} for r in rows])
    write_json(args.out / "data_cache.json", {**info, "rows": rows})
    print(f"written: {args.out}/data_cache.{{md,csv,json}}")


if __name__ == "__main__":
    main()
