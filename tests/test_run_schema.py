"""A run folder's files are untrusted input. Every hand-broken field of ``adapter.json``
and ``train_config.yaml`` — a wrong type, a value out of range, a missing field, a file
that is no JSON/YAML, not UTF-8, nested without end or too large — is one line naming
the file and the field (exit code 2), before any model is built and with nothing
written. A checkpoint without a hash loads with a notice, and ``e2vpt verify
--add-hash`` records one. One tiny run is trained per module; each case breaks a copy."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2vpt.cli.main import main
from e2vpt.errors import CheckpointError, ConfigError
from e2vpt.layers.settings import MAX_CLASSES, MAX_PROMPT_TOKENS
from e2vpt.methods.base import method_config
from e2vpt.runs.schema import (
    MAX_CONFIG_BYTES,
    MAX_NESTING,
    MAX_RECORD_BYTES,
    fits_record,
    read_json,
    read_yaml_mapping,
)
from e2vpt.settings import check_values
from e2vpt.training.config import TrainConfig
from tests.data.test_image_folder import write_tree

LEGACY = Path(__file__).parent / "fixtures" / "legacy"
DELETE = object()  # a case's value: the field is removed


@dataclass(frozen=True)
class Change:
    """How a case breaks a run folder: ``apply`` changes its ``file``."""

    file: str
    apply: Callable[[Path], None]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An E²VPT run (visual and key-value prompts, class names, input statistics) on
    a two-class image folder, and one of its images."""
    root = tmp_path_factory.mktemp("schema")
    write_tree(root / "data", {"train": {"cat": 4, "dog": 4}, "test": {"cat": 1, "dog": 1}})
    run = root / "run"
    argv = ["train", "--data", str(root / "data"), "--method", "e2vpt", "--epochs", "1"]
    argv += ["--visual-tokens", "2", "--kv-tokens", "1", "--batch-size", "8"]
    assert main([*argv, "--output-dir", str(run), "--no-progress"]) == 0
    return run, next((root / "data" / "test").rglob("*.png"))


def copy_of(run: Path, tmp_path: Path, change: Change | None = None) -> Path:
    folder = tmp_path / "run"
    shutil.copytree(run, folder)
    if change is not None:
        change.apply(folder)
    return folder


def set_field(file: str, keys: str | tuple[str, ...], value: Any) -> Change:
    """An edit setting ``keys`` (a field, or a path into nested mappings) of a JSON or
    YAML file to ``value`` (``DELETE``: removing it)."""
    path = (keys,) if isinstance(keys, str) else keys

    def edit(folder: Path) -> None:
        text = (folder / file).read_text()
        data = json.loads(text) if file.endswith(".json") else yaml.safe_load(text)
        target = data
        for key in path[:-1]:
            target = target.setdefault(key, {})
        if value is DELETE:
            del target[path[-1]]
        else:
            target[path[-1]] = value
        dump = json.dumps(data) if file.endswith(".json") else yaml.safe_dump(data)
        (folder / file).write_text(dump)

    return Change(file, edit)


def write_bytes(file: str, data: bytes) -> Change:
    return Change(file, lambda folder: (folder / file).write_bytes(data))


def grow(file: str, size: int) -> Change:
    """The file made ``size`` bytes long (sparse: nothing is written to disk)."""

    def edit(folder: Path) -> None:
        with open(folder / file, "r+b") as handle:
            handle.truncate(size)

    return Change(file, edit)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.stat().st_size < 2**20}  # fmt: skip


