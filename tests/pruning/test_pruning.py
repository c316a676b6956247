"""Pruning semantics: masks, real token removal, sparse segments, importance, plans."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

import e2vpt
from e2vpt.pruning import (
    ImportanceScores,
    PruningPlan,
    apply_plan,
    check_fractions,
    importance_scores,
    make_plan,
)
from e2vpt.runs import ADAPTER_TENSORS_FILE
from tests.conftest import make_tiny_swin, make_tiny_vit

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

    stored = load_file(str(tmp_path / "pruned" / ADAPTER_TENSORS_FILE))
    survivors = 3 * 2 * 12 * 4  # layers × tokens × segments kept × dims per segment
    assert stored["visual_prompts.prompt_values"].numel() == survivors
    assert "visual_prompts.prompts" not in stored
    size = lambda name: (tmp_path / name / ADAPTER_TENSORS_FILE).stat().st_size  # noqa: E731
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
    # E²VPT on a family without maskable visual prompts (Swin) is refused by name
    swin = e2vpt.wrap(make_tiny_swin(), e2vpt.E2VPTConfig(visual_tokens=2, kv_tokens=1), 5)
    with pytest.raises(e2vpt.ConfigError, match="implemented for ViT backbones"):
        importance_scores(swin, torch.zeros(2, 3, 32, 32), torch.zeros(2, dtype=torch.long))


def layer_norm_eps_model(eps: float) -> e2vpt.PromptedViT:
    """A float64 tiny E²VPT model (class-token pooling) with every LayerNorm's eps set."""
    model = trained_e2vpt().double()
    for module in model.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.eps = eps
    return model


def test_gradient_token_scores_vanish_with_the_layer_norm_eps() -> None:
    """A deep prompt reaches the other tokens only through LayerNorm, which is
    scale-invariant, so ∂L/∂γ is zero up to the norm's eps; segment masks and the loss
    rise when a token is taken out (ablation) do not vanish."""
    torch.manual_seed(3)
    x, y = torch.randn(8, 3, 32, 32, dtype=torch.float64), torch.randint(0, 5, (8,))
    token, segment, ablation = [], [], []
    for eps in (1e-4, 1e-6, 1e-8):
        model = layer_norm_eps_model(eps)
        scores = importance_scores(model, x, y, batch_size=8, mode="abs")
        token.append(scores.token.abs().max().item())
        segment.append(scores.segment.abs().max().item())
        ablation.append(importance_scores(model, x, y, mode="ablation").token.abs().max().item())
    # token scores fall with eps (by ~eps / variance), the others stay put
    assert token[1] < token[0] / 20 and token[2] < token[1] / 20
    assert token[2] < 1e-5 * min(segment)
    assert min(segment) > 0.1 * max(segment) and min(segment) > 1e-4
    assert min(ablation) > 0.5 * max(ablation) and min(ablation) > 1e-4


def test_ablation_scores_are_the_measured_loss_rise(images: torch.Tensor) -> None:
    model = trained_e2vpt()
    y = torch.tensor([0, 1, 2, 3])
    scores = importance_scores(model, images, y, batch_size=3, mode="ablation")
    with torch.no_grad():
        base = F.cross_entropy(model(images), y).item()
        for token in range(TOKENS):
            kept = [t for t in range(TOKENS) if t != token]
            smaller = copy.deepcopy(model)
            smaller.visual_prompts.prune(torch.tensor(kept), torch.ones(len(kept), SEGMENTS))
            rise = F.cross_entropy(smaller(images), y).item() - base
            assert scores.token[token].item() == pytest.approx(rise, rel=1e-4, abs=1e-6)
    zero = importance_scores(model, images, y, mode="ablation", prune_mode="zero")
    assert zero.prune_mode == "zero" and not torch.allclose(zero.token, scores.token)
    assert not model.visual_prompts.masks_active  # left as it was


def test_random_scores_follow_the_seed() -> None:
    model = trained_e2vpt()
    x, y = torch.zeros(2, 3, 32, 32), torch.zeros(2, dtype=torch.long)
    a = importance_scores(model, x, y, mode="random", seed=1)
    b = importance_scores(model, x, y, mode="random", seed=1)
    c = importance_scores(model, x, y, mode="random", seed=2)
    assert torch.equal(a.token, b.token) and not torch.equal(a.token, c.token)


