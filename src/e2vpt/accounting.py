"""Parameter accounting the way the papers report it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from e2vpt.model import PromptedModel


@dataclass(frozen=True)
class ParameterCount:
    tunable: int  # everything the optimizer updates, head included
    tunable_without_head: int
    head: int
    backbone: int  # the pretrained backbone without its original head
    percent: float  # tunable / backbone · 100
    percent_without_head: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return (
            f"tunable {self.tunable:,} ({self.percent:.3f} % of the backbone), "
            f"without head {self.tunable_without_head:,} ({self.percent_without_head:.3f} %), "
            f"head {self.head:,}, backbone {self.backbone:,}"
        )


def count_parameters(model: PromptedModel) -> ParameterCount:
    head_names = set(model.head_parameter_names())
    tunable = head = 0
    for name, param in model.named_parameters():
        if param.requires_grad:
            tunable += param.numel()
            if name in head_names:
                head += param.numel()
    prompts = model.visual_prompts
    if prompts is not None and prompts.pruned and prompts.prompts.requires_grad:
        # pruned segments are zeros held there by the mask: neither trained nor stored
        tunable -= prompts.prompts.numel() - prompts.stored_numel()
    backbone = model.backbone_param_count
    return ParameterCount(
        tunable=tunable,
        tunable_without_head=tunable - head,
        head=head,
        backbone=backbone,
        percent=100.0 * tunable / backbone,
        percent_without_head=100.0 * (tunable - head) / backbone,
    )
