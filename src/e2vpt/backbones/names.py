"""What a ``backbone`` / ``weights`` setting names, checked without torch or timm: the
bundled demo backbone's name and its aliases, and whether a weights path is a file here.
Configs and the command line read these before anything heavy is imported."""

from __future__ import annotations

from pathlib import Path

from e2vpt.errors import ConfigError

DEMO_BACKBONE = "demo_vit_cifar10"
ALIASES = {"demo-vit-cifar10": DEMO_BACKBONE, "demo": DEMO_BACKBONE}


def canonical_name(name: str) -> str:
    return ALIASES.get(name.strip(), name.strip())


def check_weights_file(path: str | None, trained_in: Path | None = None) -> None:
    """A weights path that is not a file here is a one-line error before anything loads:
    one given as `weights` says so; one a run stored (``trained_in``: its folder, made
    elsewhere) names the flag that points to it here."""
    if path is None or Path(path).is_file():
        return
    if trained_in is not None:
        raise ConfigError(
            f"{trained_in} was trained on backbone weights {path}, which do not exist here; "
            "set `weights` to the same weights file"
        )
    raise ConfigError(
        f"`weights` {path}: no such file; give the path of the backbone's weights file "
        "(or leave `weights` unset for the hub / bundled weights)"
    )
