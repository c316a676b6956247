"""MkDocs hook: the pages that must never disagree with the code or the results.

At every ``mkdocs build`` / ``mkdocs serve``:

* ``reference/cli.md`` is written from the CLI's own parsers (``e2vpt <command> --help``
  for every command in ``e2vpt.cli.main.COMMANDS``), so ``--help`` and the docs agree;
* ``reference/api.md`` lists every public name of ``e2vpt`` (its ``__all__``) for
  mkdocstrings, which renders the docstrings;
* ``benchmarks/results.md`` includes every results file in ``benchmarks/results/``
  (markdown through pymdownx.snippets; CSV / JSON without a markdown twin as a table);
* ``benchmarks/results/*.png`` are published under ``results/``;
* a line ``<!-- table: benchmarks/results/NAME.csv -->`` (or ``.json``) in any page is
  replaced by that file rendered as a markdown table.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
TABLE_MARKER = re.compile(r"^<!-- table: (\S+) -->$", re.MULTILINE)


def _command_help(parser, argv: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        parser.parse_args(argv)
    return out.getvalue().rstrip()


def cli_reference() -> str:
    """Every command's ``--help``, as the installed parsers print it."""
    from e2vpt.cli.main import COMMANDS, build_parser

    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal: fix the width
    lines = [
        "# Command line reference",
        "",
        "Generated from the parsers at every docs build: each block is exactly what",
        "`e2vpt <command> --help` prints. Every `train` flag is a field of `TrainConfig`",
        "or of the chosen method's config (see [Getting started](../getting-started.md)).",
        "",
        "## `e2vpt`",
        "",
        "```text",
        _command_help(build_parser(set()), ["--help"]),
        "```",
    ]
    for name in COMMANDS:
        lines += [
            "",
            f"## `e2vpt {name}`",
            "",
            "```text",
            _command_help(build_parser({name}), [name, "--help"]),
            "```",
        ]
    return "\n".join(lines) + "\n"


def api_reference() -> str:
    """One mkdocstrings entry per public name, grouped by the module that defines it."""
    import e2vpt

    exports: dict[str, str] = e2vpt._EXPORTS
    lines = [
        "# Python API reference",
        "",
        "Every name `import e2vpt` offers (`e2vpt.__all__`), rendered from its docstring",
        "at every docs build. A guided tour: [Python API](../python-api.md).",
    ]
    modules: dict[str, list[str]] = {}
    for name in sorted(exports):
        modules.setdefault(exports[name], []).append(name)
    for module in sorted(modules):
        lines += ["", f"## `{module}`", ""]
        for name in modules[module]:
            lines += [f"::: {module}.{name}", "    options:", "      heading_level: 3", ""]
    return "\n".join(lines) + "\n"


def _cell(value: object) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.2f}"
    text = str(value)
    with contextlib.suppress(ValueError):
        return _cell(int(text))
    with contextlib.suppress(ValueError):
        return _cell(float(text))
    return text.replace("|", "\\|")


def render_table(path: Path) -> str:
    """A CSV file, or a JSON list of flat objects, as a markdown table."""
    if path.suffix == ".csv":
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    else:
        rows = json.loads(path.read_text())
    if not rows:
        return f"*(`{path.name}` holds no rows)*"
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(row.get(k)) for k in header) + " |" for row in rows]
    return "\n".join(lines)


def results_page() -> str:
    """Every results file: markdown included as it is, CSV / JSON alone rendered."""
    lines = [
        "# All results tables",
        "",
        "Every file in `benchmarks/results/`, included at every docs build (the benchmark",
        "scripts write them; nothing here is copied by hand). Each section is named after",
        "its file; the scripts and their settings are described on the pages that use them.",
    ]
    stems = sorted({p.stem for p in RESULTS.iterdir() if p.suffix in {".md", ".csv", ".json"}})
    for stem in stems:
        lines += ["", f"## `{stem}` {{#{stem}}}", ""]
        if (RESULTS / f"{stem}.md").exists():
            lines.append(f'--8<-- "benchmarks/results/{stem}.md"')
        elif (RESULTS / f"{stem}.csv").exists():
            lines.append(f"<!-- table: benchmarks/results/{stem}.csv -->")
        else:
            lines.append(f"<!-- table: benchmarks/results/{stem}.json -->")
        if (RESULTS / f"{stem}.png").exists():
            lines += ["", f"![{stem}](../results/{stem}.png)"]
    return "\n".join(lines) + "\n"


def on_files(files, config):
    generated = {
        "reference/cli.md": cli_reference(),
        "reference/api.md": api_reference(),
        "benchmarks/results.md": results_page(),
    }
    for uri, content in generated.items():
        files.append(File.generated(config, uri, content=content))
    for png in sorted(RESULTS.glob("*.png")):
        files.append(File.generated(config, f"results/{png.name}", abs_src_path=str(png)))
    return files


def on_page_markdown(markdown, page, config, files):
    def table(match: re.Match) -> str:
        path = ROOT / match.group(1)
        if not path.is_file():
            raise FileNotFoundError(f"{page.file.src_uri}: no results file {match.group(1)}")
        return render_table(path)

    return TABLE_MARKER.sub(table, markdown)
