"""Pruning semantics: masks, real token removal, sparse segments, importance, plans."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

import e2vpt
from e2vpt.checkpoint import TENSORS_FILE
from e2vpt.pruning import (
    ImportanceScores,
    PruningPlan,
    apply_plan,
    check_fractions,
    importance_scores,
    make_plan,
)
from tests.conftest import make_tiny_vit

TOKENS, SEGMENTS = 4, 16  # tiny ViT: width 64 → 4 dims per segment


def trained_e2vpt(seed: int = 0) -> e2vpt.PromptedViT:
    """A tiny E²VPT model whose tunable tensors are all non-trivial."""
    # fixed masks and contiguous segments: the layout the hand-written references below use
    config = e2vpt.E2VPTConfig(
        visual_tokens=TOKENS, kv_tokens=2, train_masks=False, segment_layout="contiguous"
    )
    model = e2vpt.wrap(make_tiny_vit(), config, 5)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * 0.3)
    return model.eval()


def logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def test_all_ones_masks_leave_the_outputs_unchanged(images: torch.Tensor) -> None:
    model = trained_e2vpt()
    before = logits(model, images)
    model.visual_prompts.masks_active = True
    assert torch.equal(logits(model, images), before)


def test_token_pruned_model_equals_a_smaller_fresh_model(images: torch.Tensor) -> None:
    model = trained_e2vpt()
    kept = [0, 2, 3]
    prompts_before = model.visual_prompts.prompts.detach().clone()
    model.visual_prompts.prune(torch.tensor(kept), torch.ones(len(kept), SEGMENTS))

    fresh = e2vpt.wrap(
        make_tiny_vit(), e2vpt.E2VPTConfig(visual_tokens=len(kept), kv_tokens=2), 5
    ).eval()
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("visual_prompts.")}
    fresh.load_state_dict(state, strict=False)
    with torch.no_grad():
        fresh.visual_prompts.prompts.copy_(prompts_before[:, kept])
    assert torch.equal(logits(model, images), logits(fresh, images))


def test_pruned_tokens_leave_the_sequence_of_every_block(images: torch.Tensor) -> None:
    model = trained_e2vpt()
    seen: list[int] = []
    for block in model.backbone.blocks:
        # norm1 sees the whole sequence, also in the class-token-only last block
        block.norm1.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[1]))
    logits(model, images)
    patches = (32 // 8) ** 2
    assert seen == [1 + TOKENS + patches] * 3
    seen.clear()
    model.visual_prompts.prune(torch.tensor([1]), torch.ones(1, SEGMENTS))
    logits(model, images)
    assert seen == [1 + 1 + patches] * 3


def test_segment_pruning_equals_zeroing_those_dimensions(images: torch.Tensor) -> None:
    model = trained_e2vpt()
    reference = copy.deepcopy(model)
    segments = torch.ones(TOKENS, SEGMENTS, dtype=torch.bool)
    segments[0, :5] = False
    segments[2, [3, 7, 15]] = False
    model.visual_prompts.prune(torch.arange(TOKENS), segments)
    with torch.no_grad():
        dims_per_segment = 64 // SEGMENTS
        for token, segment in (~segments).nonzero().tolist():
            lo = segment * dims_per_segment
            reference.visual_prompts.prompts[:, token, lo : lo + dims_per_segment] = 0
    assert torch.equal(logits(model, images), logits(reference, images))
    # the mask keeps dropped entries at zero through training with weight decay
    model.train()
    opt = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], 0.5, 0.9, weight_decay=0.1
    )
    for _ in range(3):
        F.cross_entropy(model(images), torch.tensor([0, 1, 2, 3])).backward()
        opt.step()
        opt.zero_grad()
    values = model.visual_prompts.prompts.detach()
    dropped = ~model.visual_prompts.kept_values_mask()
    assert torch.all(values[:, dropped] == 0) and torch.all(values[:, ~dropped] != 0)


def reference_importance(
    model: e2vpt.PromptedViT, x: torch.Tensor, y: torch.Tensor, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """∂L/∂γ, ∂L/∂μ written out: the prompts are replaced by P·γ·μ through functional_call
    (masks off), and autograd differentiates the batch loss w.r.t. γ and μ."""
    prompts = model.visual_prompts
    seg_of_dim = torch.arange(prompts.dim) * SEGMENTS // prompts.dim
    grads_g, grads_m = [], []
    for start in range(0, len(x), batch_size):
        gamma = torch.ones(TOKENS, requires_grad=True)
        mu = torch.ones(TOKENS, SEGMENTS, requires_grad=True)
        masked = prompts.prompts * (gamma[:, None] * mu[:, seg_of_dim])
        out = functional_call(
            model, {"visual_prompts.prompts": masked}, (x[start : start + batch_size],)
        )
        loss = F.cross_entropy(out, y[start : start + batch_size])
        g, m = torch.autograd.grad(loss, [gamma, mu])
        grads_g.append(g)
        grads_m.append(m)
    g, m = torch.stack(grads_g), torch.stack(grads_m)
    return g.abs().mean(0), m.abs().mean(0), -g.mean(0), -m.mean(0)


def test_importance_scores_equal_a_direct_autograd_computation() -> None:
    model = trained_e2vpt()
    torch.manual_seed(5)
    x, y = torch.randn(10, 3, 32, 32), torch.randint(0, 5, (10,))
    abs_g, abs_m, signed_g, signed_m = reference_importance(model, x, y, batch_size=4)
    scores = importance_scores(model, x, y, batch_size=4, mode="abs")
    assert scores.batches == 3 and scores.images == 10
    # atol: float32 gradients of an O(1) loss; the smallest scores here are ~1e-6
    torch.testing.assert_close(scores.token, abs_g.double(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(scores.segment, abs_m.double(), rtol=1e-5, atol=1e-7)
    signed = importance_scores(model, x, y, batch_size=4, mode="signed")
    torch.testing.assert_close(signed.token, signed_g.double(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(signed.segment, signed_m.double(), rtol=1e-5, atol=1e-7)
    # scoring leaves the model as it was: masks off, nothing requiring grad, no .grad
    prompts = model.visual_prompts
    assert not prompts.masks_active and not prompts.token_mask.requires_grad
    assert all(p.grad is None for p in model.parameters())


def scores(token: list[float], segment: torch.Tensor | None = None) -> ImportanceScores:
    segment = segment if segment is not None else torch.rand(len(token), SEGMENTS)
    return ImportanceScores(torch.tensor(token), segment, "abs", 1, 1)


def test_plan_drops_the_lowest_scores_and_keeps_the_minimums() -> None:
    segment = torch.arange(TOKENS * SEGMENTS, dtype=torch.float).view(TOKENS, SEGMENTS)
    segment[3] = segment[3].flip(0)
    plan = make_plan(scores([0.3, 0.1, 0.5, 0.2], segment), 0.5, 0.5)
    assert plan.kept_tokens == (0, 2)  # tokens 1 and 3 scored lowest
    assert all(sum(row) == 8 for row in plan.kept_segments)
    assert plan.kept_segments[0] == (False,) * 8 + (True,) * 8  # lowest segments dropped
    # floor(f·n) pruned; at least 1 token and 4 of 16 segments stay
    plan = make_plan(scores([1.0, 1.0, 1.0, 1.0]), 0.75, 0.75)
    assert len(plan.kept_tokens) == 1 and sum(plan.kept_segments[0]) == 4
    assert plan.kept_tokens == (3,)  # ties: the lower index goes first
    assert PruningPlan.from_dict(plan.to_dict()) == plan


@pytest.mark.parametrize(
    ("token", "segment", "message"),
    [
        (1.0, 0.0, "token fraction must be in [0, 1)"),
        (-0.1, 0.0, "token fraction must be in [0, 1)"),
        (0.0, 0.8125, "at least 4 must stay, so use at most 0.75"),
        (0.0, float("nan"), "segment fraction must be in [0, 1)"),
    ],
)
def test_impossible_fractions_are_clear_errors(token: float, segment: float, message: str) -> None:
    with pytest.raises(e2vpt.ConfigError, match=message.replace("[", r"\[").replace(")", r"\)")):
        check_fractions(token, segment, TOKENS, SEGMENTS)


def test_pruned_model_saves_sparsely_and_loads_bit_identically(
    tmp_path: Path, images: torch.Tensor
) -> None:
    unpruned = trained_e2vpt()
    e2vpt.save(unpruned, tmp_path / "unpruned")
    model = copy.deepcopy(unpruned)
    plan = make_plan(scores([0.3, 0.1, 0.5, 0.2]), 0.5, 0.25)
    apply_plan(model, plan)
    e2vpt.save(model, tmp_path / "pruned")

    loaded = e2vpt.load(tmp_path / "pruned", backbone=make_tiny_vit())
    assert torch.equal(logits(model, images), logits(loaded, images))
    assert torch.equal(loaded.visual_prompts.prompts, model.visual_prompts.prompts)
    assert loaded.visual_prompts.kept_tokens.tolist() == [0, 2]

    from safetensors.torch import load_file

    stored = load_file(str(tmp_path / "pruned" / TENSORS_FILE))
    survivors = 3 * 2 * 12 * 4  # layers × tokens × segments kept × dims per segment
    assert stored["visual_prompts.prompt_values"].numel() == survivors
    assert "visual_prompts.prompts" not in stored
    size = lambda name: (tmp_path / name / TENSORS_FILE).stat().st_size  # noqa: E731
    assert size("pruned") < size("unpruned")
    counts = e2vpt.count_parameters(loaded)
    assert counts.tunable == e2vpt.count_parameters(unpruned).tunable - (3 * 4 * 64 - survivors)


def test_pruning_needs_an_unpruned_e2vpt_model() -> None:
    vpt = e2vpt.wrap(make_tiny_vit(), e2vpt.VPTConfig(tokens=4, deep=True), 5)
    with pytest.raises(e2vpt.ConfigError, match="pruning needs an e2vpt model"):
        importance_scores(vpt, torch.zeros(2, 3, 32, 32), torch.zeros(2, dtype=torch.long))
    model = trained_e2vpt()
    plan = make_plan(scores([0.3, 0.1, 0.5, 0.2]), 0.5, 0.0)
    apply_plan(model, plan)
    with pytest.raises(e2vpt.ConfigError, match="already pruned"):
        apply_plan(model, plan)
