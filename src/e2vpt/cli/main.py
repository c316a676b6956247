"""``e2vpt train | sweep | report | predict | export | serve | eval | prune | info |
verify``.

One module per command registers its own parser (``add_parser``) and the function that
runs it; this module parses first and imports what a command needs inside it, so
``--help`` and a mistyped flag answer before torch is imported. Every command runs
under one handler (:func:`e2vpt.errors.exit_code_of`): a user error is one line naming
the flag, Ctrl-C says what was kept."""

from __future__ import annotations

import argparse
import difflib
import importlib
import re
import sys
from collections.abc import Collection, Sequence
from types import ModuleType

from e2vpt import __version__
from e2vpt.cli.flags import StrictParser, flag_name
from e2vpt.errors import E2VPTError, exit_code_of
from e2vpt.notices import render_notices

# every error a user can fix derives from E2VPTError (see e2vpt.errors)
USER_ERRORS = (E2VPTError,)

# command name → its module (the order of `e2vpt --help`)
COMMANDS: dict[str, str] = {
    "train": "e2vpt.cli.train",
    "sweep": "e2vpt.cli.sweep",
    "report": "e2vpt.cli.report",
    "predict": "e2vpt.cli.predict",
    "export": "e2vpt.cli.export",
    "serve": "e2vpt.cli.serve",
    "eval": "e2vpt.cli.evaluate",
    "prune": "e2vpt.cli.prune",
    "info": "e2vpt.cli.info",
    "verify": "e2vpt.cli.verify",
}


def command_module(name: str) -> ModuleType:
    return importlib.import_module(COMMANDS[name])


def build_parser(full: Collection[str] | None = None) -> argparse.ArgumentParser:
    """Every command's parser; with ``full``, those commands' in full and only the names
    and one-line help of the others (building a parser reads the settings classes)."""
    parser = StrictParser(
        prog="e2vpt",
        description="Prompt tuning (VPT, E²VPT) for pretrained vision transformers.",
    )
    parser.add_argument("--version", action="version", version=f"e2vpt {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=StrictParser)
    for name in COMMANDS:
        module = command_module(name)
        if full is None or name in full:
            module.add_parser(sub)
        else:
            sub.add_parser(name, help=module.HELP)
    return parser


def settings_as_flags(message: str, parser: argparse.ArgumentParser) -> str:
    """The library names a setting as `name` in its messages; here it is the flag that
    sets it (`ignore_class_names` → --ignore-class-names)."""
    dests = {a.dest for a in _command_actions(parser)}

    def flag(match: re.Match[str]) -> str:
        name = match.group(1)
        return flag_name(name) if name in dests else match.group(0)

    return re.sub(r"`([a-z][a-z0-9_]*)`", flag, message)


def _command_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    actions = list(parser._actions)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                actions.extend(sub._actions)
    return actions


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in COMMANDS else None
    if argv and command is None and not argv[0].startswith("-"):
        return _unknown_command(argv[0])
    parser = build_parser({command} if command else set())
    if command is None and not argv:
        parser.print_help()
        return 0
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    module = command_module(args.command)
    previous = render_notices(lambda message: settings_as_flags(message, parser))
    try:
        return exit_code_of(
            lambda: args.run_command(args, argv[1:]),
            f"e2vpt {args.command}",
            interrupted=module.INTERRUPTED,
            prefer_error_message=module.INTERRUPT_SAYS_MORE,
            render=lambda message: settings_as_flags(message, parser),
        )
    finally:
        render_notices(previous)  # a later library call (same process) is not the CLI's


def _unknown_command(name: str) -> int:
    close = difflib.get_close_matches(name, COMMANDS, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    print(
        f"e2vpt: error: unknown command {name!r}; {hint}the commands are {', '.join(COMMANDS)}",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
