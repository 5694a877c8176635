"""Agreement between reviewers (Cohen's kappa, Krippendorff's alpha), AI against people, and
the final decision (people's majority, a tie unresolved, the AI otherwise)."""

from __future__ import annotations

import re
from collections import Counter
from itertools import permutations

import pytest
from fastapi.testclient import TestClient
from fixtures.review import Spec, add_edit

from common.core.settings import ReviewSettings, get_settings
from common.domain import review_queue as queries
from common.domain.agreement import agreement_summary, krippendorff_alpha
from common.domain.final_decision import final_decisions
from common.review import auth
from common.review.app import create_app
from common.store.db import get_database
from common.store.storage import get_storage

A, R = "accept", "reject"


@pytest.fixture
def env():
    settings = get_settings()
    return get_database(settings.database_url), get_storage(settings.storage_url)


def reviewers(db, *names: str) -> dict[str, int]:
    with db.session() as s:
        return {n: auth.add_reviewer(s, n, "password-" + n).id for n in names}


def decide(db, who: int, edit_ids: list[int], actions: str) -> None:
    with db.session() as s:
        for eid, action in zip(edit_ids, actions, strict=True):
            if action != "-":
                queries.record(s, who, [eid], A if action == "a" else R)


def kappa_by_hand(x: str, y: str) -> float:
    n = len(x)
    observed = sum(a == b for a, b in zip(x, y, strict=True)) / n
    cx, cy = Counter(x), Counter(y)
    expected = sum(cx[k] * cy[k] for k in "ar") / n**2
    return (observed - expected) / (1 - expected)


def alpha_by_hand(units: list[list[str]]) -> float:
    """Nominal Krippendorff's alpha from the coincidence matrix, written out for the test."""
    pairs: Counter[tuple[str, str]] = Counter()
    for values in units:
        m = len(values)
        if m < 2:
            continue
        for i, j in permutations(range(m), 2):
            pairs[(values[i], values[j])] += 1 / (m - 1)
    n_c = Counter()
    for (c, _), w in pairs.items():
        n_c[c] += w
    n = sum(n_c.values())
    observed = sum(w for (c, k), w in pairs.items() if c != k)
    expected = sum(n_c[c] * n_c[k] for c in n_c for k in n_c if c != k) / (n - 1)
    return 1 - observed / expected


def test_two_reviewers_kappa_and_ai_agreement(env):
    db, storage = env
    ai = "aaaaarrrrr"
    edits = [add_edit(db, storage, Spec(ai="accepted" if d == "a" else "rejected",
                                        reasons=() if d == "a" else ("identity_lost",)), i)
             for i, d in enumerate(ai)]
    extra = add_edit(db, storage, Spec(), 99)  # only one reviewer: not in the kappa
    ids = reviewers(db, "alice", "bob")
    alice, bob = "aaaaarrrrr", "aaaarrrrra"
    decide(db, ids["alice"], edits, alice)
    decide(db, ids["bob"], edits, bob)
    decide(db, ids["alice"], [extra], "r")
    with db.session() as s:
        summary = agreement_summary(s)
    between = summary["between_reviewers"]
    assert between["method"] == "cohen_kappa" and between["edits"] == 10
    assert between["value"] == pytest.approx(kappa_by_hand(alice, bob), abs=1e-4)
    assert between["value"] == pytest.approx(0.6, abs=1e-4)
    # people's majority: where alice and bob differ it is a tie, so only 8 edits + extra count
    vs = summary["ai_vs_human"]
    assert vs["edits"] == 9
    assert vs["ai_accepted_human_rejected"] == 1  # extra
    assert vs["ai_accepted_human_accepted"] == 4 and vs["ai_rejected_human_rejected"] == 4
    assert vs["agreement"] == pytest.approx(8 / 9, abs=1e-4)
    assert vs["by_reason"] == {"identity_lost": {"confirmed": 4, "overruled": 0, "confirmed_share": 1.0}}
    # a change of mind counts, not the first answer: bob now agrees everywhere
    decide(db, ids["bob"], [edits[4], edits[9]], "ar")
    with db.session() as s:
        again = agreement_summary(s)
    assert again["between_reviewers"]["value"] == pytest.approx(1.0)
    assert again["ai_vs_human"]["agreement"] == pytest.approx(10 / 11, abs=1e-4)
    # the stats page shows the figure
    c = TestClient(create_app(db, storage, ReviewSettings()), base_url="http://127.0.0.1")
    page = c.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    c.post("/login", data={"username": "alice", "password": "password-alice", "csrf_token": token})
    stats = c.get("/stats").text
    figure = re.search(r'id="reviewer-agreement">.*?data-value="([^"]*)"', stats, re.S).group(1)
    assert float(figure) == pytest.approx(1.0)
    assert "Cohen" in stats
    assert c.get("/api/stats").json()["between_reviewers"]["value"] == pytest.approx(1.0)


