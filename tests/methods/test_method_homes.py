"""Everything about a method comes from its own module through the registry: defaults,
table order, the papers' numbers. These contracts hold for every registered method."""

from __future__ import annotations

import pytest

from e2vpt.data.vtab import VTAB_GROUPS
from e2vpt.methods.base import list_methods, method_config, registered_methods
from e2vpt.sweeps.report import method_order, paper_anchors
from e2vpt.training.config import TrainConfig

SPECS = registered_methods()


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_every_method_brings_its_own_defaults(spec) -> None:
    example = spec.config_cls.example_options()  # {} where the defaults work
    config = method_config(spec.name, example)
    assert config.method_name == spec.name
    assert set(spec.config_cls.default_base_lr) >= {"sgd", "adamw"}
    assert all(lr > 0 for lr in spec.config_cls.default_base_lr.values())
    cfg = TrainConfig(method=spec.name, method_config=example)
    expected = spec.config_cls.default_base_lr[cfg.resolved_optimizer()]
    assert cfg.resolved_base_lr() == expected
    assert set(dict(spec.paper_anchors)) <= {*VTAB_GROUPS, "fgvc"}


def test_tables_follow_the_registry_order() -> None:
    names = list_methods()
    ranks = [s.rank for s in SPECS]
    assert [s.name for s in SPECS] == names and ranks == sorted(ranks)
    order = method_order()
    assert [m for m in order if m in names] == names
    assert order.index("e2vpt-pruned") == order.index("e2vpt") + 1
    assert set(paper_anchors()) <= set(names) and "e2vpt" in paper_anchors()
