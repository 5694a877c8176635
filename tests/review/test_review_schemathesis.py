"""Property-based requests against the review app's own OpenAPI schema (schemathesis, in
process over ASGI): whatever is sent, by a script token or by a logged-in session, the answer is
never a server error. On SQLite and on PostgreSQL (NUL characters, 64-bit overflows and the like
fail only there)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest
import schemathesis
from fixtures.candidate_sets import Cand, add_set
from hypothesis import HealthCheck, given, settings
from sqlalchemy import select

from common.core.settings import ReviewSettings, get_settings
from common.review import auth
from common.review.app import create_app
from common.store.db import Database
from common.store.rows import Reviewer
from common.store.storage import get_storage

try:
    from fixtures.review import Spec, add_edit
except ImportError:  # the helpers' home before tests/fixtures/
    from review_helpers import Spec, add_edit  # type: ignore[no-redef]

MAX_EXAMPLES = 30  # per operation, per credential, per database


@dataclass
class Target:
    """The app under test and the headers that log a request in."""

    app: Any
    headers: dict[str, str]


def _target(db: Database, via: str) -> Target:
    storage = get_storage(get_settings().storage_url)
    review = ReviewSettings()
    with db.session() as s:
        reviewer = auth.add_reviewer(s, "alice", "a long enough password", admin=True)
        token = auth.new_token(s, "alice")
        cookie, row = auth.open_session(s, reviewer, review)
        csrf = row.csrf_token
    for seed in range(3):  # some ids that exist: 1, 2, 3
        add_edit(db, storage, Spec(garments=seed % 2), seed)
    add_set(db, storage, [Cand(), Cand(), Cand("rejected", ("clip_low",))], 9)  # best-of-N: analysis 1, edits 4-6
    headers = ({"Authorization": f"Bearer {token}"} if via == "token"
               else {"Cookie": f"synthpipe_review={cookie}", "X-CSRF-Token": csrf})
    return Target(create_app(db, storage, review), headers)


# the schema is the same for every app (the app does not serve it); operations by their label
SCHEMA = schemathesis.openapi.from_dict(create_app(None, None, ReviewSettings()).openapi())  # type: ignore[arg-type]
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]


def _server_errors(operation: Any, target: Target, counts: dict[str, Counter[int]]) -> list[str]:
    """Up to ``MAX_EXAMPLES`` generated requests to one operation; curl lines of any 5xx."""
    errors: list[str] = []
    answered = counts.setdefault(operation.label, Counter())

    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy())
    def check(case: Any) -> None:
        response = case.call(app=target.app, headers=target.headers, allow_redirects=False)
        answered[response.status_code] += 1
        if response.status_code >= 500:
            errors.append(f"{response.status_code}: {case.as_curl_command(headers=target.headers)}")

    check()
    return errors


@pytest.mark.parametrize("via", ["token", "session"])
def test_no_generated_request_is_a_server_error(db: Database, via: str):
    # (schemathesis' pytest plugin, from_fixture, reads a pytest private that pytest 9 no longer
    # has: each operation's hypothesis strategy is driven here instead, one database per run)
    target = _target(db, via)
    counts: dict[str, Counter[int]] = {}
    errors = [e for operation in OPERATIONS for e in _server_errors(operation, target, counts)]
    for label, answered in counts.items():
        print(f"{db.dialect} {via} {label}: {answered.total()} requests {dict(sorted(answered.items()))}")
    assert not errors, "\n".join(errors[:20])
    assert len(counts) == len(OPERATIONS) >= 16 and all(counts.values())
    # the operations that take input got their full share of examples
    assert all(counts[label].total() == MAX_EXAMPLES for label in ("GET /api/items", "GET /",
                                                                  "POST /api/items/{edit_id}/decision"))
    with db.session() as s:  # whatever was sent, the store still answers
        assert s.scalar(select(Reviewer.name)) == "alice"