def test_three_reviewers_krippendorff_alpha(env):
    db, storage = env
    edits = [add_edit(db, storage, Spec(), i) for i in range(6)]
    ids = reviewers(db, "ann", "ben", "cat")
    votes = {"ann": "aarrar", "ben": "aarr-r", "cat": "arr-aa"}
    for name, v in votes.items():
        decide(db, ids[name], edits, v)
    units = [[votes[n][i] for n in votes if votes[n][i] != "-"] for i in range(6)]
    with db.session() as s:
        between = agreement_summary(s)["between_reviewers"]
    assert between["method"] == "krippendorff_alpha" and between["edits"] == 6
    assert between["value"] == pytest.approx(alpha_by_hand(units), abs=1e-4)
    assert len(between["pairs"]) == 3
    # the same answer throughout leaves alpha undefined, not a number
    assert krippendorff_alpha([[1.0, 1.0], [1.0, 1.0]]) is None
    assert krippendorff_alpha([[1.0, float("nan")], [float("nan"), 0.0]]) is None


def test_final_decision_majority_tie_and_ai(env):
    db, storage = env
    e = [add_edit(db, storage, Spec(ai=ai), i)
         for i, ai in enumerate(["accepted", "rejected", "accepted", "rejected", None, None])]
    ids = reviewers(db, "ann", "ben", "cat")
    decide(db, ids["ann"], e, "rra--a")
    decide(db, ids["ben"], e, "ra----")
    decide(db, ids["cat"], e, "a-----")
    with db.session() as s:
        queries.record(s, ids["ann"], [e[0]], R, tags=["identity_lost"])
        queries.record(s, ids["cat"], [e[0]], A, tags=["artifacts"])
        final = final_decisions(s)
        only = final_decisions(s, [e[1], 9999])
    assert [final[i].decision for i in e] == ["rejected", None, "accepted", "rejected", None, "accepted"]
    assert [final[i].source for i in e] == ["human", "tie", "human", "ai", "none", "human"]
    assert final[e[0]].votes == {"rejected": 2, "accepted": 1}
    assert final[e[0]].review_tags == ["artifacts", "identity_lost"]
    assert final[e[0]].reviewers == ["ann", "ben", "cat"]
    assert final[e[0]].ai_decision == "accepted" and final[e[0]].review_decision == "rejected"
    assert final[e[3]].reviewers == [] and final[e[3]].review_decision is None
    assert list(only) == [e[1]] and only[e[1]].source == "tie"
    # an undo takes a vote back: the tie on e[1] resolves to ann's remaining... none: ben's accept
    with db.session() as s:
        undone = queries.undo(s, ids["ann"])  # ann's latest row: the reject on e[0] with a tag
        assert [r.edit_id for r in undone] == [e[0]]
        assert final_decisions(s, [e[0]])[e[0]].votes == {"rejected": 2, "accepted": 1}  # back to her first "r"
        queries.undo(s, ids["ann"])  # e[5]
        queries.undo(s, ids["ann"])  # e[2]
        queries.undo(s, ids["ann"])  # e[1]: now only ben's accept
        assert final_decisions(s, [e[1]])[e[1]].decision == "accepted"


@pytest.mark.parametrize("fmt", ["imagefolder", "parquet"])
def test_export_follows_the_final_decision(env, tmp_path, fmt: str):
    import json

    from common.dataset.export import export

    db, storage = env
    ai = ["accepted", "accepted", "rejected", "rejected", "accepted"]
    e = [add_edit(db, storage, Spec(ai=d, reasons=() if d == "accepted" else ("identity_lost",)), i)
         for i, d in enumerate(ai)]
    ids = reviewers(db, "ann", "ben")
    # e0 people reject an AI accept; e2 people accept an AI reject; e4 is a tie; e1, e3 stay the AI's
    decide(db, ids["ann"], e, "r-a-a")
    decide(db, ids["ben"], e, "r-a-r")
    with db.session() as s:
        queries.record(s, ids["ben"], [e[0]], R, tags=["wrong_garment"])
    out = tmp_path / "accepted"
    report = export(db, storage, out, fmt=fmt, decision="accepted")
    if fmt == "imagefolder":
        rows = [json.loads(line) for line in (out / "train" / "metadata.jsonl").read_text().splitlines()]
    else:
        from datasets import load_dataset

        rows = list(load_dataset("parquet", data_dir=str(out), split="train"))
    by_id = {r["edit_id"]: r for r in rows}
    assert sorted(by_id) == [e[1], e[2]] and report.rows == 2
    assert by_id[e[2]]["decision"] == "accepted" and by_id[e[2]]["ai_decision"] == "rejected"
    assert by_id[e[2]]["review_decision"] == "accepted" and by_id[e[2]]["reviewers"] == ["ann", "ben"]
    assert by_id[e[1]]["review_decision"] == "" and by_id[e[1]]["reviewers"] == []
    summary = json.loads((out / "summary.json").read_text())
    assert summary["review"]["between_reviewers"]["edits"] == 3
    assert summary["review"]["ai_vs_human"]["ai_accepted_human_rejected"] == 1
    rejected = export(db, storage, tmp_path / "rejected", fmt="imagefolder", decision="rejected")
    rows = [json.loads(line) for line in (tmp_path / "rejected" / "train" / "metadata.jsonl").read_text().splitlines()]
    assert rejected.rows == 2 and sorted(r["edit_id"] for r in rows) == [e[0], e[3]]
    first = next(r for r in rows if r["edit_id"] == e[0])
    assert first["review_tags"] == ["wrong_garment"] and first["ai_decision"] == "accepted"
    everything = export(db, storage, tmp_path / "all", fmt="imagefolder", decision="all")
    assert everything.by_decision == {"accepted": 2, "rejected": 2, "unresolved": 1}
