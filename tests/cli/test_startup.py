"""The command line answers ``--help`` and a mistyped flag without importing torch, timm
or numpy: building every parser reads only the torch-free settings modules. Each check
runs in a fresh interpreter, so what the test process imported does not count."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

HEAVY = ("torch", "timm", "numpy", "PIL", "safetensors")


def heavy_modules_after(code: str) -> list[str]:
    """The heavy top-level packages a fresh interpreter holds after running ``code``."""
    probe = textwrap.dedent(code) + textwrap.dedent(
        f"""
        import json as _json, sys as _sys
        _heavy = sorted({{k.split('.')[0] for k in _sys.modules}} & set({HEAVY!r}))
        print(_json.dumps(_heavy))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_every_parser_builds_and_parses_without_torch() -> None:
    code = """
    import contextlib, io
    from e2vpt.cli.main import COMMANDS, build_parser

    parser = build_parser(set(COMMANDS))
    for argv in (
        ["train", "--method", "vpt-deep", "--tokens", "4", "--epochs", "2"],
        ["train", "--method", "e2vpt", "--prompt-tokens-typo", "3"],
        ["sweep", "--method", "e2vpt", "--prune", "--seeds", "1", "2"],
        ["prune", "--from", "runs/x", "--score", "ablation"],
        ["info", "--methods", "e2vpt", "--wide"],
        ["predict", "runs/x", "image.png"],
        ["serve", "--adapter", "a=runs/x"],
        ["export", "runs/x", "--format", "onnx"],
        ["eval", "runs/x"],
        ["report", "runs/sweeps"],
        ["train", "--help"],
    ):
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            try:
                parser.parse_args(argv)
            except SystemExit:  # --help, or the flag error of the mistyped one
                pass
    """
    assert heavy_modules_after(code) == []


@pytest.mark.parametrize(
    "argv", [["--help"], ["train", "--help"], ["train", "--epoch", "1"], ["info", "--help"]]
)
def test_main_answers_help_and_flag_errors_without_torch(argv: list[str]) -> None:
    code = f"""
    import contextlib, io
    from e2vpt.cli.main import main

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            main({argv!r})
        except SystemExit:
            pass
    """
    assert heavy_modules_after(code) == []


def test_settings_modules_import_without_torch() -> None:
    code = """
    import e2vpt
    import e2vpt.backbones
    import e2vpt.devices
    import e2vpt.layers.settings
    import e2vpt.methods
    import e2vpt.pruning.settings
    import e2vpt.recipes
    import e2vpt.sweeps.settings
    import e2vpt.training.config
    from e2vpt.backbones import DEMO_BACKBONE
    from e2vpt.methods.base import list_methods, method_config
    from e2vpt.training.config import TrainConfig

    for name in list_methods():  # every method's config validates without torch too
        if name not in ("lora", "peft"):  # these check their options against peft
            method_config(name)
    TrainConfig(backbone=DEMO_BACKBONE).validate()
    """
    assert heavy_modules_after(code) == []


def test_the_moved_names_are_still_found_where_they_were() -> None:
    from e2vpt.backbones import create_backbone
    from e2vpt.backbones.create import create_backbone as created
    from e2vpt.data.augment import AUGMENTATIONS
    from e2vpt.data.formats import AUGMENTATIONS as FORMAT_AUGMENTATIONS
    from e2vpt.layers import adapter, side_network
    from e2vpt.layers.kv_attention import KV_INITS
    from e2vpt.layers.prompts import PRUNE_MODES, SEGMENT_LAYOUTS
    from e2vpt.layers.settings import HEAD_INITS as LAYER_HEAD_INITS
    from e2vpt.methods import adapter as adapter_method
    from e2vpt.methods import sidetune
    from e2vpt.model import HEAD_INITS
    from e2vpt.pruning.importance import SCORE_DEFINITIONS, SCORE_MODES
    from e2vpt.pruning.search import PruneSettings
    from e2vpt.pruning.settings import PruneSettings as LightPruneSettings
    from e2vpt.sweeps.protocol import ADAMW_BASE_LRS, SweepSettings
    from e2vpt.sweeps.ray_engine import RaySettings
    from e2vpt.sweeps.settings import RaySettings as LightRaySettings
    from e2vpt.sweeps.settings import SweepSettings as LightSweepSettings

    assert create_backbone is created and HEAD_INITS is LAYER_HEAD_INITS
    assert AUGMENTATIONS is FORMAT_AUGMENTATIONS and KV_INITS == ("heads", "width")
    assert PRUNE_MODES == ("remove", "zero") and SEGMENT_LAYOUTS[0] == "interleaved"
    assert set(SCORE_DEFINITIONS) == set(SCORE_MODES) and ADAMW_BASE_LRS
    assert PruneSettings is LightPruneSettings and RaySettings is LightRaySettings
    assert SweepSettings is LightSweepSettings
    assert adapter_method.Bottleneck is adapter.Bottleneck
    assert sidetune.SideNetwork is side_network.SideNetwork
    with pytest.raises(AttributeError):
        _ = sidetune.NotAName
