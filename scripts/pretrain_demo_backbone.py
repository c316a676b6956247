"""Pretrain the bundled demo backbone (a small timm ViT) on CIFAR-10, on CPU or GPU.

Resumable: rerun the same command and it continues from the last finished epoch (a
rerun with another recipe is refused; ``--time-budget`` stops it cleanly after an
epoch). Writes ``demo_vit_cifar10.safetensors`` (fp16), ``demo_vit_cifar10.json``
(recipe, accuracy, history, the previous weights' figures) and ``README.md`` (the model
card) into ``--out-dir`` after every epoch: by default the bundled weights folder. The
training curves (each update's loss and lr, each epoch's loss and test top-1) go to
``--work-dir``/tb for ``tensorboard --logdir`` (when tensorboard is installed; a resumed
run continues them; ``--no-tensorboard``: none).

    python scripts/pretrain_demo_backbone.py --data ../shared/data/cifar10.tar.gz
    # the stronger GPU recipe (see README, "The GPU campaign"):
    python scripts/pretrain_demo_backbone.py --device cuda --epochs 300 --batch-size 512 \
        --lr 2e-3 --warmup-epochs 10 --mixup 0.8 --cutmix 1.0 --trivial-augment \
        --random-erasing 0.25 --out-dir campaign/pretrain/weights
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import random
import shlex
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from e2vpt.backbones.demo import CIFAR10_MEAN, CIFAR10_STD, DEMO_VIT_ARGS, build_demo_vit
from e2vpt.training.tracking import open_tracker

REPO = Path(__file__).resolve().parents[1]
WEIGHTS_DIR = REPO / "src" / "e2vpt" / "backbones" / "weights"


def decode_cifar10(tar_path: Path, cache: Path) -> dict[str, np.ndarray]:
    """Decode the JPEG image-folder tarball once into uint8 arrays (cached as .npz)."""
    if cache.exists():
        with np.load(cache) as z:
            return {k: z[k] for k in z.files}
    images: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    labels: dict[str, list[int]] = {"train": [], "test": []}
    members = []
    with tarfile.open(tar_path) as tar:
        for m in tar:
            if m.isfile() and m.name.endswith(".jpg"):
                parts = m.name.split("/")
                members.append((parts[-3], parts[-2], m.name, tar.extractfile(m).read()))
    classes = sorted({c for _, c, _, _ in members})
    for split, cls, _, data in sorted(members, key=lambda t: t[2]):
        img = Image.open(io.BytesIO(data)).convert("RGB")
        images[split].append(np.asarray(img, dtype=np.uint8))
        labels[split].append(classes.index(cls))
    out = {
        "train_x": np.stack(images["train"]),
        "train_y": np.array(labels["train"], dtype=np.int64),
        "test_x": np.stack(images["test"]),
        "test_y": np.array(labels["test"], dtype=np.int64),
        "classes": np.array(classes),
    }
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp.npz")
    np.savez(tmp, **out)
    os.replace(tmp, cache)
    return out


def normalize(x_uint8: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(CIFAR10_MEAN, device=x_uint8.device).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD, device=x_uint8.device).view(1, 3, 1, 1)
    return (x_uint8.float() / 255.0 - mean) / std


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random crop with 4-pixel reflect padding and horizontal flip, batched on x's
    device (one gather, no per-image loop)."""
    n, size = x.shape[0], x.shape[-1]
    padded = F.pad(x.float(), (4, 4, 4, 4), mode="reflect").to(x.dtype)
    ox = torch.randint(0, 9, (n,), generator=gen).to(x.device)
    oy = torch.randint(0, 9, (n,), generator=gen).to(x.device)
    base = torch.arange(size, device=x.device)
    rows = (oy[:, None] + base)[:, :, None]  # n × size × 1
    cols = (ox[:, None] + base)[:, None, :]  # n × 1 × size
    batch = torch.arange(n, device=x.device)[:, None, None]
    crop = padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)
    flip = (torch.rand(n, generator=gen) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], crop.flip(-1), crop).contiguous()


