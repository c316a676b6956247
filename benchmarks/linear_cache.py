"""Linear probing with cached features vs. running the frozen backbone every epoch: a
whole ``e2vpt train --method linear`` run, timed end to end.

With the cache the backbone sees each image once (train, val and test features, then
the head trains on them); without it every epoch pushes every training and validation
image through the backbone again. The images the backbone actually processed are
counted with a hook on its patch embedding, not computed.

    uv run python benchmarks/linear_cache.py                      # demo backbone, CPU
    uv run python benchmarks/linear_cache.py --device cuda --backbone vit_base_patch16_224

Prints a Markdown table; writes benchmarks/results/linear_cache_<device>.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from e2vpt.files import atomic_write_text
from e2vpt.model import PromptedModel
from e2vpt.reporting import format_table, write_json
from e2vpt.training.config import TrainConfig
from e2vpt.training.trainer import train

RESULTS = Path(__file__).resolve().parent / "results"


def timed_run(cfg: TrainConfig) -> dict[str, Any]:
    seen = {"images": 0}

    def count_images(model: PromptedModel) -> None:
        def hook(_module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], _out: Any) -> None:
            seen["images"] += inputs[0].shape[0]

        model.backbone.patch_embed.register_forward_hook(hook)

    start = time.perf_counter()
    result = train(cfg, customize=count_images)
    seconds = time.perf_counter() - start
    return {
        "features": "cached" if cfg.cache_features else "backbone every epoch",
        "backbone images": seen["images"],
        "wall s": seconds,
        "test top-1 %": 100 * (result.eval_top1 or 0.0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbone", default="demo_vit_cifar10")
    parser.add_argument("--data", default="builtin:position", help="a VTAB-sized task")
    parser.add_argument("--epochs", type=int, default=100, help="the papers' 100 by default")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for cache in (True, False):
            cfg = TrainConfig(
                backbone=args.backbone,
                method="linear",
                data=args.data,
                epochs=args.epochs,
                batch_size=args.batch_size,
                device=args.device,
                cache_features=cache,
                progress=False,
                output_dir=str(Path(tmp) / ("cached" if cache else "plain")),
            )
            rows.append(timed_run(cfg))
    cached = rows[0]["wall s"]
    for row in rows:
        row["× cached time"] = row["wall s"] / cached
    where = args.device if args.device != "cpu" else f"{os.cpu_count()}-core CPU"
    title = (
        f"### linear probe, {args.backbone} on {args.data}, {args.epochs} epochs, "
        f"batch {args.batch_size}, {where}; torch {torch.__version__}"
    )
    text = f"{title}\n\n{format_table(rows, float_digits=2)}\n"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    stem = f"linear_cache_{args.device.split(':')[0]}"
    write_json(RESULTS / f"{stem}.json", rows)
    atomic_write_text(RESULTS / f"{stem}.md", text)


if __name__ == "__main__":
    main()
