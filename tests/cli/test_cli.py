"""The command line: flags ↔ config fields, tables, and clear errors (exit code 2)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import yaml

from e2vpt.cli.main import build_parser, main
from e2vpt.cli.run_config import config_from_args
from e2vpt.methods import list_methods
from e2vpt.training.config import TrainConfig
from tests.backbones.test_weight_files import write_swin_original
from tests.conftest import make_tiny_swin


def parse_train(argv: list[str]):
    args = build_parser().parse_args(["train", *argv])
    return config_from_args(args, argv)


def test_every_flag_maps_to_a_config_field(tmp_path: Path) -> None:
    cfg = parse_train(
        [
            "--method",
            "e2vpt",
            "--visual-tokens",
            "7",
            "--no-shared-kv",
            "--epochs",
            "3",
            "--base-lr",
            "0.5",
            "--data",
            "builtin:count",
        ]
    )
    assert cfg.method == "e2vpt" and cfg.epochs == 3 and cfg.base_lr == 0.5
    assert cfg.method_config == {"visual_tokens": 7, "shared_kv": False}
    assert cfg.build_method_config().visual_tokens == 7
    assert cfg.compare_linear is False  # flags given: not the quickstart

    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump({"method": "vpt-deep", "method_config": {"tokens": 4}, "epochs": 9})
    )
    cfg = parse_train(["--config", str(config), "--epochs", "2"])
    assert (cfg.method, cfg.epochs, cfg.method_config) == ("vpt-deep", 2, {"tokens": 4})


def test_no_arguments_is_the_quickstart() -> None:
    cfg = parse_train([])
    assert cfg.compare_linear and cfg.method == "e2vpt" and cfg.optimizer == "adamw"
    assert parse_train(["--quickstart", "--epochs", "3"]).compare_linear
    assert cfg.backbone == "demo_vit_cifar10" and cfg.data.startswith("builtin:")


def test_info_prints_the_parameter_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--backbone", "vit_base_patch16_224", "--json"]) == 0
    rows = {r["method"]: r for r in json.loads(capsys.readouterr().out)}
    # prompts + key-value prompts + the trained token (10) and segment (10 × 16) masks
    assert rows["e2vpt"]["without head"] == 12 * 10 * 768 + 12 * 5 * 768 + 10 + 10 * 16
    assert rows["vpt-deep"]["without head"] == 12 * 10 * 768
    assert rows["linear"]["tunable"] == 768 * 100 + 100
    assert rows["full"]["backbone params"] == 85_798_656
    assert main(["info"]) == 0
    assert "| e2vpt" in capsys.readouterr().out


def test_info_covers_swin_and_several_backbones(capsys: pytest.CaptureFixture[str]) -> None:
    swin, dinov2 = "swin_base_patch4_window7_224.ms_in22k", "vit_small_patch14_reg4_dinov2"
    assert main(["info", "--backbone", swin, dinov2, "--json"]) == 0
    rows = {(r["backbone"], r["method"]): r for r in json.loads(capsys.readouterr().out)}
    # Swin-B: stages of depth 2, 2, 18, 2 and width 128, 256, 512, 1024
    widths = 2 * 128 + 2 * 256 + 18 * 512 + 2 * 1024
    assert rows[swin, "e2vpt"]["without head"] == widths * (10 + 5)
    assert rows[swin, "vpt-deep"]["without head"] == widths * 10
    assert rows[swin, "vpt-shallow"]["without head"] == 10 * 128  # stage 0 only
    assert rows[swin, "linear"]["tunable"] == 1024 * 100 + 100
    assert rows[dinov2, "vpt-deep"]["without head"] == 12 * 10 * 384


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--method", "lorra"], "unknown method 'lorra'"),
        (["train", "--method", "vpt-deep", "--kv-tokens", "3"], "--kv-tokens does not apply"),
        (["train", "--data", "/no/such/folder", "--method", "linear"], "/no/such/folder"),
        (["train", "--backbone", "vit_nope"], "unknown backbone"),
        (["train", "--epochs", "0"], "epochs must be >= 1"),
        (["eval", "/no/such/run"], "not an e2vpt checkpoint"),
    ],
)
def test_bad_input_is_a_clear_error(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv, *(["--output-dir", str(tmp_path)] if argv[0] == "train" else [])]) == 2
    assert message in capsys.readouterr().err


def test_train_then_eval(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    code = main(
        [
            "train",
            "--method",
            "vpt-shallow",
            "--tokens",
            "1",
            "--epochs",
            "1",
            "--warmup-epochs",
            "0",
            "--output-dir",
            str(run),
            "--no-progress",
            "--data",
            "builtin:position",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "| vpt-shallow" in out and "test top-1 %" in out
    results = json.loads((run / "results.json").read_text())
    assert main(["eval", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"{100 * results['eval_top1']:.2f}" in out
    # results are named by dataset and split; another split does not replace them
    written = run / "eval_builtin-position_test.json"
    assert json.loads(written.read_text())["top-1 %"] == round(100 * results["eval_top1"], 2)
    assert main(["eval", str(run), "--split", "val"]) == 0
    assert written.is_file() and (run / "eval_builtin-position_val.json").is_file()
    # a checkpoint for 9 classes cannot be evaluated on an 8-class task
    assert main(["eval", str(run), "--data", "builtin:orientation"]) == 2
    assert "9-class head" in capsys.readouterr().err
    # nor on 9 other classes: the class names are stored and compared
    import numpy as np
    from PIL import Image

    other = tmp_path / "other"
    for split in ("train", "test"):
        for c in range(9):
            (other / split / f"kind{c}").mkdir(parents=True)
            Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(other / split / f"kind{c}/a.png")
    assert main(["eval", str(run), "--data", str(other)]) == 2
    err = capsys.readouterr().err
    assert "are not the ones" in err and "--ignore-class-names" in err
    assert main(["eval", str(run), "--data", str(other), "--ignore-class-names"]) == 0
    # a run saved before class names were stored: evaluated, with a note saying so
    meta = json.loads((run / "adapter.json").read_text())
    del meta["class_names"]
    (run / "adapter.json").write_text(json.dumps(meta))
    capsys.readouterr()
    assert main(["eval", str(run), "--data", str(other)]) == 0
    assert "stores no class names" in capsys.readouterr().err


def test_swin_from_its_original_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The whole user path on a Swin: --weights in Microsoft's format, E²VPT, eval from
    the checkpoint folder alone (it names the backbone and the weights file)."""
    weights = tmp_path / "swin_original.pth"
    write_swin_original(make_tiny_swin(seed=9), weights)
    run = tmp_path / "run"
    common = ["--epochs", "1", "--warmup-epochs", "0", "--no-progress"]
    code = main(
        ["train", "--backbone", "e2vpt_test_swin", "--weights", str(weights), "--method"]
        + ["e2vpt", "--visual-tokens", "2", "--kv-tokens", "1", "--data", "builtin:position"]
        + ["--output-dir", str(run), *common]
    )
    assert code == 0
    results = json.loads((run / "results.json").read_text())
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    assert f"{100 * results['eval_top1']:.2f}" in capsys.readouterr().out
    assert main(["prune", "--from", str(run), "--output-dir", str(tmp_path / "pruned")]) == 2
    assert "pruning is implemented for ViT" in capsys.readouterr().err


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_example_configs_are_valid(example: Path) -> None:
    cfg = parse_train(["--config", str(example)])
    assert cfg.build_method_config().method_name == cfg.method


