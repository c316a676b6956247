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


def size_table(backbones: list[str], configs: list[Any], num_classes: int) -> list[dict[str, Any]]:
    """One row per backbone × method config: tunable parameters with and without the
    head, as a share of the backbone. Computed on the meta device: no memory and no
    weights are needed, even for ViT-H."""
    import torch

    from e2vpt.backbones import create_backbone
    from e2vpt.wrapping import wrap

    rows = []
    for name in backbones:
        for config in configs:
            with torch.device("meta"):
                backbone = create_backbone(name, pretrained=False)
            counts = count_parameters(wrap(backbone, config.for_restore(), num_classes))
            row = {"backbone": name} if len(backbones) > 1 else {}
            rows.append(
                row
                | {
                    "method": config.method_name,
                    "options": config.describe_size(),
                    "tunable": counts.tunable,
                    "without head": counts.tunable_without_head,
                    "% of backbone": counts.percent,
                    "backbone params": counts.backbone,
                }
            )
    return rows


def wide_size_table(
    rows: list[dict[str, Any]], backbones: list[str], num_classes: int
) -> list[dict[str, Any]]:
    """Backbones as rows: what each method adds to the frozen backbone (head apart)."""
    table = []
    for name in backbones:
        mine = [r for r in rows if r.get("backbone", name) == name]
        total = mine[0]["backbone params"]
        heads = {r["tunable"] - r["without head"] for r in mine}
        row: dict[str, Any] = {"backbone": name, "params": f"{total / 1e6:.1f} M"}
        for r in mine:
            row[r["method"]] = f"{r['without head']:,} ({100 * r['without head'] / total:.3f} %)"
        row[f"head ({num_classes} classes)"] = f"{max(heads):,}"
        table.append(row)
    return table