def trivial_augment(x: torch.Tensor, groups: int = 16) -> torch.Tensor:
    """TrivialAugmentWide (one random op at a random strength) on uint8 images, one draw
    per group of the batch (torchvision's tensor transforms apply one draw per call)."""
    from torchvision.transforms import v2

    op = v2.TrivialAugmentWide()
    return torch.cat([op(chunk) for chunk in x.chunk(groups)])


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, bf16: bool) -> float:
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, len(x), 500):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(normalize(x[i : i + 500].to(device)))
        correct += (logits.argmax(-1).cpu() == y[i : i + 500]).sum().item()
    return correct / len(x)


def machine_description(device: torch.device, threads: int) -> str:
    if device.type == "cuda":
        return f"one {torch.cuda.get_device_name(device)} ({platform.processor() or 'x86-64'} host)"
    return f"{threads}-core CPU ({platform.processor() or platform.machine()}), no GPU"


def export(model: torch.nn.Module, card: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {
        k: v.detach().to(torch.float16).cpu().contiguous() for k, v in model.state_dict().items()
    }
    target = out_dir / "demo_vit_cifar10.safetensors"
    tmp = target.with_suffix(".tmp")
    save_file(state, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, target)
    card_path = out_dir / "demo_vit_cifar10.json"
    tmp = card_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(card, indent=2) + "\n")
    os.replace(tmp, card_path)


def write_model_card(card: dict, out_dir: Path) -> None:
    """The human-readable card beside the weights, from the JSON the run wrote."""
    arch = card["architecture"]
    recipe = card["recipe"]
    rows = "\n".join(
        f"| {h['epoch']} | {h['train_loss']:.3f} | {100 * h['test_acc']:.2f} | {h['seconds']:.0f} |"
        for h in card["history"]
    )
    text = f"""# Model card: `demo_vit_cifar10`

The bundled demo backbone of e2vpt: a small timm `VisionTransformer` pretrained from
scratch on CIFAR-10 so that e2vpt can be tried offline, with no download.

* Architecture: ViT, {arch["img_size"]}×{arch["img_size"]} input, patch {arch["patch_size"]},
  width {arch["embed_dim"]}, depth {arch["depth"]}, {arch["num_heads"]} heads,
  MLP ratio {arch["mlp_ratio"]}, CLS token + CLS pooling; 2.69 M parameters
  (without head). Weights stored as float16 safetensors, loaded as float32.
* Data: {card["data"]}; normalised with CIFAR-10 mean/std.
* Recipe: AdamW lr {recipe["lr"]}, weight decay {recipe["weight_decay"]} (not on norms,
  biases, position embedding, CLS), batch {recipe["batch_size"]}, {recipe["warmup_epochs"]}
  warm-up epochs then cosine, {recipe["epochs"]} epochs, label smoothing
  {recipe["label_smoothing"]}, gradient clipping 1.0, bf16 autocast
  ({"on" if not recipe.get("no_bf16") else "off"}); augmentation: {card["augmentation"]}.
* **CIFAR-10 test top-1: {100 * card["cifar10_test_top1"]:.2f} %** after
  {card["epochs_done"]} epochs.
* Made by: `{card["command"]}` (resumable; the CIFAR-10 tarball is
  `../shared/data/cifar10.tar.gz`, an image folder of JPEG re-encodes).
* Machine: {card.get("machine", "2-core AMD EPYC CPU, no GPU")}.
{("* Note: " + card["notes"]) if card.get("notes") else ""}
* Intended use: demos, tests and CPU benchmarks of prompt tuning. It is far weaker than
  an ImageNet-21k ViT; accuracy figures obtained with it are not comparable to the
  papers'.

| epoch | train loss | CIFAR-10 test top-1 % | seconds |
|---|---|---|---|
{rows}
"""
    previous = card.get("previous") or []
    if previous:
        text += "\n## Earlier versions of these weights\n\n"
        text += "| CIFAR-10 test top-1 % | epochs | recipe | machine |\n|---|---|---|---|\n"
        for old in previous:
            text += (
                f"| {100 * old['cifar10_test_top1']:.2f} | {old['epochs_done']} | "
                f"`{old['command']}` | {old.get('machine', '')} |\n"
            )
    target = out_dir / "README.md"
    tmp = target.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, target)