def refused(argv: list[str], folder: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """Run the command: exit code 2, one line on stderr, the folder unchanged."""
    before = snapshot(folder)
    names = sorted(p.name for p in folder.iterdir())
    code = main(argv)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith(f"e2vpt {argv[0]}: error: "), err
    assert sorted(p.name for p in folder.iterdir()) == names and snapshot(folder) == before
    return lines[0]


A, Y = "adapter.json", "train_config.yaml"
# "billion laughs": each line names the one before ten times, 10⁸ values in the last
ALIAS_BOMB = b"a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + b"".join(
    f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n".encode() for i in range(1, 8)
)
SPECS: dict[str, tuple[Change, str]] = {
    # -- adapter.json: the fields e2vpt.save writes ----------------------------------
    "format_version-text": (set_field(A, "format_version", "1"), "format_version must be"),
    "format_version-newer": (set_field(A, "format_version", 99), "written by a newer e2vpt"),
    "backbone-number": (set_field(A, "backbone", 5), "backbone must be a string"),
    "backbone-missing": (set_field(A, "backbone", DELETE), "no 'backbone' field"),
    "weights-list": (set_field(A, "backbone_weights", ["w"]), "backbone_weights must be"),
    "signature-text": (set_field(A, "backbone_signature", "vit"), "backbone_signature must be"),
    "signature-nested": (
        set_field(A, ("backbone_signature", "embed_dim"), {"a": 1}),
        "backbone_signature.embed_dim must be",
    ),
    "fingerprint-number": (set_field(A, "backbone_fingerprint", 7), "backbone_fingerprint must"),
    "global_pool-list": (set_field(A, "global_pool", ["token"]), "global_pool must be a string"),
    "method-list": (set_field(A, "method", ["e2vpt"]), "method must be a string"),
    "method-unknown": (set_field(A, "method", "nope"), "unknown method 'nope'"),
    "method-missing": (set_field(A, "method", DELETE), "no 'method' field"),
    "method_config-list": (set_field(A, "method_config", [1]), "method_config must be a mapping"),
    "method_config-missing": (set_field(A, "method_config", DELETE), "no 'method_config' field"),
    "visual_tokens-float": (
        set_field(A, ("method_config", "visual_tokens"), 2.5),
        "e2vpt: visual_tokens must be an integer, got 2.5",
    ),
    "visual_tokens-bool": (
        set_field(A, ("method_config", "visual_tokens"), True),
        "visual_tokens must be an integer, got True (bool)",
    ),
    "visual_tokens-huge": (
        set_field(A, ("method_config", "visual_tokens"), 10**9),
        f"visual_tokens must be <= {MAX_PROMPT_TOKENS}, got 1000000000",
    ),
    "visual_tokens-nested": (
        set_field(A, ("method_config", "visual_tokens"), {"a": {"b": 1}}),
        "visual_tokens must be an integer",
    ),
    "kv_tokens-huge": (
        set_field(A, ("method_config", "kv_tokens"), 10**9),
        f"kv_tokens must be <= {MAX_PROMPT_TOKENS}",
    ),
    "kv_tokens-negative": (
        set_field(A, ("method_config", "kv_tokens"), -1),
        "kv_tokens must be >=",
    ),
    "shared_kv-text": (
        set_field(A, ("method_config", "shared_kv"), "yes"),
        "shared_kv must be true or false",
    ),
    "dropout-range": (
        set_field(A, ("method_config", "visual_dropout"), 1.5),
        "visual_dropout must be in [0, 1)",
    ),
    "kv_init-number": (set_field(A, ("method_config", "kv_init"), 3), "kv_init must be a string"),
    "mask_segments-huge": (
        set_field(A, ("method_config", "mask_segments"), 10**9),
        "mask_segments must be <= 4096",
    ),
    "method_config-unknown": (set_field(A, ("method_config", "typo"), 1), "no option(s) ['typo']"),
    "num_classes-text": (
        set_field(A, "num_classes", "2"),
        f"num_classes must be an integer from 1 to {MAX_CLASSES}, got '2' (str)",
    ),
    "num_classes-bool": (set_field(A, "num_classes", True), "num_classes must be an integer"),
    "num_classes-float": (set_field(A, "num_classes", 2.0), "num_classes must be an integer"),
    "num_classes-zero": (set_field(A, "num_classes", 0), "num_classes must be an integer from 1"),
    "num_classes-huge": (set_field(A, "num_classes", 10**9), "got 1000000000"),
    "num_classes-missing": (set_field(A, "num_classes", DELETE), "no 'num_classes' field"),
    "input_norm-shape": (set_field(A, "input_norm", [[0.5, 0.5], [0.2]]), "input_norm must be"),
    "input_norm-text": (set_field(A, "input_norm", "imagenet"), "input_norm must be"),
    "input_norm-zero-std": (
        set_field(A, "input_norm", [[0.5] * 3, [0.0, 1.0, 1.0]]),
        "input_norm's std must be",
    ),
    "input_norm-negative-std": (
        set_field(A, "input_norm", [[0.5] * 3, [1.0, 1.0, -1.0]]),
        "input_norm's std must be 3 finite numbers, each > 0, got [1.0, 1.0, -1.0]",
    ),
    "input_norm-nan": (
        set_field(A, "input_norm", [[float("nan")] * 3, [1.0] * 3]),
        "input_norm's mean must be",
    ),
    "class_names-short": (set_field(A, "class_names", ["cat"]), "num_classes (2) strings"),
    "class_names-dict": (set_field(A, "class_names", {"a": 1}), "class_names must be a list"),
    "class_names-numbers": (set_field(A, "class_names", [1, 2]), "class_names must be a string"),
    "masks_active-text": (set_field(A, "masks_active", "yes"), "masks_active must be true or"),
    "masks_active-int": (set_field(A, "masks_active", 1), "masks_active must be true or false"),
    "pruning-text": (set_field(A, "pruning", "none"), "pruning must be a mapping"),
    "pruning-garbage": (set_field(A, "pruning", {"mode": 5}), "pruning must be null or a record"),
    "pruning-token-range": (
        set_field(
            A,
            "pruning",
            {"original_tokens": 2, "kept_tokens": [5], "kept_segments_per_token": [1]},
        ),
        "pruning.kept_tokens must be an integer from 0 to 1",
    ),
    "pruning-lengths": (
        set_field(
            A,
            "pruning",
            {"original_tokens": 2, "kept_tokens": [0], "kept_segments_per_token": [1, 2]},
        ),
        "pruning.kept_segments_per_token must be 1 counts",
    ),
    "tensors-text": (set_field(A, "tensors", "x"), "tensors must be a mapping"),
    "tensors-shape-float": (
        set_field(A, ("tensors", "head.bias"), [2.5]),
        "tensors.head.bias must be an integer",
    ),
    "tensors-shape-other": (
        set_field(A, ("tensors", "head.bias"), [3]),
        "does not hold the tensors adapter.json records",
    ),
    "sha256-number": (set_field(A, "sha256", 5), "sha256 must be 64 hexadecimal digits"),
    "sha256-other": (set_field(A, "sha256", "0" * 64), "does not match the hash"),
    # -- adapter.json as a file ---------------------------------------------------------
    "adapter-not-json": (write_bytes(A, b"{'method': 1}"), "is corrupt (not valid JSON"),
    "adapter-list": (write_bytes(A, b"[1, 2]"), "not a JSON object"),
    "adapter-deep": (
        write_bytes(A, b"[" * 100_000 + b"]" * 100_000),
        f"nests lists or mappings more than {MAX_NESTING} deep",
    ),
    "adapter-deep-17": (
        set_field(A, "backbone_signature", json.loads("[" * 17 + "]" * 17)),
        "more than 16 deep",
    ),
    "adapter-not-utf8": (write_bytes(A, b'{"method": "\xff"}'), "is not UTF-8 text (byte 0xff"),
    "adapter-huge": (grow(A, MAX_RECORD_BYTES + 1), "more than the"),
    # -- train_config.yaml ----------------------------------------------------------
    "epochs-text": (set_field(Y, "epochs", "abc"), "epochs must be an integer, got 'abc'"),
    "epochs-bool": (set_field(Y, "epochs", True), "epochs must be an integer, got True"),
    "epochs-zero": (set_field(Y, "epochs", 0), "epochs must be >= 1"),
    "data-number": (set_field(Y, "data", 5), "data must be a string, got 5"),
    "method-yaml-list": (set_field(Y, "method", ["e2vpt"]), "method must be a string"),
    "method_config-yaml-list": (set_field(Y, "method_config", [1]), "method_config must be a"),
    "visual_tokens-yaml-float": (
        set_field(Y, ("method_config", "visual_tokens"), 2.5),
        "visual_tokens must be an integer",
    ),
    "kv_tokens-yaml-huge": (
        set_field(Y, ("method_config", "kv_tokens"), 10**9),
        "kv_tokens must be <= 4096",
    ),
    "base_lr-text": (set_field(Y, "base_lr", "1e-3"), "write it as a number"),
    "batch_size-float": (set_field(Y, "batch_size", 2.5), "batch_size must be an integer"),
    "seed-null": (set_field(Y, "seed", None), "seed must be an integer, got None"),
    "config-unknown-key": (set_field(Y, "typo", 1), "unknown config key(s) ['typo']"),
    "yaml-invalid": (write_bytes(Y, b"epochs: [\n"), "is not valid YAML (line 2"),
    "yaml-not-utf8": (write_bytes(Y, b"data: \xff\n"), "is not UTF-8 text"),
    "yaml-list": (write_bytes(Y, b"- 1\n"), "must hold a mapping of config keys"),
    "yaml-number-keys": (write_bytes(Y, b"1: 2\n"), "the config keys must be names"),
    "yaml-deep": (write_bytes(Y, b"a: " + b"[" * 5000 + b"]" * 5000), "more than 16 deep"),
    "yaml-aliases": (write_bytes(Y, ALIAS_BOMB), "more than 1,000,000 values"),
    "yaml-huge": (grow(Y, MAX_CONFIG_BYTES + 1), "more than the"),
}


