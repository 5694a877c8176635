"""The VLM judge scorer on a tiny Qwen2.5-VL: every verdict parses or is a recorded failure with
its raw text, and the judge shares the VL stage's resident model when the options match."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from PIL import Image

from common.domain.scoring import ScoreItem

pytest.importorskip("xgrammar")


def _items(n: int) -> list[ScoreItem]:
    out = []
    for i in range(n):
        a = Image.new("RGB", (64, 64), (40 * i % 255, 90, 160))
        b = Image.new("RGB", (64, 64), (200, 40 * i % 255, 30))
        out.append(ScoreItem(key=f"edit:{i}", input_image=a, edited_image=b, prompt="put on the red jacket",
                             garments=[Image.new("RGB", (64, 64), (220, 10, 10))] if i % 2 else []))
    return out


def _judge(model: Path, **kw):  # type: ignore[no-untyped-def]
    from common.core.backends import load_backend

    opts = {"model": str(model), "device": "cpu", "dtype": "float32", "min_pixels": 4 * 28 * 28,
            "max_pixels": 16 * 28 * 28, "max_new_tokens": 2048, **kw}
    return load_backend("scorer", "judge", **opts)


def test_judge_writes_bounded_ratings_and_viescore_overall(tiny_vl: Path) -> None:
    judge = _judge(tiny_vl)
    outs = judge.run_batch(_items(3))
    assert len(outs) == 3
    for out in outs:
        assert out.error is None, out.error
        m = out.metrics
        assert set(m) == set(judge.metrics)
        assert all(0 <= v <= 10 for v in m.values())
        assert m["judge_sc"] == min(m["judge_instruction"], m["judge_over_editing"])
        assert m["judge_pq"] == min(m["judge_naturalness"], m["judge_artifacts"])
        assert math.isclose(m["judge_overall"], math.sqrt(m["judge_sc"] * m["judge_pq"]), abs_tol=1e-3)
        assert out.raw and out.details["verdict"]["reasons"]
    again = judge.run_batch(_items(3))  # greedy decoding: the same verdicts
    assert [o.metrics for o in again] == [o.metrics for o in outs]


def test_a_verdict_cut_short_is_a_judge_failure_with_its_raw_text(tiny_vl: Path) -> None:
    judge = _judge(tiny_vl, max_new_tokens=6)
    (out,) = judge.run_batch(_items(1))
    assert out.metrics == {} and out.error_code == "judge.unparseable" and out.error_kind == "model_output"
    assert out.raw  # what the model said is kept


def test_the_judge_shares_the_vl_stages_resident_model(tiny_vl: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from common.core.settings import get_settings, reset_settings
    from common.runtime.resident import on_device
    from worker_vl.service import backend_options, resident_backend

    for key, value in {"SYNTHPIPE_VL_MODEL": str(tiny_vl), "SYNTHPIPE_VL__DEVICE": "cpu",
                       "SYNTHPIPE_VL__DTYPE": "float32", "SYNTHPIPE_VL__MIN_PIXELS": str(4 * 28 * 28),
                       "SYNTHPIPE_VL__MAX_PIXELS": str(16 * 28 * 28)}.items():
        monkeypatch.setenv(key, value)
    reset_settings()
    settings = get_settings()
    manager = on_device("cpu")
    manager.clear()
    before = len(manager.events)
    vl = resident_backend(settings)
    opts = backend_options(settings)
    judge = _judge(tiny_vl, max_new_tokens=opts["max_new_tokens"], quantization=opts["quantization"])
    judge.load()
    assert judge._backend is vl  # one copy of the weights on the device
    assert [e for e in manager.events[before:] if e[0] == "load"] == [("load", f"qwen {tiny_vl}")]
    manager.clear()