# options that do not change what is trained: a resumed run may change them
RUNTIME_OPTIONS = (
    "data",
    "work_dir",
    "out_dir",
    "threads",
    "time_budget",
    "card_only",
    "device",
    "tensorboard",
)


def recipe_of(args: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(args).items() if k not in RUNTIME_OPTIONS}


def augmentation_of(args: argparse.Namespace) -> str:
    parts = ["random crop 32 (reflect pad 4) + horizontal flip"]
    if args.trivial_augment:
        parts.append("TrivialAugmentWide")
    if args.mixup or args.cutmix:
        parts.append(f"mixup α {args.mixup} / cutmix α {args.cutmix} (timm Mixup)")
    if args.random_erasing:
        parts.append(f"random erasing p {args.random_erasing}")
    return " + ".join(parts)


def previous_cards(out_dir: Path) -> list[dict]:
    """The figures of the weights these replace: the card in ``out_dir``, else the
    bundled one (with its own history of earlier versions)."""
    for folder in (out_dir, WEIGHTS_DIR):
        path = folder / "demo_vit_cifar10.json"
        if path.is_file():
            old = json.loads(path.read_text())
            keep = ("cifar10_test_top1", "epochs_done", "command", "machine", "recipe")
            summary = {k: old.get(k) for k in keep}
            # the first card predates the field; its text names the machine
            summary["machine"] = summary["machine"] or "2-core AMD EPYC CPU, no GPU"
            return [summary] + list(old.get("previous") or [])
    return []


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "cifar10.tar.gz"))
    p.add_argument("--work-dir", default=str(REPO / "pretrain_runs" / "demo_vit_cifar10"))
    p.add_argument(
        "--out-dir", default=str(WEIGHTS_DIR), help="weights + card (default: the bundled ones)"
    )
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup-epochs", type=float, default=2.0)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--mixup", type=float, default=0.0, help="mixup alpha (0: off)")
    p.add_argument("--cutmix", type=float, default=0.0, help="cutmix alpha (0: off)")
    p.add_argument("--trivial-augment", action="store_true", help="TrivialAugmentWide")
    p.add_argument("--random-erasing", type=float, default=0.0, help="probability (0: off)")
    p.add_argument("--limit-train", type=int, default=0, help="first N training images (smoke)")
    p.add_argument("--limit-test", type=int, default=0, help="first N test images (smoke)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument(
        "--time-budget",
        type=float,
        default=0.0,
        help="seconds: stop after the epoch that would overrun it (rerun to continue; 0: none)",
    )
    p.add_argument("--no-bf16", action="store_true", help="train in fp32 instead of bf16 autocast")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (GPU)")
    p.add_argument("--card-only", action="store_true", help="only rewrite the model card")
    p.add_argument(
        "--tensorboard",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="training curves in --work-dir/tb (needs the tensorboard package)",
    )
    args = p.parse_args()
    out_dir = Path(args.out_dir)
    if args.card_only:
        write_model_card(json.loads((out_dir / "demo_vit_cifar10.json").read_text()), out_dir)
        return
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("pretrain: --device cuda but no CUDA device is visible; use --device cpu")
    if not Path(args.data).is_file():
        sys.exit(f"pretrain: CIFAR-10 tarball {args.data} not found; pass --data")
    torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = True
    bf16 = not args.no_bf16
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    state_file = work / "state.pt"
    saved = torch.load(state_file, weights_only=False) if state_file.exists() else None
    if saved is not None and saved.get("recipe", recipe_of(args)) != recipe_of(args):
        changed = {
            k: (saved["recipe"].get(k), v)
            for k, v in recipe_of(args).items()
            if saved["recipe"].get(k) != v
        }
        sys.exit(
            f"pretrain: {work} holds a run of another recipe (saved vs now: {changed}); "
            "rerun with its options, or pass another --work-dir"
        )

    data = decode_cifar10(Path(args.data), work / "cifar10_uint8.npz")
    train_x = torch.from_numpy(data["train_x"]).permute(0, 3, 1, 2).contiguous()
    train_y = torch.from_numpy(data["train_y"])
    test_x = torch.from_numpy(data["test_x"]).permute(0, 3, 1, 2).contiguous()
    test_y = torch.from_numpy(data["test_y"])
    subset = torch.Generator().manual_seed(0)  # a fixed random subset: every class
    if args.limit_train:
        keep = torch.randperm(len(train_x), generator=subset)[: args.limit_train]
        train_x, train_y = train_x[keep], train_y[keep]
    if args.limit_test:
        keep = torch.randperm(len(test_x), generator=subset)[: args.limit_test]
        test_x, test_y = test_x[keep], test_y[keep]
    # the uint8 images live on the device: augmentation runs there, batched
    train_x, train_y = train_x.to(device), train_y.to(device)
    print(f"CIFAR-10: train {tuple(train_x.shape)}, test {tuple(test_x.shape)} on {device}")

    torch.manual_seed(args.seed)
    model = build_demo_vit(num_classes=10).to(device)
    decay = [
        p_
        for n, p_ in model.named_parameters()
        if p_.ndim > 1 and "pos_embed" not in n and "cls_token" not in n
    ]
    no_decay = [
        p_
        for n, p_ in model.named_parameters()
        if not (p_.ndim > 1 and "pos_embed" not in n and "cls_token" not in n)
    ]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": args.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=args.lr,
        fused=device.type == "cuda",
    )
    steps_per_epoch = len(train_x) // args.batch_size
    if steps_per_epoch < 1:
        sys.exit(f"pretrain: {len(train_x)} training images < --batch-size {args.batch_size}")
    total = steps_per_epoch * args.epochs
    warm = max(1, int(steps_per_epoch * args.warmup_epochs))

    def lr_at(step: int) -> float:
        if step < warm:
            return args.lr * (step + 1) / warm
        t = (step - warm) / max(1, total - warm)
        return args.lr * 0.5 * (1 + math.cos(math.pi * t))

    mixing = None
    if args.mixup or args.cutmix:
        from timm.data import Mixup

        mixing = Mixup(
            mixup_alpha=args.mixup,
            cutmix_alpha=args.cutmix,
            label_smoothing=args.label_smoothing,
            num_classes=10,
        )
    erasing = None
    if args.random_erasing:
        from timm.data.random_erasing import RandomErasing

        erasing = RandomErasing(args.random_erasing, mode="pixel", device=str(device))
    forward = torch.compile(model) if args.compile else model

    history: list[dict] = []
    start_epoch = 0
    if saved is not None:
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        start_epoch = saved["epoch"]
        history = saved["history"]
        print(f"resumed after epoch {start_epoch}", flush=True)
    previous = saved.get("previous") if saved else previous_cards(out_dir)
    command = "python scripts/pretrain_demo_backbone.py " + " ".join(
        shlex.quote(a) for a in sys.argv[1:] if not a.startswith("--time-budget")
    )
    began = time.time()
    # the curves at the update count: a resumed run drops what its predecessor logged
    # after the saved epoch, and continues them
    tracker = open_tracker(work, args.tensorboard, True, start_epoch * steps_per_epoch + 1)
    try:
        for epoch in range(start_epoch, args.epochs):
            spent = time.time() - began
            per_epoch = spent / max(1, epoch - start_epoch)
            if args.time_budget and epoch > start_epoch and spent + per_epoch > args.time_budget:
                print(
                    f"pretrain: stopped after epoch {epoch} of {args.epochs} (time budget "
                    f"{args.time_budget:.0f} s); rerun the same command to continue",
                    flush=True,
                )
                return
            model.train()
            # every epoch's randomness from its own seed: a resumed run draws what an
            # uninterrupted one would (TrivialAugment: torch's global generator; timm's
            # Mixup: numpy's; RandomErasing: Python's)
            epoch_seed = args.seed * 1000 + epoch
            torch.manual_seed(epoch_seed)
            np.random.seed(epoch_seed)
            random.seed(epoch_seed)
            gen = torch.Generator().manual_seed(epoch_seed)
            perm = torch.randperm(len(train_x), generator=gen).to(device)
            t0 = time.time()
            loss_sum = torch.zeros((), device=device)
            update_losses: list[torch.Tensor] = []
            for i in range(steps_per_epoch):
                step = epoch * steps_per_epoch + i
                for g in opt.param_groups:
                    g["lr"] = lr_at(step)
                idx = perm[i * args.batch_size : (i + 1) * args.batch_size]
                images = augment(train_x[idx], gen)
                if args.trivial_augment:
                    images = trivial_augment(images)
                x, y = normalize(images), train_y[idx]
                if mixing is not None:
                    x, y = mixing(x, y)  # soft targets, label smoothing included
                if erasing is not None:
                    x = erasing(x)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    logits = forward(x)
                if mixing is not None:
                    loss = torch.sum(-y * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
                else:
                    loss = F.cross_entropy(logits.float(), y, label_smoothing=args.label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                loss_sum += loss.detach()
                if tracker.active:
                    update_losses.append(loss.detach())
                if i % 50 == 0 and device.type == "cpu":
                    print(
                        f"epoch {epoch + 1} step {i}/{steps_per_epoch} loss {loss.item():.3f} "
                        f"{time.time() - t0:.0f}s",
                        flush=True,
                    )
            acc = evaluate(model, test_x, test_y, bf16)
            mean_loss = loss_sum.item() / steps_per_epoch
            first, last = epoch * steps_per_epoch + 1, (epoch + 1) * steps_per_epoch
            if update_losses:
                lrs = [lr_at(step - 1) for step in range(first, last + 1)]
                tracker.log_updates(first, torch.stack(update_losses).tolist(), lrs)
            tracker.log(
                last,
                {
                    "epoch/train_loss": mean_loss,
                    "epoch/test_top1": acc,
                    "epoch/epoch": epoch + 1,
                    "epoch/seconds": time.time() - t0,
                },
            )
            history.append(
                {
                    "epoch": epoch + 1,
                    "train_loss": mean_loss,
                    "test_acc": acc,
                    "seconds": time.time() - t0,
                }
            )
            print(
                f"== epoch {epoch + 1}: loss {mean_loss:.3f} test acc {acc:.4f} "
                f"({time.time() - t0:.0f}s)",
                flush=True,
            )
            tmp = state_file.with_suffix(".tmp")
            torch.save(
                {
                    "model": model.state_dict(),
                    "opt": opt.state_dict(),
                    "epoch": epoch + 1,
                    "history": history,
                    "recipe": recipe_of(args),
                    "previous": previous,
                },
                tmp,
            )
            os.replace(tmp, state_file)
            card = {
                "name": "demo_vit_cifar10",
                "architecture": DEMO_VIT_ARGS,
                "data": "CIFAR-10 train (50k), evaluated on CIFAR-10 test (10k)"
                if not (args.limit_train or args.limit_test)
                else f"CIFAR-10, first {len(train_x)} train / {len(test_x)} test images",
                "recipe": recipe_of(args),
                "augmentation": augmentation_of(args),
                "epochs_done": epoch + 1,
                "cifar10_test_top1": acc,
                "history": history,
                "command": command,
                "machine": machine_description(device, args.threads),
                "weights_dtype": "float16",
                "previous": previous,
            }
            export(model, card, out_dir)
            write_model_card(card, out_dir)
    finally:
        tracker.close()


if __name__ == "__main__":
    main()
