"""``e2vpt report``: aggregation maths against hand-computed means, files, anchors, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from e2vpt.cli.main import main
from e2vpt.sweeps.report import (
    HEADLINE,
    TASK_MEAN,
    build_report,
    paper_anchors,
    plot_points,
    point_styles,
    write_report,
)


def write_sweep(
    root: Path, task: str, group: str, method: str, scores: list[float], metric: str = "top1"
) -> None:
    folder = root / task / method
    folder.mkdir(parents=True)
    mean = sum(scores) / len(scores)
    summary = {
        "status": "complete",
        "task": task,
        "group": group,
        "metric": metric,
        "backbone": "demo",
        "results": [
            {
                "method": method,
                "seeds": list(range(len(scores))),
                "test_top1": scores,
                "test_top1_mean": mean,
                "test_top1_std": 1.0,
                "tunable_params": 1000 if method == "a" else 10,
                "tunable_without_head": 0,
                "tunable_percent": 1.0 if method == "a" else 0.01,
            }
        ],
    }
    (folder / "sweep.json").write_text(json.dumps(summary))


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    for method, offset in (("a", 0.0), ("b", -10.0)):
        write_sweep(tmp_path, "n1", "natural", method, [80 + offset, 82 + offset])  # mean 81
        write_sweep(tmp_path, "n2", "natural", method, [70 + offset])
        write_sweep(tmp_path, "s1", "specialized", method, [90 + offset])
        write_sweep(tmp_path, "t1", "structured", method, [40 + offset])
        write_sweep(tmp_path, "f1", "fgvc", method, [85 + offset])
        write_sweep(tmp_path, "lt", "cifar100-lt", method, [60 + offset], metric="error")
    write_sweep(tmp_path, "t2", "structured", "a", [50.0])  # b lacks t2
    write_sweep(tmp_path, "t2", "structured", "b", [1.0])  # … but has a sweep still running
    running = tmp_path / "t2" / "b" / "sweep.json"
    running.write_text(json.dumps({**json.loads(running.read_text()), "status": "running"}))
    return tmp_path


def test_group_means_headline_and_task_mean_by_hand(runs: Path) -> None:
    report = build_report(runs)
    a, b = report.rows
    assert a["method"] == "a"
    assert a["natural mean"] == pytest.approx((81 + 70) / 2)
    assert a["specialized mean"] == pytest.approx(90)
    assert a["structured mean"] == pytest.approx((40 + 50) / 2)
    assert a[HEADLINE] == pytest.approx((75.5 + 90 + 45) / 3)
    assert a[TASK_MEAN] == pytest.approx((81 + 70 + 90 + 40 + 50) / 5)
    assert a["fgvc mean"] == pytest.approx(85)
    assert a["lt"] == pytest.approx(40.0)  # CIFAR-100-LT as error rate: 100 − 60
    # b lacks a structured task: no structured mean, no headline, no task mean
    assert b["natural mean"] == pytest.approx(65.5)
    assert b["structured mean"] is None and b[HEADLINE] is None and b[TASK_MEAN] is None
    assert a["% of backbone"] == pytest.approx(1.0) and b["tunable params"] == 10
    with_running = build_report(runs, include_running=True).rows[1]
    assert with_running["t2"] == pytest.approx(1.0) and with_running[HEADLINE] is not None
    text = report.markdown()
    assert "81.00 ± 1.00" in text and "lt (err)" in text
    assert text.index("| n1") < text.index("| s1") < text.index("| t1") < text.index("| f1")


def test_report_files_and_anchor_rows(runs: Path, tmp_path: Path) -> None:
    report = build_report(runs, anchors=True)
    paper = {r["method"]: r for r in report.rows if r["method"].startswith("paper:")}
    e2 = paper_anchors()["e2vpt"]
    assert paper["paper: e2vpt"][HEADLINE] == pytest.approx(
        (e2["natural"] + e2["specialized"] + e2["structured"]) / 3
    )
    assert paper["paper: vpt-deep"]["fgvc mean"] == 89.11
    out = tmp_path / "out"
    paths = write_report(report, out, name="table")
    assert [p.name for p in paths] == ["table.md", "table.csv", "table.json", "table.png"]
    assert paths[3].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(paths[2].read_text())["rows"][0]["method"] == "a"
    assert paths[1].read_text().splitlines()[0].startswith("method,")


def test_report_cli(runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(runs), "--anchors"]) == 0
    assert "mean of group means" in capsys.readouterr().out
    assert (runs / "report.md").is_file() and (runs / "report.png").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(empty)]) == 2
    assert "no finished sweep" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_expected_tasks_hold_back_group_means_until_every_task_is_in(runs: Path) -> None:
    expected = {"n1": "natural", "n2": "natural", "n3": "natural"}  # n3 not run yet
    a = build_report(runs, expected_tasks=expected).rows[0]
    assert a["n3"] is None and a["natural mean"] is None and a[HEADLINE] is None
    assert a["specialized mean"] == pytest.approx(90)  # groups not listed are unaffected
    assert "| n3" in build_report(runs, expected_tasks=expected).markdown()


def test_a_vtab_group_with_only_some_of_its_tasks_is_flagged(tmp_path: Path) -> None:
    for task in ("dtd", "svhn"):
        write_sweep(tmp_path, task, "natural", "a", [50.0])
    write_sweep(tmp_path, "mytask", "specialized", "a", [50.0])  # not a VTAB name: no note
    report = build_report(tmp_path)
    assert len(report.notes) == 1
    assert "natural mean covers 2 of VTAB-1k's 7" in report.notes[0]
    assert "caltech101" in report.notes[0] and "dtd," not in report.notes[0]
    assert report.notes[0] in report.markdown()
    assert build_report(tmp_path).rows[0]["natural mean"] == pytest.approx(50.0)


def test_plot_scores_every_method_on_the_same_tasks(runs: Path) -> None:
    points, label = plot_points(build_report(runs))
    # b lacks t2 (no headline): both are scored on the five top-1 tasks both have
    assert "5 task(s)" in label
    a = next(y for m, _, y in points if m == "a")
    assert a == pytest.approx((81 + 70 + 90 + 40 + 85) / 5)
    complete = build_report(runs, include_running=True)  # b's t2 counts: headline for all
    points, label = plot_points(complete)
    assert label == HEADLINE
    assert dict((m, y) for m, _, y in points)["a"] == pytest.approx(complete.rows[0][HEADLINE])


def test_no_two_methods_of_a_table_share_a_marker_and_colour() -> None:
    """Every registered method (12) and then some: each point is told apart in the legend."""
    styles = point_styles(20)
    assert len(set(styles)) == 20
    assert len({colour for _, colour in styles}) == 20


def test_sweeps_on_other_backbones_are_rows_of_their_own(tmp_path: Path) -> None:
    write_sweep(tmp_path / "small", "n1", "natural", "a", [80.0])
    write_sweep(tmp_path / "big", "n1", "natural", "a", [90.0])
    summary_path = tmp_path / "big" / "n1" / "a" / "sweep.json"
    summary = json.loads(summary_path.read_text())
    summary["backbone"] = "vit_base_patch16_224"
    summary_path.write_text(json.dumps(summary))
    report = build_report(tmp_path)
    assert sorted((r["backbone"], r["n1"]) for r in report.rows) == [
        ("demo", 80.0),
        ("vit_base_patch16_224", 90.0),
    ]
    text = report.markdown()
    assert "| backbone" in text and "vit_base_patch16_224" in text
    labels = [label for label, _, _ in plot_points(report)[0]]
    assert labels == ["a (demo)", "a (vit_base_patch16_224)"]
    # one backbone: no backbone column
    single = build_report(tmp_path / "small")
    assert "backbone" not in single.rows[0] and "| backbone" not in single.markdown()
