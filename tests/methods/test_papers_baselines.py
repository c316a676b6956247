"""The VPT paper's other baselines: Partial-k and MLP-k."""

from __future__ import annotations

import math

import pytest
import torch

import e2vpt
from e2vpt.data import load_builtin
from e2vpt.methods import (
    AdapterConfig,
    LinearConfig,
    LoRAConfig,
    MLPConfig,
    PartialConfig,
    SidetuneConfig,
)
from e2vpt.training.config import TrainConfig
from e2vpt.training.trainer import train
from tests.conftest import TINY, make_tiny_swin, make_tiny_vit


def test_partial_trains_the_last_blocks_in_train_mode() -> None:
    model = e2vpt.wrap(make_tiny_vit(drop_path_rate=0.1), PartialConfig(blocks=2), 5)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    depth = TINY["depth"]
    owners = {n.split(".")[2] for n in trainable if n.startswith("backbone.blocks.")}
    assert owners == {str(depth - 2), str(depth - 1)}
    assert (
        "backbone.norm.weight" in trainable and "backbone.patch_embed.proj.weight" not in trainable
    )
    model.train()
    blocks = model.backbone.blocks
    assert [b.training for b in blocks] == [False] * (depth - 2) + [True, True]
    assert model.backbone.patch_embed.training is False
    # closed form: two blocks and the final norm (+ head)
    block = sum(p.numel() for p in blocks[-1].parameters())
    counts = e2vpt.count_parameters(model)
    assert counts.tunable_without_head == 2 * block + 2 * TINY["embed_dim"]


def test_partial_on_swin_takes_the_last_stage_blocks() -> None:
    model = e2vpt.wrap(make_tiny_swin(), PartialConfig(blocks=1), 5)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("backbone.layers.1.blocks.1.") for n in trainable)
    assert not any(n.startswith("backbone.layers.1.blocks.0.") for n in trainable)


def test_partial_needs_that_many_blocks() -> None:
    with pytest.raises(e2vpt.ConfigError, match="blocks=9 but the backbone has 3 blocks"):
        e2vpt.wrap(make_tiny_vit(), PartialConfig(blocks=9), 5)


@pytest.mark.parametrize("layers", [1, 3])
def test_mlp_head_counts_and_one_layer_is_linear(layers: int, images: torch.Tensor) -> None:
    d = TINY["embed_dim"]
    model = e2vpt.wrap(make_tiny_vit(), MLPConfig(layers=layers), 5)
    counts = e2vpt.count_parameters(model)
    assert counts.tunable_without_head == (layers - 1) * (d * d + d)
    assert counts.head == d * 5 + 5
    if layers == 1:
        linear = e2vpt.wrap(make_tiny_vit(), LinearConfig(), 5).eval()
        with torch.no_grad():
            torch.testing.assert_close(model.eval()(images), linear(images))


def test_mlp_trains_on_cached_features(tmp_path) -> None:
    """The backbone is frozen: like linear probing, MLP-k trains on features computed once."""
    task = load_builtin("builtin:position", image_size=32)
    calls = {"n": 0}

    def count_backbone_calls(model: e2vpt.PromptedModel) -> None:
        original = model.forward_pre_logits

        def counted(x: torch.Tensor) -> torch.Tensor:
            calls["n"] += 1
            return original(x)

        model.forward_pre_logits = counted  # type: ignore[method-assign]

    cfg = TrainConfig(
        method="mlp",
        output_dir=str(tmp_path),
        epochs=3,
        batch_size=200,
        progress=False,
        augment="none",
    )
    result = train(cfg, task=task, customize=count_backbone_calls)
    # features once per split (train/val/test, in 256-image chunks), not every epoch
    chunks = sum(math.ceil(len(task.split(s)) / 256) for s in ("train", "val", "test"))
    assert calls["n"] == chunks
    assert result.val_top1 is not None
    loaded = e2vpt.load(tmp_path)
    width = loaded.feature_width
    assert loaded.pre_head[0].weight.shape == (width, width) and len(loaded.pre_head) == 4


