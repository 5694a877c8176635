"""The flywheel report: built with only the extras a user installs (no matplotlib), and no round
called better or worse without enough evidence."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from worker_train.report import build_report


def _round(r: int, accepted: list[bool], metric: list[float] | None = None) -> dict[str, Any]:
    items = []
    for k, ok in enumerate(accepted):
        items.append({"item_set_id": k + 1, "edit_id": 100 * r + k, "decision": "accepted" if ok else "rejected",
                      "source": "ai", "reasons": [] if ok else ["identity_lost"],
                      "metrics": {} if metric is None else {"clip.clip_image": metric[k]}, "image_uri": None})
    return {"round": r, "adapter": None if r == 0 else r, "items": items}


def test_two_items_are_not_enough_evidence_however_clear_they_look() -> None:
    results = [_round(0, [False, False]), _round(1, [True, True])]
    report = build_report("edit", results, 2, seed=1, min_items=10)
    acc = report["comparisons"][0]["acceptance"]
    assert acc["diff"] == 1.0 and acc["pairs"] == 2
    assert acc["verdict"] == "not enough evidence"
    assert report["min_eval_items"] == 10


def test_a_round_is_better_only_when_enough_items_and_intervals_apart() -> None:
    n = 12
    clear = build_report("edit", [_round(0, [False] * n), _round(1, [True] * n)], n, seed=1, min_items=10)
    assert clear["comparisons"][0]["acceptance"]["verdict"] == "better"
    worse = build_report("edit", [_round(0, [True] * n), _round(1, [False] * n)], n, seed=1, min_items=10)
    assert worse["comparisons"][0]["acceptance"]["verdict"] == "worse"
    # every item moves up by the same small step: the paired interval excludes zero, but the two
    # rounds' own intervals overlap almost completely, so this is not called better
    spread = [k / (n - 1) for k in range(n)]
    shifted = build_report("edit", [_round(0, [True] * n, spread), _round(1, [True] * n, [v + 0.02 for v in spread])],
                           n, seed=1, min_items=10)
    entry = shifted["comparisons"][0]["metrics"]["clip.clip_image"]
    assert entry["ci95"][0] > 0 and entry["intervals_overlap"]
    assert entry["verdict"] == "within noise"


def test_report_html_builds_without_matplotlib(tmp_path: Path) -> None:
    """In a fresh interpreter where importing matplotlib fails, as it does without the dev extra."""
    script = textwrap.dedent("""
        import importlib.abc, json, sys
        from pathlib import Path

        class NoMatplotlib(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "matplotlib" or name.startswith("matplotlib."):
                    raise ModuleNotFoundError(f"No module named {name!r}")
                return None

        sys.meta_path.insert(0, NoMatplotlib())
        for name in [m for m in sys.modules if m.startswith("matplotlib")]:
            del sys.modules[name]
        from worker_train.report import build_report, write_report

        results = json.loads(Path(sys.argv[1]).read_text())
        report = build_report("edit", results, 3, seed=1, min_items=2)
        write_report(Path(sys.argv[2]), report, results, None, {"eval_item_sets": [1, 2, 3]})
        try:
            import matplotlib  # noqa: F401
        except ModuleNotFoundError:
            print("matplotlib blocked")
    """)
    results = [_round(0, [True, False, False], [0.2, 0.4, 0.5]), _round(1, [True, True, False], [0.3, 0.5, 0.6])]
    (tmp_path / "results.json").write_text(json.dumps(results))
    out = tmp_path / "report"
    run = subprocess.run([sys.executable, "-c", script, str(tmp_path / "results.json"), str(out)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "matplotlib blocked" in run.stdout
    page = (out / "report.html").read_text()
    assert page.count("<svg") == 3  # acceptance, clip.clip_image, rejection reasons
    assert "identity_lost" in page and page.count('class="interval"') >= 4  # an interval per round per chart
    assert json.loads((out / "report.json").read_text())["comparisons"][0]["acceptance"]["pairs"] == 3


def test_the_character_flywheel_needs_the_same_evidence() -> None:
    from worker_train.character_flywheel import _paired

    def images(kept: list[float]) -> dict[str, Any]:
        return {"images": [{"index": k, "kept": v} for k, v in enumerate(kept)]}

    assert _paired(images([0, 0]), images([1, 1]), "kept", 1, 10)["verdict"] == "not enough evidence"
    assert _paired(images([0] * 12), images([1] * 12), "kept", 1, 10)["verdict"] == "better"
    assert _paired(images([0] * 6 + [1] * 6), images([1] * 6 + [0] * 6), "kept", 1, 10)["verdict"] == "within noise"
