"""Pretrain the bundled demo backbone (a small timm ViT) on CIFAR-10.

Resumable: rerun the same command and it continues from the last finished epoch.
Writes ``src/e2vpt/backbones/weights/demo_vit_cifar10.safetensors`` (fp16) and
``demo_vit_cifar10.json`` (recipe + accuracy) after every epoch.

    python scripts/pretrain_demo_backbone.py --data ../shared/data/cifar10.tar.gz
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import tarfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from e2vpt.backbones.demo import CIFAR10_MEAN, CIFAR10_STD, DEMO_VIT_ARGS, build_demo_vit

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
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    return (x_uint8.float() / 255.0 - mean) / std


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random crop with 4-pixel reflect padding and horizontal flip, batched."""
    n = x.shape[0]
    padded = F.pad(x, (4, 4, 4, 4), mode="reflect")
    ox = torch.randint(0, 9, (n,), generator=gen)
    oy = torch.randint(0, 9, (n,), generator=gen)
    crop = torch.stack([padded[i, :, oy[i] : oy[i] + 32, ox[i] : ox[i] + 32] for i in range(n)])
    flip = torch.rand(n, generator=gen) < 0.5
    crop[flip] = crop[flip].flip(-1)
    return crop


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, bf16: bool) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), 500):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(normalize(x[i : i + 500]))
        correct += (logits.argmax(-1) == y[i : i + 500]).sum().item()
    return correct / len(x)


def export(model: torch.nn.Module, card: dict) -> None:
    WEIGHTS_DIR.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    target = WEIGHTS_DIR / "demo_vit_cifar10.safetensors"
    tmp = target.with_suffix(".tmp")
    save_file(state, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, target)
    card_path = WEIGHTS_DIR / "demo_vit_cifar10.json"
    tmp = card_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(card, indent=2) + "\n")
    os.replace(tmp, card_path)


def write_model_card(card: dict) -> None:
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
  {recipe["label_smoothing"]}, gradient clipping 1.0, bf16 autocast on CPU
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
    target = WEIGHTS_DIR / "README.md"
    tmp = target.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, target)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "cifar10.tar.gz"))
    p.add_argument("--work-dir", default=str(REPO / "pretrain_runs" / "demo_vit_cifar10"))
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup-epochs", type=float, default=2.0)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--no-bf16", action="store_true", help="train in fp32 instead of bf16 autocast")
    p.add_argument("--card-only", action="store_true", help="only rewrite the model card")
    args = p.parse_args()
    if args.card_only:
        write_model_card(json.loads((WEIGHTS_DIR / "demo_vit_cifar10.json").read_text()))
        return
    torch.set_num_threads(args.threads)
    bf16 = not args.no_bf16
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)

    data = decode_cifar10(Path(args.data), work / "cifar10_uint8.npz")
    train_x = torch.from_numpy(data["train_x"]).permute(0, 3, 1, 2).contiguous()
    train_y = torch.from_numpy(data["train_y"])
    test_x = torch.from_numpy(data["test_x"]).permute(0, 3, 1, 2).contiguous()
    test_y = torch.from_numpy(data["test_y"])
    print(f"CIFAR-10: train {tuple(train_x.shape)}, test {tuple(test_x.shape)}", flush=True)

    torch.manual_seed(args.seed)
    model = build_demo_vit(num_classes=10)
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
    )
    steps_per_epoch = len(train_x) // args.batch_size
    total = steps_per_epoch * args.epochs
    warm = int(steps_per_epoch * args.warmup_epochs)

    def lr_at(step: int) -> float:
        if step < warm:
            return args.lr * (step + 1) / warm
        t = (step - warm) / max(1, total - warm)
        return args.lr * 0.5 * (1 + math.cos(math.pi * t))

    state_file = work / "state.pt"
    history: list[dict] = []
    start_epoch = 0
    if state_file.exists():
        ck = torch.load(state_file, weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        start_epoch = ck["epoch"]
        history = ck["history"]
        print(f"resumed after epoch {start_epoch}", flush=True)

    for epoch in range(start_epoch, args.epochs):
        model.train()
        gen = torch.Generator().manual_seed(args.seed * 1000 + epoch)
        perm = torch.randperm(len(train_x), generator=gen)
        t0 = time.time()
        loss_sum = 0.0
        for i in range(steps_per_epoch):
            step = epoch * steps_per_epoch + i
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            idx = perm[i * args.batch_size : (i + 1) * args.batch_size]
            x = normalize(augment(train_x[idx], gen))
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(model(x), train_y[idx], label_smoothing=args.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            loss_sum += loss.item()
            if i % 50 == 0:
                print(
                    f"epoch {epoch + 1} step {i}/{steps_per_epoch} loss {loss.item():.3f} "
                    f"{time.time() - t0:.0f}s",
                    flush=True,
                )
        acc = evaluate(model, test_x, test_y, bf16)
        history.append(
            {
                "epoch": epoch + 1,
                "train_loss": loss_sum / steps_per_epoch,
                "test_acc": acc,
                "seconds": time.time() - t0,
            }
        )
        print(
            f"== epoch {epoch + 1}: loss {loss_sum / steps_per_epoch:.3f} test acc {acc:.4f} "
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
            },
            tmp,
        )
        os.replace(tmp, state_file)
        card = {
            "name": "demo_vit_cifar10",
            "architecture": DEMO_VIT_ARGS,
            "data": "CIFAR-10 train (50k), evaluated on CIFAR-10 test (10k)",
            "recipe": {k: v for k, v in vars(args).items() if k not in ("data", "work_dir")},
            "augmentation": "random crop 32 (reflect pad 4) + horizontal flip",
            "epochs_done": epoch + 1,
            "cifar10_test_top1": acc,
            "history": history,
            "command": f"python scripts/pretrain_demo_backbone.py --epochs {args.epochs}",
            "weights_dtype": "float16",
        }
        export(model, card)
        write_model_card(card)


if __name__ == "__main__":
    main()