def test_quickstart_example_is_what_the_quickstart_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no runs/quickstart here: the default name is the plain one
    written = parse_train(["--config", str(EXAMPLES / "quickstart.yaml")])
    default = parse_train([])
    assert written.build_method_config() == default.build_method_config()
    written.method_config = default.method_config = {}
    assert written.to_dict() == default.to_dict()


def test_sweep_and_report_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.conftest import write_vtab_tree

    write_vtab_tree(tmp_path / "data" / "eurosat", {"train800": 20, "val200": 10, "test": 10}, 10)
    out = tmp_path / "sweeps"
    args = ["sweep", "--method", "linear", "--data", f"vtab:{tmp_path / 'data' / 'eurosat'}"]
    args += ["--epochs", "1", "--batch-size", "8", "--base-lrs", "0.1", "1", "--weight-decays"]
    args += ["0", "--seeds", "1", "2", "--output-dir", str(out), "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "Selected: base lr" in printed and "Final seeds" in printed
    summary = json.loads((out / "eurosat" / "linear" / "sweep.json").read_text())
    assert summary["group"] == "specialized" and summary["results"][0]["seeds"] == [1, 2]
    assert main(["report", str(out)]) == 0
    assert "specialized mean" in capsys.readouterr().out

    missing = ["sweep", "--method", "linear", "--data", f"vtab:{tmp_path / 'nope'}"]
    assert main([*missing, "--output-dir", str(tmp_path / "other")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


def _tree(root: Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime for p in root.rglob("*")}


BAD_INVOCATIONS = [
    (["train", "--device", "gpu"], "unknown device 'gpu'"),
    (["train", "--device", "cuda:99"], "--device cuda:99"),
    (["train", "--momentum", "-1"], "momentum must be in [0, 1)"),
    (["train", "--epochs", "0"], "epochs must be >= 1"),
    (["train", "--recipe", "papers"], "unknown recipe 'papers'"),
    (["train", "--output-dir", "a_file/run"], "a_file is a file"),
    (["train", "--output-dir", "/proc/e2vpt-run"], "cannot write the run folder"),
    (["train", "--data", "no_such_folder", "--output-dir", "r"], "no_such_folder does not exist"),
    (["train", "--method", "vpt-deep", "--kv-tokens", "3"], "does not apply to method"),
    (["train", "--state-every", "-1"], "state_every must be >= 0"),
    (
        ["train", "--weights", "missing.npz", "--output-dir", "r"],
        "missing.npz: no such file",  # named absolute: resolved where it was given
    ),
    (["train", "--output-dir", "done_run"], "already holds a finished run; pass --overwrite"),
    (["train", "--output-dir", "half_run"], "pass --resume to continue it, --overwrite"),
    (["train", "--overwrite", "--output-dir", "notes"], "holds no e2vpt run"),
    (["train", "--resume"], "--resume needs --output-dir"),
    (["train", "--resume", "--output-dir", "nothing"], "holds no run to resume"),
    (["train", "--resume", "--output-dir", "half_run", "--epochs", "7"], "--epochs 7 differs"),
    (["eval", "no_such_run"], "not an e2vpt checkpoint folder"),
    (["eval", "half_run"], "unfinished run (stopped after epoch 0 of 3)"),
    (["eval", "done_run"], "/gone/weights.npz, which do not exist here; set --weights"),
    (["eval", "done_run", "--weights", "missing.pth"], "--weights missing.pth: no such file"),
    (["prune", "--from", "no_such_run"], "does not exist"),
    (["prune", "--from", "half_run"], "cannot prune"),
]


def _existing_folders(root: Path) -> None:
    """A finished run (made elsewhere: its weights file is not here), an unfinished one
    and a folder of someone's files."""
    (root / "done_run").mkdir()
    (root / "done_run" / "train_config.yaml").write_text(TrainConfig(epochs=3).to_yaml())
    (root / "done_run" / "run_complete.json").write_text("{}")
    meta = {
        "method": "linear",
        "method_config": {},
        "num_classes": 6,
        "backbone": "demo_vit_cifar10",
        "backbone_weights": "/gone/weights.npz",
    }
    (root / "done_run" / "adapter.json").write_text(json.dumps(meta))
    (root / "half_run").mkdir()
    (root / "half_run" / "train_config.yaml").write_text(TrainConfig(epochs=3).to_yaml())
    (root / "notes").mkdir()
    (root / "notes" / "notes.txt").write_text("mine")


@pytest.mark.parametrize(("argv", "message"), BAD_INVOCATIONS, ids=lambda v: str(v))
def test_bad_invocations_fail_in_one_line_and_touch_nothing(
    argv: list[str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("not a folder")
    _existing_folders(tmp_path)
    before = _tree(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"e2vpt {argv[0]}: error: ")
    assert message in err[0]
    assert _tree(tmp_path) == before  # nothing new, nothing changed


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.startswith("e2vpt ")


@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM"])
def test_ctrl_c_stops_with_a_message_and_exit_code_130(tmp_path: Path, stop: str) -> None:
    import signal
    import subprocess
    import sys
    import time

    repo = Path(__file__).resolve().parents[2]
    process = subprocess.Popen(
        [sys.executable, "-m", "e2vpt", "train", "--epochs", "50", "--output-dir", "run"],
        cwd=tmp_path,
        env={**__import__("os").environ, "PYTHONPATH": str(repo / "src")},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C as at a terminal: a suite started in the background inherits an
        # ignored SIGINT, which Python (rightly) keeps ignoring
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while not (tmp_path / "run" / "train_state.pt").exists():  # an epoch is saved
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    process.send_signal(getattr(signal, stop))
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130
    last = err.strip().splitlines()[-1]
    # the run folder is named as stored: absolute, so the command works from anywhere
    run = tmp_path / "run"
    assert last.startswith(f"e2vpt train: interrupted; the run in {run} is saved after epoch ")
    assert last.endswith(f"resume it with `e2vpt train --resume --output-dir {run}`")
    assert "Traceback" not in err
    # the unfinished run is not mistaken for a finished one
    assert not (tmp_path / "run" / "run_complete.json").exists()
    assert main(["eval", str(tmp_path / "run")]) == 2


def test_val_fraction_runs_train_and_eval_on_an_image_folder_without_val(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A train/test-only folder: --val-fraction holds out val, said in the summary line,
    and `eval --split val` rebuilds the same split from the run's stored settings."""
    from tests.data.test_image_folder import write_tree

    data = tmp_path / "pets"
    write_tree(data, {"train": {"cat": 6, "dog": 6}, "test": {"cat": 2, "dog": 2}})
    out = tmp_path / "run"
    argv = ["train", "--data", str(data), "--method", "linear", "--epochs", "1"]
    argv += ["--val-fraction", "0.25", "--output-dir", str(out), "--no-progress"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "held out 25 % of train as val: 4 images" in err
    assert "data: pets — 2 classes (cat, dog); train 8, val 4, test 4" in err
    assert main(["eval", str(out), "--split", "val"]) == 0
    (written,) = out.glob("eval_pets-*_val.json")  # the folder's name + a hash of its path
    assert json.loads(written.read_text())["images"] == 4


def test_every_flag_of_every_command_says_what_it_does() -> None:
    """A flag whose --help is empty or only its own name tells a user nothing; the
    method flag lists every registered method."""
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    undocumented = []
    for name, sub in commands.items():
        for action in sub._actions:
            if not action.option_strings or action.dest == "help":
                continue
            text = (action.help or "").split(" (default")[0].strip()
            if text in ("", action.dest, action.dest.replace("_", " ")):
                undocumented.append(f"{name} {action.option_strings[0]}")
    assert not undocumented, undocumented
    method_help = next(a.help for a in commands["train"]._actions if a.dest == "method")
    for method in list_methods():
        assert method in method_help
