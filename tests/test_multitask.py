"""MultiTaskModel: samples of different tasks in one backbone pass, each equal to its
own task's model; tasks come and go without touching the others."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import e2vpt
from e2vpt.multitask import MultiTaskModel
from tests.conftest import make_tiny_swin, make_tiny_vit


def perturbed(model: e2vpt.PromptedModel) -> e2vpt.PromptedModel:
    """Every trainable part moved off its init (zero-initialised ones too)."""
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def task_models(backbone: torch.nn.Module) -> dict[str, e2vpt.PromptedModel]:
    torch.manual_seed(0)
    configs = {
        "linear": (e2vpt.LinearConfig(), 3),
        "shallow": (e2vpt.VPTConfig(tokens=2), 4),
        "deep": (e2vpt.VPTConfig(tokens=5, deep=True), 5),
        "e2vpt": (e2vpt.E2VPTConfig(visual_tokens=4, kv_tokens=2), 6),
        "e2vpt-separate-kv": (e2vpt.E2VPTConfig(visual_tokens=3, kv_tokens=3, shared_kv=False), 2),
        "mlp": (e2vpt.method_config("mlp"), 7),
        "sidetune": (e2vpt.method_config("sidetune", {"channels": 8, "conv_layers": 2}), 3),
    }
    models = {n: perturbed(e2vpt.wrap(backbone, c, k)) for n, (c, k) in configs.items()}
    pruned = perturbed(e2vpt.wrap(backbone, e2vpt.E2VPTConfig(visual_tokens=6, kv_tokens=1), 4))
    segments = torch.ones(2, pruned.visual_prompts.mask_segments, dtype=torch.bool)
    segments[1, ::3] = False
    pruned.visual_prompts.prune(torch.tensor([1, 4]), segments, mode="remove")
    models["e2vpt-pruned"] = pruned
    zeroed = perturbed(e2vpt.wrap(backbone, e2vpt.E2VPTConfig(visual_tokens=3, kv_tokens=2), 4))
    zeroed.visual_prompts.prune(torch.tensor([0]), torch.ones(1, 16, dtype=torch.bool), mode="zero")
    models["e2vpt-zero-pruned"] = zeroed
    return models


def test_a_mixed_batch_equals_every_task_alone(images: torch.Tensor) -> None:
    backbone = make_tiny_vit()
    models = task_models(backbone)
    multi = MultiTaskModel(backbone, models)
    names = list(models)
    batch = images.repeat(5, 1, 1, 1)[: 2 * len(names)]
    tasks = [names[i % len(names)] for i in range(len(batch))][::-1]
    got = multi(batch, tasks)
    with torch.no_grad():
        for i, (image, task) in enumerate(zip(batch, tasks, strict=True)):
            alone = models[task](image[None])[0]
            assert got[i].shape == alone.shape
            torch.testing.assert_close(got[i], alone, rtol=0, atol=1e-5)
    # one task alone in a batch, and a task removed: the others do not move
    only = multi(batch[:3], ["deep"] * 3)
    multi.remove_task("shallow")
    again = multi(batch[:3], ["deep"] * 3)
    for a, b in zip(only, again, strict=True):
        assert torch.equal(a, b)
    with pytest.raises(e2vpt.ConfigError, match="unknown task.*'shallow'.*add_task"):
        multi(batch[:1], ["shallow"])


def test_tasks_from_run_folders_and_what_is_refused(images: torch.Tensor, tmp_path: Path) -> None:
    backbone = e2vpt.create_backbone("demo_vit_cifar10")
    model = perturbed(
        e2vpt.wrap(e2vpt.create_backbone("demo_vit_cifar10"), e2vpt.VPTConfig(tokens=3), 4)
    )
    e2vpt.save(model, tmp_path / "vpt")
    adapter = e2vpt.wrap(
        e2vpt.create_backbone("demo_vit_cifar10"), e2vpt.method_config("adapter"), 4
    )
    e2vpt.save(adapter, tmp_path / "adapter")
    multi = MultiTaskModel(backbone, {"vpt": tmp_path / "vpt"})
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            torch.stack(multi(x, ["vpt", "vpt"])), model(x), rtol=0, atol=1e-5
        )
    with pytest.raises(e2vpt.ConfigError, match="adapter model, which changes the backbone"):
        multi.add_task("adapter", tmp_path / "adapter")
    with pytest.raises(e2vpt.ConfigError, match="already in the model"):
        multi.add_task("vpt", tmp_path / "vpt")
    other = make_tiny_vit()
    with pytest.raises(e2vpt.CheckpointError, match="backbone given differs"):
        MultiTaskModel(other, {"vpt": tmp_path / "vpt"})
    pooled = e2vpt.wrap(make_tiny_vit(), e2vpt.LinearConfig(), 3, global_pool="avg")
    with pytest.raises(e2vpt.ConfigError, match="pools by 'avg'.*pools by token"):
        MultiTaskModel(pooled.backbone, {"avg": pooled})
    with pytest.raises(e2vpt.ConfigError, match="wraps another backbone object"):
        multi.add_task("x", e2vpt.wrap(make_tiny_vit(), e2vpt.LinearConfig(), 3))


def test_swin_tasks_share_a_batch(images: torch.Tensor) -> None:
    """Swin: prompts joined to every window, shallow ones dropped at the first patch
    merging, key-value prompts in every window attention, each padded per sample."""
    backbone = make_tiny_swin()
    torch.manual_seed(1)
    configs = {
        "linear": (e2vpt.LinearConfig(), 3),
        "shallow": (e2vpt.VPTConfig(tokens=2), 4),
        "deep": (e2vpt.VPTConfig(tokens=4, deep=True), 5),
        "e2vpt": (e2vpt.E2VPTConfig(visual_tokens=3, kv_tokens=2), 6),
        "kv-only": (e2vpt.E2VPTConfig(visual_tokens=0, kv_tokens=3, shared_kv=False), 2),
    }
    models = {n: perturbed(e2vpt.wrap(backbone, c, k)) for n, (c, k) in configs.items()}
    multi = MultiTaskModel(backbone, models)
    names = list(models)
    batch = images.repeat(3, 1, 1, 1)[: 2 * len(names)]
    tasks = [names[(3 * i) % len(names)] for i in range(len(batch))]
    got = multi(batch, tasks)
    with torch.no_grad():
        for i, (image, task) in enumerate(zip(batch, tasks, strict=True)):
            torch.testing.assert_close(got[i], models[task](image[None])[0], rtol=0, atol=1e-5)


def test_task_names_are_any_strings_the_modules_keys_are_ours(images: torch.Tensor) -> None:
    """A name with a dot, or one of the module's own attributes, is a task like any other:
    the model keeps its tasks under keys it makes, never under the names."""
    backbone = make_tiny_vit()
    torch.manual_seed(3)
    names = ["a.b", "backbone", "task_modules", "forward", "task0"]
    models = {n: perturbed(e2vpt.wrap(backbone, e2vpt.VPTConfig(tokens=2), 3)) for n in names}
    multi = MultiTaskModel(backbone, models)
    assert multi.task_names == names and multi.tasks["a.b"] is models["a.b"]
    assert {key.split(".")[1] for key in multi.state_dict() if key.startswith("task_modules.")} == {
        f"task{i}" for i in range(len(names))
    }
    batch = images.repeat(2, 1, 1, 1)[: len(names)]
    got = multi(batch, names)
    with torch.no_grad():
        for image, name, logits in zip(batch, names, got, strict=True):
            torch.testing.assert_close(logits, models[name](image[None])[0], rtol=0, atol=1e-5)
    multi.remove_task("a.b")
    multi.add_task("a.b", models["a.b"])  # a new key: keys are never reused
    assert "task5" in dict(multi.task_modules.named_children())
    with pytest.raises(e2vpt.ConfigError, match="non-empty string"):
        multi.add_task("", models["forward"])