def test_official_scores_are_the_signed_gradient_lowest_first() -> None:
    model = trained_e2vpt()
    torch.manual_seed(5)
    x, y = torch.randn(10, 3, 32, 32), torch.randint(0, 5, (10,))
    _, _, signed_g, signed_m = reference_importance(model, x, y, batch_size=4)
    official = importance_scores(model, x, y, batch_size=4, mode="official")
    torch.testing.assert_close(official.token, -signed_g.double(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(official.segment, -signed_m.double(), rtol=1e-5, atol=1e-7)


def test_zero_mode_keeps_pruned_tokens_as_zeros_in_every_block(
    tmp_path: Path, images: torch.Tensor
) -> None:
    model = trained_e2vpt()
    reference = copy.deepcopy(model)
    seen: list[int] = []
    for block in model.backbone.blocks:
        block.norm1.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[1]))
    plan = make_plan(scores([0.3, 0.1, 0.5, 0.2]), 0.5, 0.25, mode="zero")
    apply_plan(model, plan)
    got = logits(model, images)
    assert seen == [1 + TOKENS + 16] * 3  # every token still in the sequence
    prompts = model.visual_prompts
    assert prompts.tokens == TOKENS and prompts.kept_tokens.tolist() == [0, 2]
    assert torch.all(prompts.prompts[:, [1, 3]] == 0)
    # the same as zeroing those tokens (and the dropped segments) by hand
    with torch.no_grad():
        ref_prompts = reference.visual_prompts
        ref_prompts.masks_active = True
        ref_prompts.token_mask[[1, 3]] = 0
        ref_prompts.segment_mask[[0, 2]] = plan.segment_mask().float()
    assert torch.equal(got, logits(reference, images))
    e2vpt.save(model, tmp_path / "zero")
    loaded = e2vpt.load(tmp_path / "zero", backbone=make_tiny_vit())
    assert loaded.visual_prompts.prune_mode == "zero"
    assert torch.equal(logits(loaded, images), got)
    from safetensors.torch import load_file

    stored = load_file(str(tmp_path / "zero" / ADAPTER_TENSORS_FILE))
    assert stored["visual_prompts.prompt_values"].numel() == 3 * 2 * 12 * 4


def test_pruning_bakes_trained_masks_into_the_surviving_values(images: torch.Tensor) -> None:
    model = e2vpt.wrap(make_tiny_vit(), e2vpt.E2VPTConfig(visual_tokens=TOKENS, kv_tokens=2), 5)
    prompts = model.visual_prompts
    assert prompts.masks_trained
    with torch.no_grad():
        prompts.token_mask.mul_(torch.tensor([0.5, 2.0, 1.5, 0.7]))
        prompts.segment_mask.uniform_(0.5, 1.5)
    before = logits(model, images)
    prompts.prune(torch.arange(TOKENS), torch.ones(TOKENS, SEGMENTS, dtype=torch.bool))
    assert not prompts.masks_trained and not prompts.token_mask.requires_grad
    torch.testing.assert_close(logits(model, images), before, rtol=0, atol=1e-5)


def test_checkpoints_saved_before_the_official_defaults_load_as_they_were(
    tmp_path: Path, images: torch.Tensor
) -> None:
    import json

    model = trained_e2vpt()  # contiguous segments, fixed masks: how e2vpt pruned before
    apply_plan(model, make_plan(scores([0.3, 0.1, 0.5, 0.2]), 0.5, 0.25))
    e2vpt.save(model, tmp_path / "old")
    path = tmp_path / "old" / "adapter.json"
    meta = json.loads(path.read_text())
    for key in ("kv_init", "segment_layout", "train_masks"):
        del meta["method_config"][key]  # options that did not exist yet
    del meta["pruning"]["mode"], meta["input_norm"]
    path.write_text(json.dumps(meta))
    loaded = e2vpt.load(tmp_path / "old", backbone=make_tiny_vit())
    assert loaded.method_config.segment_layout == "contiguous"
    assert loaded.visual_prompts.prune_mode == "remove"
    assert torch.equal(logits(loaded, images), logits(model, images))
