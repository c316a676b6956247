"""Every model class timm can build is either wrapped correctly or refused at wrap time
in one line naming its class and the families e2vpt has — never a crash inside forward.

One representative per (timm module, model class) pair, built on the meta device (no
memory, no weights): detection needs the class alone. The supported ones are then built
small with random weights and checked against timm's own forward. Regenerate the list
after a timm upgrade with ``python -m tests.backbones.test_backbone_classes`` (it builds
every registered model on the meta device, about two minutes)."""

from __future__ import annotations

import json
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
from timm.models import get_arch_name

import e2vpt
from e2vpt.cli.main import main
from e2vpt.families import family_of, list_families

# the smallest-to-build name of every (module, class) pair of timm 1.0.31
REPRESENTATIVES = [
    "beit_base_patch16_384", "lambda_resnet26t", "test_byobnet", "cait_xs24_384",
    "coat_lite_mini", "convit_small", "convmixer_1024_20_ks9_p14", "test_convnext3",
    "cpubone_nano", "crossvit_9_dagger_240", "csatv2", "darknet17", "cspnext_tiny",
    "davit_base_fl", "deepseek_vit_412m_align", "deepseek_vit_412m_enc",
    "deit3_small_patch16_224", "deit_base_distilled_patch16_384", "densenetblur121d",
    "dla34", "dpn48b", "edgenext_xx_small", "efficientformer_l1", "efficientformerv2_s0",
    "test_efficientnet_evos", "efficientvim_m2", "efficientvim_m2_dist", "efficientvit_b0",
    "efficientvit_l1", "efficientvit_m2", "vit_small_patch16_lingbot", "fasternet_t1",
    "fastvit_t8", "focalnet_tiny_srf", "gcvit_xxtiny", "gemma4_vit_167m",
    "gemma4_vit_167m_enc", "ghostnet_130", "hardcorenas_a", "hgnet_tiny", "hiera_tiny_224",
    "sam2_hiera_tiny", "hrnet_w18_small", "iformer_t", "inception_next_atto",
    "inception_resnet_v2", "inception_v3", "inception_v4", "lcnetv2_small", "levit_512",
    "levit_128s", "lowformer_e1", "test_mambaout", "test_coatnet", "poolformerv2_s12",
    "resmlp_12_224", "tf_mobilenetv3_small_minimal_100", "mobilenetv5_base",
    "mobilenetv5_300m_enc", "mobilevitv2_175", "mvitv2_tiny",
    "naflexvit_base_patch16_radio_v3", "nasnetalarge", "nest_tiny_jx", "nextvit_small",
    "nf_resnet26", "pit_xs_distilled_224", "pnasnet5large", "pvt_v2_b1",
    "qwen3_vit_88m_merge", "qwen3_vit_88m_enc", "rdnet_tiny", "regnetx_008",
    "repghostnet_080", "repvit_m1_1", "res2net50_48w_2s", "resnest14d", "test_resnet",
    "resnetv2_18d", "rexnetr_150", "selecsls42b", "legacy_seresnext26_32x4d",
    "sequencer2d_s", "shvit_s2", "skresnet18", "starnet_s050", "swiftformer_xs",
    "swin_tiny_patch4_window7_224", "swinv2_tiny_window16_256", "swinv2_cr_tiny_384",
    "tiny_vit_21m_224", "tnt_s_patch16_224", "tresnet_m", "twins_svt_small", "vgg13",
    "visformer_small", "test_vit", "vit_tiny_r_s16_p8_224", "vit_srelpos_small_patch16_224",
    "samvit_base_patch16_224", "vitamin_base_224", "volo_d1_224", "ese_vovnet19b_slim",
    "legacy_xception", "xception41p", "xcit_tiny_12_p8_384",
]  # fmt: skip

SUPPORTED = {"VisionTransformer", "VisionTransformerDistilled", "Eva", "SwinTransformer"}

# the supported representatives, small enough to run on random weights
SMALL: dict[str, dict[str, Any]] = {
    "test_vit": dict(img_size=32, patch_size=8, depth=2),
    "deit3_small_patch16_224": dict(img_size=32, embed_dim=64, depth=2, num_heads=2),
    "deit_base_distilled_patch16_384": dict(img_size=32, embed_dim=64, depth=2, num_heads=2),
    "vit_small_patch16_lingbot": dict(img_size=32, embed_dim=32, depth=2, num_heads=2),
    "vit_tiny_r_s16_p8_224": dict(img_size=64, depth=2),
    "vitamin_small_224": dict(img_size=64, depth=2),
    "swin_tiny_patch4_window7_224": dict(
        img_size=32, embed_dim=32, depths=(2, 2), num_heads=(2, 4), window_size=4
    ),
}

# modules registered by e2vpt itself (the demo backbone) and by this suite's fixtures
OWN_MODULES = {"demo", "conftest"}


def module_of(name: str) -> str:
    return timm.models._registry._model_to_module[get_arch_name(name)]


def meta_model(name: str) -> torch.nn.Module:
    with torch.device("meta"):
        return timm.create_model(name, pretrained=False)


