"""The one ``data`` parser and the format registry: every kind parses, writes back, turns
absolute and labels as the code before them did; a malformed spec is one line naming the
fix; every registered format is complete; parsing imports no torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import e2vpt.data.formats as formats
from e2vpt.data import DataError, DataSpec, Task, check_task_spec, load_task
from e2vpt.data.formats import DataFormat, LoadOptions, get_format, list_formats, register_format
from e2vpt.errors import ConfigError
from e2vpt.training.config import absolute_data_spec

posix = pytest.mark.skipif(os.name != "posix", reason="the expected strings are POSIX paths")

# spec → (kind, path, name, ratio)
PARSED = {
    "builtin:count": ("builtin", None, "count", None),
    "vtab:data/vtab-1k/dtd": ("vtab", "data/vtab-1k/dtd", None, None),
    "fgvc:/data/CUB_200_2011": ("fgvc", "/data/CUB_200_2011", None, None),
    "cifar100-lt50:cifar-100-python": ("cifar100-lt", "cifar-100-python", None, 50),
    "cifar100-lt7:/d": ("cifar100-lt", "/d", None, 7),  # any ratio >= 1, as before
    "data/pets/": ("folder", "data/pets/", None, None),
    "/data/my:set/pets": ("folder", "/data/my:set/pets", None, None),
}

# computed with the code before DataSpec (absolute_data_spec and cli's _data_label), the
# relative ones from the working directory BASE: spec → (absolute spec, label)
BASE = "/tmp/dataspec_probe/base"
BEFORE = {
    "builtin:count": ("builtin:count", "builtin-count"),
    "builtin:position": ("builtin:position", "builtin-position"),
    "/data/pets": ("/data/pets", "pets-7868ae"),
    "/data/pets/": ("/data/pets", "pets-7868ae"),
    "pets": (f"{BASE}/pets", "pets-9b5f79"),
    "vtab:/data/vtab-1k/dtd": ("vtab:/data/vtab-1k/dtd", "dtd-4b2059"),
    "vtab:vtab-1k/dtd": (f"vtab:{BASE}/vtab-1k/dtd", "dtd-aa781f"),
    "fgvc:/data/CUB_200_2011": ("fgvc:/data/CUB_200_2011", "CUB-200-2011-0227e6"),
    "cifar100-lt10:/data/cifar-100-python": (
        "cifar100-lt10:/data/cifar-100-python",
        "cifar-100-python-d43281",
    ),
    "cifar100-lt100:cifar-100-python": (
        f"cifar100-lt100:{BASE}/cifar-100-python",
        "cifar-100-python-02581e",
    ),
    "/data/my:set/pets": ("/data/my:set/pets", "pets-e66114"),
    "/data/my:pets": ("/data/my:pets", "pets-a96918"),
    "/data/my set (v2)/Oxford Pets!": ("/data/my set (v2)/Oxford Pets!", "Oxford-Pets-3a04be"),
}

MALFORMED = {
    "": "data is empty",
    "cifar100-lt:/d": "cifar100-lt<ρ>",
    "cifar100-ltx:/d": "cifar100-lt<ρ>",
    "cifar100-lt10": "cifar100-lt<ρ>",
    "cifar100-lt10:": "cifar100-lt<ρ>",
    "cifar100-lt0:/d": "the ratio must be >= 1, got 0",
    "vtab:": "vtab:<root>/<task>",
    "fgvc:": "fgvc:<folder",
    "builtin:": "builtin:<task>",
}


@pytest.mark.parametrize("text", PARSED)
def test_every_kind_parses_and_writes_back(text: str) -> None:
    spec = DataSpec.parse(text)
    assert (spec.kind, spec.path, spec.name, spec.ratio) == PARSED[text]
    assert str(spec) == text
    assert DataSpec.parse(str(spec)) == spec
    assert spec.folder == (None if spec.path is None else Path(spec.path))


@posix
@pytest.mark.parametrize("text", BEFORE)
def test_absolute_form_and_label_are_those_of_before(text: str) -> None:
    absolute, label = BEFORE[text]
    spec = DataSpec.parse(text, base_dir=BASE)
    assert str(spec) == absolute
    assert spec.label() == label
    assert str(DataSpec.parse(text).absolute(BASE)) == absolute
    assert DataSpec.parse(absolute) == spec  # the absolute form parses to itself


def test_relative_folders_resolve_against_the_working_directory_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for text in ("pets", "vtab:vtab-1k/dtd", "fgvc:./cub", "cifar100-lt10:../c100"):
        spec = DataSpec.parse(text)
        assert spec.absolute() == spec.absolute(tmp_path) == DataSpec.parse(text, tmp_path)
        assert spec.absolute().folder == Path(os.path.abspath(tmp_path / spec.path))
        assert absolute_data_spec(text) == str(spec.absolute())
        assert spec.label() == spec.absolute().label()  # labels name the absolute folder
    assert DataSpec.parse("/abs/pets", base_dir=tmp_path).path == "/abs/pets"
    assert DataSpec.parse("builtin:count").absolute(tmp_path) == DataSpec.parse("builtin:count")


@pytest.mark.parametrize("text", MALFORMED)
def test_a_malformed_spec_is_one_line_naming_the_fix(text: str) -> None:
    with pytest.raises(DataError, match=MALFORMED[text]) as err:
        DataSpec.parse(text)
    message = str(err.value)
    assert "\n" not in message and message.startswith("data ")
    assert "e.g." in message or "give one of" in message
    with pytest.raises(DataError, match=MALFORMED[text]):
        check_task_spec(text)


def test_the_registry_covers_every_format_completely() -> None:
    kinds = [f.kind for f in list_formats()]
    assert {"builtin", "folder", "vtab", "fgvc", "cifar100-lt"} <= set(kinds)
    assert len(set(kinds)) == len(kinds)
    assert sum(not f.prefix for f in list_formats()) == 1  # one format takes the rest
    from e2vpt.data.augment import AUGMENTATIONS

    for fmt in list_formats():
        assert get_format(fmt.kind) is fmt
        spec = DataSpec.parse(fmt.example)
        assert spec.kind == fmt.kind and str(spec) == fmt.example
        assert spec.format is fmt
        assert callable(formats._resolve(fmt.loader))
        assert fmt.check is None or callable(formats._resolve(fmt.check))
        assert fmt.augment in AUGMENTATIONS
        assert fmt.normalization in ("backbone", "imagenet")
        assert fmt.metric in ("top1", "error")
    with pytest.raises(ConfigError, match="unknown data format 'nope'"):
        get_format("nope")


def _tiny_task(spec: DataSpec, image_size: int, options: LoadOptions) -> Task:
    return Task(name=f"tiny-{spec.path}-{image_size}-{options.seed}", classes=["a", "b"])


def test_a_new_format_is_one_registration(monkeypatch: pytest.MonkeyPatch) -> None:
    import re

    monkeypatch.setattr(formats, "_REGISTRY", dict(formats._REGISTRY))
    register_format(
        DataFormat(
            kind="tiny",
            prefix="tiny:",
            pattern=re.compile(r"tiny:(?P<path>.+)"),
            template="tiny:{path}",
            syntax="tiny:<folder>",
            example="tiny:x",
            loader=f"{__name__}:_tiny_task",
        )
    )
    assert DataSpec.parse("tiny:x").kind == "tiny"
    assert load_task("tiny:x", 8, seed=3, quiet=True).name == "tiny-x-8-3"
    with pytest.raises(DataError, match="does not exist"):
        check_task_spec("tiny:/no/such/folder")
    with pytest.raises(ConfigError, match="uses the prefix 'tiny:' of 'tiny'"):
        register_format(DataFormat("other", "tiny:", re.compile("x"), "x", "x", "x", loader="m:f"))


def test_parsing_a_spec_imports_no_torch_numpy_or_pil() -> None:
    # the package root ``e2vpt`` imports the model stack, so the child stands in an empty
    # package for it: what is measured is e2vpt.data.spec and everything it imports
    code = (
        "import importlib.util, sys, types\n"
        "root = types.ModuleType('e2vpt')\n"
        "root.__path__ = list(importlib.util.find_spec('e2vpt').submodule_search_locations)\n"
        "sys.modules['e2vpt'] = root\n"
        "from e2vpt.data.spec import DataSpec\n"
        "from e2vpt.data import DataSpec as Again\n"
        "assert Again is DataSpec\n"
        "DataSpec.parse('vtab:x/dtd').absolute().label()\n"
        "print(sorted(m for m in ('torch', 'numpy', 'PIL') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"
