"""Best-of-N in the export: of an analysis's N candidate edits only the selected one is exported as
accepted; the others come with ``--decision rejected`` (an accepted one with the reason
``selection.not_selected``), the preference layout pairs the selected edit with each other candidate,
and a person's overrule decides which one that is. Edits without a selection export as before.
On SQLite and PostgreSQL, through the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from fixtures.candidate_sets import Cand, MadeSet, add_plain, add_set, add_uncounted
from sqlalchemy import select

from common.cli import main
from common.core.settings import get_settings
from common.store.storage import get_storage

NOT_SELECTED = "selection.not_selected"


@pytest.fixture
def sets(db: Any) -> dict[str, MadeSet]:
    """``best``: candidates 0 (accepted, selected), 1 (accepted, rank 2), 2 (rejected, rank 3);
    ``plain``: two imported edits of one input and instruction, accepted and rejected (no selection)."""
    storage = get_storage(get_settings().storage_url)
    return {"best": add_set(db, storage, [Cand(), Cand(clip=0.28), Cand("rejected", ("identity_lost",))], 1),
            "plain": add_plain(db, storage, ["accepted", "rejected"], 2)}


def _export(capsys: pytest.CaptureFixture[str], out: Path, *args: str) -> dict[str, Any]:
    capsys.readouterr()
    code = main(["export", str(out), *args, "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def _metadata(out: Path) -> dict[int, dict[str, Any]]:
    lines = (out / "train" / "metadata.jsonl").read_text().splitlines()
    return {row["edit_id"]: row for row in map(json.loads, lines)}


def _parquet(out: Path) -> list[dict[str, Any]]:
    rows = []
    for shard in sorted((out / "data").glob("train-*.parquet")):
        table = pq.read_table(shard)
        table = table.drop_columns([c for c in table.column_names if c in ("chosen", "rejected", "input_image",
                                                                          "edited_image", "garment_images")])
        rows += table.to_pylist()
    return rows


def test_accepted_is_the_selected_candidate_and_rejected_the_others_with_their_reasons(
        sets: dict[str, MadeSet], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    best, plain = sets["best"].edit_ids, sets["plain"].edit_ids

    got = _export(capsys, tmp_path / "accepted", "--format", "parquet")
    rows = {r["edit_id"]: r for r in _parquet(tmp_path / "accepted")}
    assert set(rows) == {best[0], plain[0]}, "only the selected candidate, and the edit with no selection"
    selected = rows[best[0]]
    assert (selected["decision"], selected["candidate"], selected["selection"], selected["selection_rank"],
            selected["selection_by"]) == ("accepted", 0, "selected", 1, "selection")
    assert selected["edit_backend"] == "instruct-pix2pix" and selected["seed"] == 1000
    assert "highest clip_score" in selected["selection_why"]
    assert rows[plain[0]]["selection"] == "" and rows[plain[0]]["candidate"] is None
    summary = json.loads((tmp_path / "accepted" / "summary.json").read_text())
    assert got["rows"] == 2 and summary["export"]["selection"] == {"selected": 1, "not_selected": 0}
    assert summary["selection"] == {"sets": 1, "overruled": 0, "candidates": 3, "selected": 1, "not_selected": 2}
    assert "Best-of-N (1 selected, 0 not selected)" in (tmp_path / "accepted" / "README.md").read_text()

    got = _export(capsys, tmp_path / "rejected", "--decision", "rejected")
    rows = _metadata(tmp_path / "rejected")
    assert set(rows) == {best[1], best[2], plain[1]}
    passed_over = rows[best[1]]  # accepted by the AI, but another candidate was selected
    assert passed_over["decision"] == "rejected" and passed_over["ai_decision"] == "accepted"
    assert passed_over["reasons"] == [NOT_SELECTED]
    assert (passed_over["candidate"], passed_over["selection"], passed_over["selection_rank"],
            passed_over["edit_backend"], passed_over["seed"]) == (1, "not_selected", 2, "qwen-image-edit-plus", 1001)
    scorer_rejected = rows[best[2]]  # rejected by the scorer: its own reason, no selection reason
    assert scorer_rejected["reasons"] == ["identity_lost"] and scorer_rejected["selection_rank"] == 3
    assert rows[plain[1]]["reasons"] == ["clip_low"] and rows[plain[1]]["selection"] == ""
    summary = json.loads((tmp_path / "rejected" / "summary.json").read_text())
    assert summary["export"]["selection"] == {"selected": 0, "not_selected": 2}

    got = _export(capsys, tmp_path / "all", "--decision", "all")
    assert got["by_decision"] == {"accepted": 2, "rejected": 3}


def test_preference_pairs_the_selected_candidate_with_each_other_and_follows_an_overrule(
        sets: dict[str, MadeSet], db: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from common.domain.overrule import overrule_selection
    from common.review.auth import add_reviewer

    best, plain = sets["best"].edit_ids, sets["plain"].edit_ids
    got = _export(capsys, tmp_path / "pref", "--format", "preference")
    pairs = {(r["chosen_edit_id"], r["rejected_edit_id"]): r for r in _parquet(tmp_path / "pref")}
    # not (1, 2): an accepted candidate that was not selected is never the chosen side
    assert set(pairs) == {(best[0], best[1]), (best[0], best[2]), (plain[0], plain[1])}
    assert got["rows"] == 3
    passed_over, scorer = pairs[best[0], best[1]], pairs[best[0], best[2]]
    assert passed_over["pairing"] == scorer["pairing"] == "selection" and pairs[plain[0], plain[1]]["pairing"] == "decision"
    assert passed_over["rejected_decided_by"] == "selection" and passed_over["rejected_reasons"] == [NOT_SELECTED]
    assert (passed_over["chosen_candidate"], passed_over["chosen_selection_rank"], passed_over["rejected_candidate"],
            passed_over["rejected_selection_rank"]) == (0, 1, 1, 2)
    assert scorer["rejected_decided_by"] == "ai" and scorer["rejected_reasons"] == ["identity_lost"]
    summary = json.loads((tmp_path / "pref" / "summary.json").read_text())
    assert summary["export"]["by_pairing"] == {"selection": 2, "decision": 1}
    assert "the selected edit with each other candidate" in (tmp_path / "pref" / "README.md").read_text()

    with db.session() as s:  # a person prefers candidate 1: it is chosen now, against the former winner too
        alice = add_reviewer(s, "alice", "a long enough password")
        s.flush()
        assert overrule_selection(s, sets["best"].analysis_id, best[1], alice.id, note="sharper collar")
    _export(capsys, tmp_path / "pref", "--format", "preference")
    pairs = {(r["chosen_edit_id"], r["rejected_edit_id"]): r for r in _parquet(tmp_path / "pref")}
    assert set(pairs) == {(best[1], best[0]), (best[1], best[2]), (plain[0], plain[1])}
    assert pairs[best[1], best[0]]["rejected_decided_by"] == "person"


def test_the_selection_steps_own_pick_and_an_edit_with_no_candidate_number(
        db: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from common.domain.selection import select_for_analysis

    storage = get_storage(get_settings().storage_url)
    # no selection row yet: the selection step writes it from the stored decisions (the larger margin wins)
    made = add_set(db, storage, [Cand(margin=0.05), Cand(margin=0.3), Cand("rejected", ("clip_low",))], 4,
                   selection=False)
    held_out = add_uncounted(db, storage, made, 4)  # same analysis, no candidate number: keeps its own decision
    with db.session() as s:
        row = select_for_analysis(s, made.analysis_id, get_settings())
    assert row is not None and row["edit_id"] == made.edit_ids[1]
    _export(capsys, tmp_path / "accepted")
    rows = _metadata(tmp_path / "accepted")
    assert set(rows) == {made.edit_ids[1], held_out}
    assert rows[made.edit_ids[1]]["selection"] == "selected" and rows[held_out]["selection"] == ""
    _export(capsys, tmp_path / "rejected", "--decision", "rejected")
    rows = _metadata(tmp_path / "rejected")
    assert set(rows) == {made.edit_ids[0], made.edit_ids[2]} and rows[made.edit_ids[0]]["reasons"] == [NOT_SELECTED]
    _export(capsys, tmp_path / "pref", "--format", "preference")
    pairs = {(r["chosen_edit_id"], r["rejected_edit_id"]) for r in _parquet(tmp_path / "pref")}
    # the held-out edit pairs by today's rule, outside the set: with no rejected edit there, with nothing
    assert pairs == {(made.edit_ids[1], made.edit_ids[0]), (made.edit_ids[1], made.edit_ids[2])}
    summary = json.loads((tmp_path / "pref" / "summary.json").read_text())
    assert summary["selection"] == {"sets": 1, "overruled": 0, "candidates": 3, "selected": 1, "not_selected": 2}


def test_streaming_in_chunks_of_one_and_a_selection_without_a_winner(
        sets: dict[str, MadeSet], db: Any) -> None:
    from common.dataset.export_rows import iter_pairs, iter_rows, plan_rows
    from common.store.rows import Selection

    storage = get_storage(get_settings().storage_url)
    # every candidate rejected: the selection picked none, so nothing of it is accepted
    none = add_set(db, storage, [Cand("rejected", ("clip_low",)), Cand("rejected", ("clip_low",))], 3, winner=None)
    for decision in ("accepted", "rejected", "all"):
        whole = [r["edit_id"] for r in iter_rows(db, {}, decision=decision)]
        assert [r["edit_id"] for r in iter_rows(db, {}, decision=decision, chunk=1)] == whole
        assert plan_rows(db, decision=decision).rows == len(whole)
    assert [r["edit_id"] for r in iter_rows(db, {}, decision="accepted")] == [sets["best"].edit_ids[0],
                                                                           sets["plain"].edit_ids[0]]
    assert set(none.edit_ids) <= {r["edit_id"] for r in iter_rows(db, {}, decision="rejected")}
    assert list(iter_pairs(db, {}, ids_only=True, chunk=1)) == list(iter_pairs(db, {}, ids_only=True))
    with db.session() as s:  # the store says so too
        assert s.scalar(select(Selection.edit_id).where(Selection.analysis_id == none.analysis_id)) is None
