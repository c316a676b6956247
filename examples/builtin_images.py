"""Write a built-in task's test images as PNG files in class folders, to try
`e2vpt predict` (or an image-folder run) without data of your own.

    uv run python examples/builtin_images.py demo_images --task count --count 24
    uv run e2vpt predict runs/quickstart demo_images --output preds.csv
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from e2vpt.data import builtin_tasks
from e2vpt.data.synthetic import generate_split


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write <class>/<index>.png into")
    parser.add_argument(
        "--task", default="count", choices=[t.split(":")[-1] for t in builtin_tasks()]
    )
    parser.add_argument("--count", type=int, default=24, help="how many images")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.out.exists():
        parser.error(f"{args.out} exists; choose a new folder")
    images, labels, classes = generate_split(args.task, "test", seed=args.seed, size=args.count)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = args.out / classes[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:04d}.png")
    print(f"wrote {len(images)} {args.task} images into {args.out}/<class>/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