@pytest.fixture(scope="module")
def skeletons() -> dict[str, torch.nn.Module]:
    return {name: meta_model(name) for name in REPRESENTATIVES}


def test_every_module_timm_registers_has_a_representative() -> None:
    known = set(timm.list_models())
    stale = [n for n in REPRESENTATIVES if n not in known]
    assert not stale, f"timm no longer has {stale}: regenerate REPRESENTATIVES"
    covered = {module_of(n) for n in REPRESENTATIVES}
    missing = set(timm.list_modules()) - covered - OWN_MODULES
    assert not missing, f"timm modules without a representative {sorted(missing)}: regenerate"


def test_each_class_is_wrapped_or_refused_in_one_line(
    skeletons: dict[str, torch.nn.Module],
) -> None:
    supported = set()
    for name, skeleton in skeletons.items():
        kind = type(skeleton).__name__
        try:
            family_of(skeleton)
        except e2vpt.ConfigError as err:
            message = str(err)
            assert "\n" not in message and f"backbone class {kind} " in message, name
            assert all(f"{family}: " in message for family in list_families()), message
            with pytest.raises(e2vpt.ConfigError, match=f"backbone class {kind} "):
                e2vpt.wrap(skeleton, e2vpt.LinearConfig(), 5)  # at wrap time, first
            continue
        supported.add(kind)
        e2vpt.wrap(skeleton, e2vpt.LinearConfig(), 5)
    assert supported == SUPPORTED


@pytest.mark.parametrize("name", list(SMALL))
def test_supported_classes_equal_timm(name: str) -> None:
    """Linear probing reads exactly timm's pre-logits; E²VPT runs or is a one-line error."""
    torch.manual_seed(0)
    backbone = timm.create_model(name, pretrained=False, num_classes=3, **SMALL[name]).eval()
    size = backbone.pretrained_cfg["input_size"][1:]
    size = SMALL[name].get("img_size", size)
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        want = backbone.forward_head(backbone.forward_features(images), pre_logits=True)
        got = e2vpt.wrap(backbone, e2vpt.LinearConfig(), 5).eval().forward_pre_logits(images)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
        try:
            model = e2vpt.wrap(backbone, e2vpt.E2VPTConfig(visual_tokens=2, kv_tokens=2), 5)
        except e2vpt.ConfigError as err:
            assert "\n" not in str(err)
            return
        assert torch.isfinite(model.eval()(images)).all()


def test_an_unsupported_hub_name_is_refused_before_its_weights_are_fetched(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fetched = []
    create = timm.create_model

    def spy(name: str, pretrained: bool = False, **kwargs: Any) -> torch.nn.Module:
        fetched.append(pretrained)
        return create(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", spy)
    with pytest.raises(e2vpt.ConfigError, match="backbone class Beit .* not supported"):
        e2vpt.create_backbone("beit_base_patch16_224.in22k_ft_in22k")
    assert fetched == [False]  # the meta-device check only: no download started


def test_deit_distilled_weights_load_and_pool_as_timm(tmp_path: Path) -> None:
    """Facebook's DeiT distilled file ({"model": ...}, both heads), onto its timm name."""
    options = SMALL["deit_base_distilled_patch16_384"]
    torch.manual_seed(2)
    source = timm.create_model("deit_base_distilled_patch16_384", **options).eval()
    path = tmp_path / "deit_base_distilled_patch16_384-d0ee3f1a.pth"
    torch.save({"model": source.state_dict(), "epoch": 300}, path)
    backbone = e2vpt.create_backbone("deit_base_distilled_patch16_384", weights=path, **options)
    model = e2vpt.wrap(backbone, e2vpt.LinearConfig(), 5).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = source.forward_features(images)
        want = (tokens[:, 0] + tokens[:, 1]) / 2  # the class and distillation tokens
        torch.testing.assert_close(model.forward_pre_logits(images), want)
    # the accounting leaves both of the backbone's own classifiers out
    assert model.backbone_param_count == sum(
        p.numel() for n, p in source.named_parameters() if not n.startswith("head")
    )


def test_info_lists_every_family_and_what_works_on_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["info", "--families", "--json"]) == 0
    rows = {row["family"]: row for row in json.loads(capsys.readouterr().out)}
    assert list(rows) == list_families()
    assert rows["eva"]["multi-task batch"] == "token pooling"
    assert rows["swin"]["prompt pruning"] == "no" and rows["eva"]["prompt pruning"] == "yes"
    assert all("onnx" in row["export"] for row in rows.values())


def write_representatives() -> None:
    """Print REPRESENTATIVES for the installed timm: every registered model built on the
    meta device, the quickest to build of each (module, class) pair kept."""
    best: dict[tuple[str, str], tuple[float, str]] = {}
    for name in timm.list_models():
        start = time.perf_counter()
        kind = type(meta_model(name)).__name__
        took = time.perf_counter() - start
        key = (module_of(name), kind)
        if key not in best or took < best[key][0]:
            best[key] = (took, name)
    names = ", ".join(f'"{best[key][1]}"' for key in sorted(best))
    sys.stdout.write(textwrap.fill(names, 92, initial_indent="    ", subsequent_indent="    "))


if __name__ == "__main__":
    write_representatives()