@pytest.mark.parametrize("make", [make_tiny_vit, make_tiny_swin], ids=["vit", "swin"])
def test_adapters_start_as_the_backbone_and_count_in_closed_form(make, images) -> None:
    model = e2vpt.wrap(make(), AdapterConfig(reduction=8), 5).eval()
    plain = e2vpt.wrap(make(), LinearConfig(), 5).eval()
    with torch.no_grad():  # the up projections start at zero
        torch.testing.assert_close(model(images), plain(images))
    widths = [b.mlp.mlp.fc2.out_features for b in model.backbone_blocks()]
    expected = sum(2 * w * (w // 8) + w // 8 + w for w in widths)
    assert e2vpt.count_parameters(model).tunable_without_head == expected


def test_adapters_learn_and_refuse_a_backbone_that_has_them(images) -> None:
    backbone = make_tiny_vit()
    model = e2vpt.wrap(backbone, AdapterConfig(reduction=16, activation="gelu"), 5).train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(2):  # step 1 moves the zero up projection, step 2 the down one too
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(images), torch.tensor([0, 1, 2, 3])).backward()
        optimizer.step()
    adapter = model.backbone.blocks[0].mlp.adapter
    assert adapter.up.weight.abs().sum() > 0 and adapter.down.weight.grad.abs().sum() > 0
    with pytest.raises(e2vpt.ConfigError, match="carries the changes a 'adapter' model made"):
        e2vpt.wrap(backbone, AdapterConfig(), 5)
    with pytest.raises(e2vpt.ConfigError, match="activation must be one of relu, gelu"):
        AdapterConfig(activation="tanh").validate()


def test_lora_goes_through_peft_and_starts_as_the_backbone(images) -> None:
    from peft.tuners.lora import LoraLayer

    model = e2vpt.wrap(make_tiny_vit(), LoRAConfig(rank=2, targets="qkv,proj"), 5).eval()
    plain = e2vpt.wrap(make_tiny_vit(), LinearConfig(), 5).eval()
    attn = model.backbone.blocks[0].attn
    assert isinstance(attn.qkv, LoraLayer) and isinstance(attn.proj, LoraLayer)
    with torch.no_grad():  # B starts at zero
        torch.testing.assert_close(model(images), plain(images))
    d, depth = TINY["embed_dim"], TINY["depth"]
    per_block = 2 * (d + 3 * d) + 2 * (d + d)  # rank 2: A (r×in) + B (out×r), qkv and proj
    assert e2vpt.count_parameters(model).tunable_without_head == depth * per_block
    # the class-token shortcut calls the LoRA layer: same logits as the full forward
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
        fast = model(images)
        model.class_token_shortcut = False
        full = model(images)
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(full, plain(images), atol=1e-3)


def test_dora_adds_its_magnitudes_and_missing_peft_is_one_line(monkeypatch) -> None:
    model = e2vpt.wrap(make_tiny_vit(), LoRAConfig(rank=2, use_dora=True), 5)
    assert any("lora_magnitude_vector" in n for n, p in model.named_parameters() if p.requires_grad)
    import builtins

    real_import = builtins.__import__

    def no_peft(name: str, *args, **kwargs):
        if name == "peft" or name.startswith("peft."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_peft)
    with pytest.raises(e2vpt.ConfigError, match=r"needs Hugging Face peft: pip install"):
        e2vpt.wrap(make_tiny_vit(), LoRAConfig(), 5)


def test_sidetune_blends_a_side_network_with_the_frozen_features(images) -> None:
    model = e2vpt.wrap(
        make_tiny_vit(), SidetuneConfig(channels=8, conv_layers=2, blend_init=0.25), 5
    )
    model.eval()
    side = model.side_branch
    with torch.no_grad():
        frozen = model.forward_pre_logits(images)
        blended = side(frozen, images)
        own = side.project(side.convs(images).mean(dim=(2, 3)))
        torch.testing.assert_close(blended, 0.25 * frozen + 0.75 * own)
        torch.testing.assert_close(model(images), model.head(blended))
    # α learns with the side network and the head; the backbone stays frozen
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.train()
    torch.nn.functional.cross_entropy(model(images), torch.tensor([0, 1, 2, 3])).backward()
    optimizer.step()
    assert torch.sigmoid(side.alpha_logit).item() != pytest.approx(0.25)
    with pytest.raises(e2vpt.ConfigError, match="blend_init must be in"):
        SidetuneConfig(blend_init=1.0).validate()


def test_sidetune_side_network_from_timm_with_weights_read_only_at_the_start(
    images, tmp_path, capsys
) -> None:
    """A timm side network starts from a weights file (its classifier dropped, and said);
    the checkpoint holds it, so loading never reads the file again."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(7)
    donor = timm.create_model("test_resnet")
    weights = tmp_path / "side.safetensors"
    save_file({k: v.contiguous() for k, v in donor.state_dict().items()}, str(weights))
    config = SidetuneConfig(side_network="test_resnet", side_weights=str(weights))
    model = e2vpt.wrap(make_tiny_vit(), config, 5)
    assert "no classifier; dropped fc.bias, fc.weight" in capsys.readouterr().err
    network = model.side_branch.network
    for name, tensor in network.state_dict().items():
        torch.testing.assert_close(tensor, donor.state_dict()[name], rtol=0, atol=0)
    side = sum(p.numel() for p in model.side_branch.parameters())
    assert e2vpt.count_parameters(model).tunable == side + sum(
        p.numel() for p in model.head.parameters()
    )
    model.eval()
    with torch.no_grad():
        expected = model(images)
    e2vpt.save(model, tmp_path / "run")
    weights.unlink()
    loaded = e2vpt.load(tmp_path / "run", backbone=make_tiny_vit()).eval()
    assert loaded.method_config.side_weights == str(weights)  # recorded, not re-read
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), expected, rtol=0, atol=0)
    with pytest.raises(e2vpt.ConfigError, match="does not exist"):
        e2vpt.wrap(make_tiny_vit(), config, 5)


def test_sidetune_weights_must_fit_the_side_network(tmp_path) -> None:
    built_in = SidetuneConfig(channels=8, conv_layers=2)
    donor = e2vpt.wrap(make_tiny_vit(), built_in, 5).side_branch
    good = tmp_path / "convs.pth"
    torch.save(donor.convs.state_dict(), good)
    started = e2vpt.wrap(
        make_tiny_vit(), SidetuneConfig(channels=8, conv_layers=2, side_weights=str(good)), 5
    ).side_branch
    torch.testing.assert_close(started.convs[0].weight, donor.convs[0].weight, rtol=0, atol=0)
    wider = SidetuneConfig(channels=16, conv_layers=2, side_weights=str(good))
    with pytest.raises(e2vpt.ConfigError, match=r"does not fit side network 'convs'.*shape"):
        e2vpt.wrap(make_tiny_vit(), wider, 5)
    with pytest.raises(e2vpt.ConfigError, match="neither 'convs' nor a timm model"):
        SidetuneConfig(side_network="no_such_net").validate()
    with pytest.raises(e2vpt.ConfigError, match="needs a timm --side-network"):
        SidetuneConfig(side_weights="pretrained").validate()


def test_sidetune_side_weights_flag_is_checked_before_any_work(tmp_path, capsys) -> None:
    from e2vpt.cli.main import main

    with pytest.raises(SystemExit) as exit_info:
        main(["info", "--methods", "sidetune", "--side-weights", str(tmp_path / "none.pth")])
    assert exit_info.value.code == 2
    assert "side-network weights file" in capsys.readouterr().err
    assert main(["info", "--backbone", "demo_vit_cifar10", "--methods", "sidetune",
                 "--side-network", "test_resnet"]) == 0  # fmt: skip
    assert "side_network=test_resnet" in capsys.readouterr().out


def test_any_peft_tuner_from_its_config(images, tmp_path) -> None:
    """peft's LoRA through the generic method counts as the lora method; IA³'s scalings
    are one per output of qkv and one per input of the feed-forward fc2."""
    from e2vpt.methods.peft_tuner import PeftTunerConfig

    lora_like = PeftTunerConfig(
        peft_config={"peft_type": "lora", "r": 4, "lora_alpha": 8, "target_modules": ["qkv"]}
    )
    counts = e2vpt.count_parameters(e2vpt.wrap(make_tiny_vit(), lora_like, 5))
    lora = e2vpt.count_parameters(e2vpt.wrap(make_tiny_vit(), LoRAConfig(rank=4, alpha=8), 5))
    assert counts == lora
    ia3 = PeftTunerConfig(
        peft_config={
            "peft_type": "IA3",
            "target_modules": ["qkv", "fc2"],
            "feedforward_modules": ["fc2"],
        }
    )
    model = e2vpt.wrap(make_tiny_vit(), ia3, 5)
    blocks = model.backbone_blocks()
    expected = sum(b.attn.qkv.out_features + b.mlp.fc2.in_features for b in blocks)
    assert e2vpt.count_parameters(model).tunable_without_head == expected
    plain = e2vpt.wrap(make_tiny_vit(), e2vpt.LinearConfig(), 5).eval()
    plain.load_state_dict(model.state_dict(), strict=False)  # the same head
    with torch.no_grad():  # IA³ starts at scalings of one: the backbone's features
        torch.testing.assert_close(model.eval()(images), plain(images))


@pytest.mark.parametrize(
    ("peft_config", "message"),
    [
        ({}, "needs a peft config: --peft-config FILE"),
        ({"peft_type": "NOPE", "target_modules": ["qkv"]}, "'NOPE' is not a peft tuner"),
        ({"peft_type": "PROMPT_TUNING"}, "prompt-learning tuner"),
        ({"peft_type": "LORA"}, "name the Linear layers to adapt in target_modules"),
        ({"peft_type": "LORA", "target_modules": ["qkv"], "modules_to_save": ["head"]}, "drop"),
        ({"peft_type": "LORA", "target_modules": ["qkv"], "rr": 2}, "unexpected keyword"),
    ],
)
def test_peft_configs_are_checked_before_any_work(peft_config, message) -> None:
    with pytest.raises(e2vpt.ConfigError, match=message):
        e2vpt.method_config("peft", {"peft_config": peft_config})


def test_peft_config_file_on_the_command_line(tmp_path, capsys) -> None:
    from e2vpt.cli.main import main

    good = tmp_path / "ia3.yaml"
    good.write_text("peft_type: IA3\ntarget_modules: [qkv]\nfeedforward_modules: []\n")
    assert main(["info", "--backbone", "demo_vit_cifar10", "--methods", "peft",
                 "--peft-config", str(good)]) == 0  # fmt: skip
    assert "IA3, target_modules=['qkv']" in capsys.readouterr().out
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    for path, message in ((bad, "must hold a mapping"), (tmp_path / "none.json", "not found")):
        with pytest.raises(SystemExit) as exit_info:
            main(["info", "--methods", "peft", "--peft-config", str(path)])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