@pytest.mark.parametrize("case", SPECS)
def test_a_broken_run_folder_is_one_line_naming_the_file(
    case: str, trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, image = trained
    change, expected = SPECS[case]
    folder = copy_of(run, tmp_path, change)
    output = tmp_path / "predictions.csv"
    argv = ["predict", str(folder), str(image), "--output", str(output), "--no-progress"]
    line = refused(argv, folder, capsys)
    assert expected in line and str(folder) in line and change.file in line
    assert "Traceback" not in line and not output.exists()


def test_the_unbroken_folder_predicts(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The table's cases break a folder that works (and verifies)."""
    run, image = trained
    output = tmp_path / "predictions.csv"
    assert main(["predict", str(run), str(image), "--output", str(output), "--no-progress"]) == 0
    assert output.is_file() and "cannot be verified" not in capsys.readouterr().err
    assert main(["verify", str(run)]) == 0
    assert capsys.readouterr().out.strip() == f"{run}: verified"


HUGE_KV = set_field(A, ("method_config", "kv_tokens"), 10**9)
HUGE_KV_YAML = set_field(Y, ("method_config", "kv_tokens"), 10**9)
COMMANDS: dict[str, tuple[Change, Callable[[Path, Path], list[str]]]] = {
    "eval": (HUGE_KV, lambda run, tmp: ["eval", str(run)]),
    "export": (HUGE_KV, lambda run, tmp: ["export", str(run), "--output", str(tmp / "m.onnx")]),
    "prune": (
        HUGE_KV,
        lambda run, tmp: ["prune", "--from", str(run), "--output-dir", str(tmp / "p")],
    ),
    "serve": (HUGE_KV, lambda run, tmp: ["serve", "--adapter", f"task={run}"]),
    "verify": (HUGE_KV, lambda run, tmp: ["verify", str(run)]),
    "train": (HUGE_KV_YAML, lambda run, tmp: ["train", "--resume", "--output-dir", str(run)]),
    "eval-yaml": (HUGE_KV_YAML, lambda run, tmp: ["eval", str(run)]),
    "prune-yaml": (
        HUGE_KV_YAML,
        lambda run, tmp: ["prune", "--from", str(run), "--output-dir", str(tmp / "p")],
    ),
}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_reads_the_folder_through_the_validator(
    command: str, trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    change, argv = COMMANDS[command]
    folder = copy_of(trained[0], tmp_path, change)
    line = refused(argv(folder, tmp_path), folder, capsys)
    assert "kv_tokens must be <= 4096" in line and change.file in line
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "p").exists()


def test_the_library_refuses_before_building_anything(
    trained: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """e2vpt.load and MultiTaskModel: the error comes before a backbone or a model is
    made (here, making either would fail the test)."""
    import e2vpt.backbones
    import e2vpt.checkpoint
    from e2vpt.multitask import MultiTaskModel
    from tests.conftest import make_tiny_vit

    folder = copy_of(trained[0], tmp_path, HUGE_KV)
    backbone = make_tiny_vit()

    def built(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a model was built from a broken adapter.json")

    monkeypatch.setattr(e2vpt.backbones, "create_backbone", built)
    monkeypatch.setattr(e2vpt.checkpoint, "wrap", built)
    with pytest.raises(CheckpointError, match="kv_tokens must be <= 4096"):
        e2vpt.load(folder)
    with pytest.raises(CheckpointError, match="kv_tokens must be <= 4096"):
        MultiTaskModel(backbone, {"task": folder})


def without_hash(folder: Path) -> None:
    meta = json.loads((folder / A).read_text())
    del meta["sha256"]
    (folder / A).write_text(json.dumps(meta, indent=2))


def test_a_checkpoint_without_a_hash_loads_with_a_notice_and_verify_adds_one(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, image = trained
    folder = copy_of(run, tmp_path, Change(A, without_hash))
    output = tmp_path / "predictions.csv"
    argv = ["predict", str(folder), str(image), "--output", str(output), "--no-progress"]
    assert main(argv) == 0 and output.is_file()
    notices = [line for line in capsys.readouterr().err.splitlines() if "verif" in line]
    assert notices == [
        f"e2vpt: {folder / A} records no hash of adapter.safetensors (an older run): the "
        "tensors cannot be verified; once you trust the folder, "
        f"`e2vpt verify --add-hash {folder}` records one"
    ]
    assert main(["verify", str(folder)]) == 1
    assert "cannot be verified; --add-hash records" in capsys.readouterr().out
    before = json.loads((folder / A).read_text())
    assert main(["verify", "--add-hash", str(folder)]) == 0
    after = json.loads((folder / A).read_text())
    tensors = (folder / "adapter.safetensors").read_bytes()
    assert after == {**before, "sha256": hashlib.sha256(tensors).hexdigest()}
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in run.iterdir())
    assert main(["verify", str(folder)]) == 0
    # from now on a changed tensor file is caught
    flipped = bytearray(tensors)
    flipped[-3] ^= 0x10
    (folder / "adapter.safetensors").write_bytes(bytes(flipped))
    output.unlink()
    assert "does not match the hash" in refused(argv, folder, capsys)


def test_another_runs_tensor_file_is_refused_without_a_hash(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, image = trained
    folder = copy_of(run, tmp_path, Change(A, without_hash))
    shutil.copy(LEGACY / "vit-vpt-deep" / "adapter.safetensors", folder / "adapter.safetensors")
    line = refused(["predict", str(folder), str(image), "--no-progress"], folder, capsys)
    assert "does not hold the tensors adapter.json records" in line
    assert "from another save or another run" in line


def test_the_legacy_checkpoints_verify_untouched(capsys: pytest.CaptureFixture[str]) -> None:
    folders = sorted(p for p in LEGACY.iterdir() if p.is_dir())
    before = {p: snapshot(p) for p in folders}
    assert main(["verify", *map(str, folders)]) == 0
    assert capsys.readouterr().out.count(": verified") == len(folders)
    assert {p: snapshot(p) for p in folders} == before


# -- the validator's parts -----------------------------------------------------------
@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"epochs": True}, "epochs must be an integer, got True (bool)"),
        ({"epochs": 2.0}, "epochs must be an integer, got 2.0"),
        ({"base_lr": "1e-3"}, "base_lr must be a finite number or null, got '1e-3' (str)"),
        ({"base_lr": float("inf")}, "base_lr must be a finite number or null, got inf"),
        ({"weights": 3}, "weights must be a string or null, got 3"),
        ({"method_config": [1]}, "method_config must be a mapping, got [1] (list)"),
        ({"data": ["a"] * 100}, "…"),  # a long value is cut short
    ],
)
def test_check_values_names_the_field_and_the_type(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_values(TrainConfig, values)
    assert message in str(info.value) and len(str(info.value)) < 200


def test_check_values_accepts_what_the_fields_declare() -> None:
    good = {"epochs": 3, "base_lr": 1, "weights": None, "val_fraction": 0.5, "progress": False}
    check_values(TrainConfig, {**good, "not_a_field": object()})


def test_method_options_have_their_bounds_in_their_config_classes() -> None:
    assert method_config("e2vpt", {"visual_tokens": MAX_PROMPT_TOKENS}).visual_tokens == 4096
    for method, option, value in (
        ("e2vpt", "visual_tokens", MAX_PROMPT_TOKENS + 1),
        ("vpt-deep", "tokens", MAX_PROMPT_TOKENS + 1),
        ("lora", "rank", 10**6),
        ("sidetune", "channels", 10**6),
        ("mlp", "layers", 10**6),
    ):
        with pytest.raises(ConfigError, match=f"{option} must be <= "):
            method_config(method, {option: value})
    with pytest.raises(ConfigError, match="dropout must be a finite number, got 'x'"):
        method_config("vpt-deep", {"dropout": "x"})


def test_a_config_file_with_a_wrong_type_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("method: e2vpt\nweight_decay: 1e-4\n")
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_yaml(path)
    assert str(info.value).startswith(f"{path}: weight_decay must be a finite number")
    assert "YAML reads 1e-4 as text, 0.0001 as a number" in str(info.value)
    path.write_text("method_config:\n")  # empty: no options
    assert TrainConfig.from_yaml(path).method_config == {}


def test_the_readers_bounds(tmp_path: Path) -> None:
    path = tmp_path / "record.json"
    path.write_text(
        json.dumps({"a": json.loads("[" * (MAX_NESTING - 1) + "]" * (MAX_NESTING - 1))})
    )
    assert read_json(path)["a"]  # exactly MAX_NESTING levels
    path.write_text("[" * 2000 + "]" * 2000)
    with pytest.raises(CheckpointError, match="more than 16 deep"):
        read_json(path)
    path.write_text("1" * 5000)  # an integer of more digits than Python converts
    with pytest.raises(ConfigError, match="not valid JSON"):
        read_json(path, ConfigError)
    (tmp_path / "folder.json").mkdir()
    with pytest.raises(CheckpointError, match="is not a regular file"):
        read_json(tmp_path / "folder.json")
    with pytest.raises(ConfigError, match="cannot read"):
        read_yaml_mapping(tmp_path / "missing.yaml")
    path.write_text("a: !!python/object:os.system {}\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        read_yaml_mapping(path)


def test_fits_record() -> None:
    kinds = {"top1": (int, float), "n": (int,), "where": (str, type(None))}
    assert fits_record({"top1": 0.5, "n": 3, "where": None, "extra": 1}, kinds)
    for bad in (
        {"top1": 0.5, "n": 3},  # missing
        {"top1": "0.5", "n": 3, "where": None},
        {"top1": 0.5, "n": True, "where": None},
        {"top1": float("nan"), "n": 3, "where": None},
    ):
        assert not fits_record(bad, kinds)
