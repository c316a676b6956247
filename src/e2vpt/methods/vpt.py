"""VPT (Jia et al. 2022): learnable visual prompt tokens, shallow or deep."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from e2vpt.methods.base import MethodConfig, register_method

if TYPE_CHECKING:
    from e2vpt.model import PromptedModel


@dataclass
class VPTConfig(MethodConfig):
    """``tokens`` prompts after the prefix tokens; ``deep`` gives every block its own set.

    ``dropout`` left as None means the paper's default: 0.1 for deep, 0.0 for shallow.
    """

    name: ClassVar[str] = "vpt"
    tokens: int = 10  # prompt tokens per set
    deep: bool = False  # a prompt set per block (VPT-deep)
    dropout: float | None = None  # prompt dropout; None: 0.1 deep, 0.0 shallow
    project: bool = False  # optional linear projection of the prompts (off in the paper)

    def __post_init__(self) -> None:
        if self.dropout is None:
            self.dropout = 0.1 if self.deep else 0.0

    @property
    def method_name(self) -> str:
        return "vpt-deep" if self.deep else "vpt-shallow"


def _apply_vpt(model: PromptedModel, config: VPTConfig) -> None:
    model.freeze_backbone()
    model.add_visual_prompts(
        tokens=config.tokens,
        deep=config.deep,
        dropout=float(config.dropout or 0.0),
        project=config.project,
    )


register_method(VPTConfig, "input prompts + head (VPT-shallow)", "vpt-shallow", {"deep": False})(
    _apply_vpt
)
register_method(VPTConfig, "per-layer prompts + head (VPT-deep)", "vpt-deep", {"deep": True})(
    _apply_vpt
)
