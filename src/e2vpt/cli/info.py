"""``e2vpt info``: parameter accounting for backbones × methods, the recipes' table, and
what works on each backbone family."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from typing import Any

from e2vpt.cli.run_config import add_method_flags, method_option_owners

NAME = "info"
HELP = "parameter accounting for a backbone × method"
INTERRUPTED = "Nothing was written."
INTERRUPT_SAYS_MORE = False


def add_parser(sub: Any) -> None:
    from e2vpt.backbones import DEMO_BACKBONE
    from e2vpt.methods.base import list_methods

    parser = sub.add_parser(NAME, help=HELP, description=HELP.capitalize() + ".")
    parser.add_argument(
        "--backbone",
        nargs="+",
        default=[DEMO_BACKBONE],
        help="one or more timm names (computed on the meta device: no weights, no memory)",
    )
    parser.add_argument(
        "--num-classes", type=int, default=100, help="head size the counts assume (default: 100)"
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=None,
        help=f"methods to list (default: {' '.join(list_methods())})",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--recipes",
        action="store_true",
        help="the choices that decide what a run learns: the official code's, the default "
        "recipe's and --recipe official's",
    )
    parser.add_argument(
        "--families",
        action="store_true",
        help="the backbone families: what each wraps and what works on it (methods, "
        "pooling, multi-task batches, prompt pruning, export)",
    )
    parser.add_argument(
        "--wide",
        action="store_true",
        help="one row per backbone, one column per method (tunable without head, %% of backbone)",
    )
    parser.add_argument("--visual-tokens", type=int, default=None, help="E²VPT / VPT prompt tokens")
    parser.add_argument("--kv-tokens", type=int, default=None, help="E²VPT key-value tokens")
    add_method_flags(parser, skip={"visual_tokens", "kv_tokens"})
    parser.set_defaults(run_command=run)


def _configs(args: argparse.Namespace) -> list[Any]:
    """The method configs to count: every method (one that needs an option not given is
    skipped, and said so), or those asked for by name."""
    from e2vpt.errors import ConfigError
    from e2vpt.methods.base import get_method, list_methods, method_config

    owners = method_option_owners()
    # method options given as flags (--visual-tokens / --kv-tokens: size_options below)
    given = {k: v for k, v in vars(args).items() if k in owners and v is not None}
    configs = []
    for method in args.methods or list_methods():
        spec = get_method(method)
        fields = {f.name for f in dataclasses.fields(spec.config_cls)}
        options = spec.config_cls.size_options(args.visual_tokens, args.kv_tokens)
        options |= {k: v for k, v in given.items() if k in fields}
        try:
            configs.append(method_config(method, options))
        except ConfigError as err:
            if args.methods:  # asked for by name: its missing option is the error
                raise
            print(f"(skipped {method}: {err})", file=sys.stderr)
    return configs


def family_rows() -> list[dict[str, str]]:
    """One row per registered backbone family, from the families' own declarations."""
    from e2vpt.export import EXPORT_FORMATS
    from e2vpt.families import SharedPassFamily, get_family, list_families
    from e2vpt.methods.base import list_methods

    rows = []
    for name in list_families():
        family = get_family(name)
        shared = family.shared_pools if isinstance(family, SharedPassFamily) else ()
        rows.append(
            {
                "family": name,
                "wraps": family.description,
                "methods": f"all {len(list_methods())}",
                "pooling": " | ".join(family.pools),
                "multi-task batch": f"{' | '.join(shared)} pooling" if shared else "no",
                "prompt pruning": "yes" if family.prunable_prompts else "no",
                "export": ", ".join(EXPORT_FORMATS),
            }
        )
    return rows


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from e2vpt.accounting import size_table, wide_size_table
    from e2vpt.backbones import canonical_name
    from e2vpt.recipes import choices_table
    from e2vpt.reporting import format_table

    if args.recipes or args.families:
        rows = choices_table() if args.recipes else family_rows()
        print(json.dumps(rows, indent=2) if args.json else format_table(rows))
        return 0
    names = [canonical_name(b) for b in args.backbone]
    rows = size_table(names, _configs(args), args.num_classes)
    if args.json:
        print(json.dumps(rows, indent=2))
    elif args.wide:
        print(format_table(wide_size_table(rows, names, args.num_classes)))
    else:
        print(f"backbone {', '.join(names)}, {args.num_classes} classes")
        print(format_table(rows, float_digits=3))
    return 0
