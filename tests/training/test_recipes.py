"""The official recipe against a reference written from its facts, and its errors.

The reference below implements the official VPT / E²VPT training loop from the facts
alone (per-epoch warm-up + cosine, SGD with momentum written out, weight decay on every
tuned tensor but the head bias, lr = base_lr × batch / 256, ImageNet statistics) and
reuses e2vpt's model only for the forward pass, which is checked against timm elsewhere.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

import e2vpt
from e2vpt.cli.main import main
from e2vpt.data import Task
from e2vpt.recipes import choices_table
from e2vpt.reporting import format_table
from e2vpt.training.config import TrainConfig
from e2vpt.training.optim import parameter_groups
from e2vpt.training.trainer import train
from tests.conftest import make_tiny_vit, small_builtin_task

REPO = Path(__file__).resolve().parents[2]
EPOCHS, WARMUP, BATCH, BASE_LR, WD = 4, 2, 16, 2.0, 1e-3  # 80 images: 5 updates per epoch


@pytest.fixture(scope="module")
def task() -> Task:
    return small_builtin_task("position", (80, 16, 16))


def official_lr_factor(epoch: int, warmup: int, total: int) -> float:
    """The official schedule: e/W during warm-up, then half a cosine; one value per epoch."""
    if epoch < warmup:
        return epoch / warmup
    return 0.5 * (1 + math.cos(math.pi * (epoch - warmup) / (total - warmup)))


def official_config(out: Path, method: str, options: dict[str, Any]) -> TrainConfig:
    return TrainConfig(
        recipe="official",
        method=method,
        method_config=options,
        epochs=EPOCHS,
        warmup_epochs=WARMUP,
        batch_size=BATCH,
        base_lr=BASE_LR,
        weight_decay=WD,
        val_split=None,
        eval_split=None,
        precision="fp32",
        device="cpu",
        output_dir=str(out),
        progress=False,
    )


def reference_run(
    model: e2vpt.PromptedModel, rng_state: torch.Tensor, task: Task, seed: int
) -> tuple[dict[str, torch.Tensor], list[float]]:
    """The official loop, written out. The batch order is e2vpt's (a seeded permutation
    per epoch); the global RNG starts where the trainer's did, so prompt dropout draws
    the same masks."""
    images, labels = task.split("train").images, task.split("train").labels
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)
    tuned = {n: p for n, p in model.named_parameters() if p.requires_grad}
    buffers: dict[str, torch.Tensor] = {}
    order = torch.Generator().manual_seed(seed)
    torch.set_rng_state(rng_state)
    losses = []
    model.train()
    for epoch in range(EPOCHS):
        lr = BASE_LR * BATCH / 256 * official_lr_factor(epoch, WARMUP, EPOCHS)
        total = 0.0
        for idx in torch.randperm(len(labels), generator=order).split(BATCH):
            x = (images[idx].float() / 255 - mean) / std
            loss = F.cross_entropy(model(x), labels[idx])
            grads = torch.autograd.grad(loss, list(tuned.values()))
            with torch.no_grad():
                for (name, p), g in zip(tuned.items(), grads, strict=True):
                    d = g + (0.0 if name == "head.bias" else WD) * p
                    buffers[name] = d.clone() if name not in buffers else 0.9 * buffers[name] + d
                    p -= lr * buffers[name]
            total += loss.item() * len(idx)
        losses.append(total / len(labels))
    return {n: p.detach() for n, p in tuned.items()}, losses


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("vpt-shallow", {"tokens": 3}),
        ("vpt-deep", {"tokens": 3}),
        ("e2vpt", {"visual_tokens": 3, "kv_tokens": 2}),  # with dropout 0.1 and trained masks
        ("e2vpt", {"visual_tokens": 3, "kv_tokens": 2, "shared_kv": False}),
    ],
    ids=["vpt-shallow", "vpt-deep", "e2vpt", "e2vpt-separate-kv"],
)
def test_official_recipe_follows_the_reference_for_20_updates(
    method: str, options: dict[str, Any], task: Task, tmp_path: Path
) -> None:
    start: dict[str, Any] = {}

    def capture(model: e2vpt.PromptedModel) -> None:
        start["model"] = copy.deepcopy(model)
        start["rng"] = torch.get_rng_state()

    cfg = official_config(tmp_path / "run", method, options)
    train(cfg, task=task, customize=capture)
    expected, losses = reference_run(start["model"], start["rng"], task, cfg.seed)
    got = e2vpt.load(tmp_path / "run")
    tuned = dict(got.named_parameters())
    assert set(expected) <= set(tuned) and len(expected) >= 3
    for name, value in expected.items():
        torch.testing.assert_close(tuned[name].detach(), value, rtol=0, atol=1e-5, msg=name)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [m["train_loss"] for m in metrics] == pytest.approx(losses, rel=1e-5)
    # epoch 0 runs at lr 0, and the lr is constant within each epoch
    lrs = [m["lr"] for m in metrics]
    factors = [official_lr_factor(e, WARMUP, EPOCHS) for e in range(EPOCHS)]
    assert lrs == pytest.approx([BASE_LR * BATCH / 256 * f for f in factors])
    assert factors[0] == 0.0 and lrs[1] > 0


def test_default_recipe_changes_the_lr_every_update(task: Task, tmp_path: Path) -> None:
    seen: list[float] = []
    cfg = official_config(tmp_path / "run", "vpt-deep", {"tokens": 2})
    cfg.recipe = "default"
    from torch.optim import SGD

    real_step = SGD.step

    def record(self: SGD, *args: Any, **kwargs: Any) -> Any:
        seen.append(self.param_groups[0]["lr"])
        return real_step(self, *args, **kwargs)

    SGD.step = record  # type: ignore[method-assign]
    try:
        train(cfg, task=task)
    finally:
        SGD.step = real_step  # type: ignore[method-assign]
    assert len(seen) == 20 and len(set(seen)) > EPOCHS  # not one value per epoch
    assert seen[0] == 0.0 and max(seen) <= BASE_LR * BATCH / 256


def test_init_distributions_are_the_official_ones() -> None:
    classes = 400
    model = e2vpt.wrap(make_tiny_vit(), e2vpt.E2VPTConfig(visual_tokens=2, kv_tokens=5), classes)
    weight, bias = model.head.weight.detach(), model.head.bias.detach()
    # kaiming_normal_(fan_out): std √(2 / C); bias −log((1 − 0.01) / 0.01)
    assert weight.std().item() == pytest.approx(math.sqrt(2 / classes), rel=0.03)
    assert abs(weight.mean().item()) < 0.01
    assert torch.allclose(bias, torch.full_like(bias, -math.log(99)))
    kv = model.kv_prompts[1].key_prompt.detach()  # (heads, m, head_dim)
    heads, m, head_dim = kv.shape
    bound = math.sqrt(6 / (m * head_dim))
    assert kv.abs().max() <= bound and kv.abs().max() > 0.9 * bound
    # uniform on [−b, b]: variance b²/3
    assert kv.var().item() == pytest.approx(bound**2 / 3, rel=0.15)
    assert math.sqrt(6 / (5 * 64)) == pytest.approx(0.137, abs=5e-4)  # m = 5 on ViT-B
    timm_head = e2vpt.wrap(make_tiny_vit(), e2vpt.LinearConfig(), classes, head_init="trunc-normal")
    assert timm_head.head.weight.std().item() == pytest.approx(0.02, rel=0.1)


def test_weight_decay_reaches_every_tuned_tensor_but_the_head_bias() -> None:
    model = e2vpt.wrap(make_tiny_vit(), e2vpt.E2VPTConfig(visual_tokens=2, kv_tokens=2), 5)
    decay, no_decay = parameter_groups(model, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    assert [names[id(p)] for p in no_decay["params"]] == ["head.bias"]
    decayed = {names[id(p)] for p in decay["params"]}
    assert {"visual_prompts.prompts", "visual_prompts.token_mask", "head.weight"} <= decayed
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"recipe": "papers"}, "unknown recipe 'papers'; choose one of default, official"),
        ({"lr_schedule_unit": "update"}, "drop `lr_schedule_unit` or use `recipe` default"),
        ({"normalize": "backbone"}, "drop `normalize` or use `recipe` default"),
        ({"head_init": "trunc-normal"}, "drop `head_init` or use `recipe` default"),
        (
            {"method": "vpt-deep", "method_config": {"dropout": 0.1}},
            "fixes vpt-deep's dropout=0.1 \\(official: 0.0\\)",
        ),
        ({"method_config": {"train_masks": False}}, "fixes e2vpt's train_masks=False"),
        ({"method_config": {"kv_init": "width"}}, "fixes e2vpt's kv_init='width'"),
    ],
)
def test_a_choice_that_contradicts_the_official_recipe_is_an_error(
    values: dict[str, Any], message: str
) -> None:
    cfg = TrainConfig(**{"recipe": "official", **values})
    with pytest.raises(e2vpt.ConfigError, match=message):
        cfg.validate()
    # the same explicit values are fine under the default recipe (unless unknown)
    if "recipe" not in values:
        TrainConfig(**values).validate()


def test_the_official_recipe_accepts_its_own_values_given_explicitly() -> None:
    TrainConfig(
        recipe="official",
        lr_schedule_unit="epoch",
        normalize="imagenet",
        head_init="kaiming",
        method_config={"train_masks": True, "segment_layout": "interleaved"},
    ).validate()


def test_cli_recipe_errors_are_one_line_and_leave_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    code = main(
        ["train", "--recipe", "official", "--lr-schedule-unit", "update", "--output-dir", str(out)]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--recipe official uses --lr-schedule-unit" in err[0]
    assert not out.exists()


def test_docs_hold_the_table_of_choices() -> None:
    recipes_page = (REPO / "docs" / "recipes.md").read_text()
    assert format_table(choices_table()) in recipes_page


def test_runs_saved_before_recipes_existed_are_read_as_they_trained(tmp_path: Path) -> None:
    cfg = TrainConfig(method="e2vpt", method_config={"visual_tokens": 3})
    values = cfg.to_dict()
    for name in ("recipe", "lr_schedule_unit", "head_init", "normalize"):
        del values[name]
    import yaml

    (tmp_path / "train_config.yaml").write_text(yaml.safe_dump(values))
    old = TrainConfig.from_run_folder(tmp_path)
    assert old.resolved("lr_schedule_unit") == "update"
    assert old.resolved("head_init") == "trunc-normal"
    assert old.resolved("normalize") == "backbone"
    method = old.build_method_config()
    assert (method.kv_init, method.segment_layout, method.train_masks) == (
        "width",
        "contiguous",
        False,
    )
    assert method.visual_tokens == 3
    # a current run folder reads back as written
    (tmp_path / "train_config.yaml").write_text(cfg.to_yaml())
    assert TrainConfig.from_run_folder(tmp_path) == cfg
