"""Queueing score jobs: one per edit, from the edit stage, ``synthpipe import`` and ``--rescore``.

Lives in ``common`` so whoever makes an edit can queue its scoring without importing the
score worker.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.orm import Session

from common.store import jobs as jobstore

STAGE = "score"


def score_key(edit_id: int) -> str:
    """The idempotency key of an edit's first score job."""
    return f"score:edit:{edit_id}"


def queue_score(session: Session, edit_id: int, scorers: Sequence[str] | None = None, *,
                rescore: str | None = None, item_set_id: int | None = None,
                parent_id: int | None = None) -> int | None:
    """Queue scoring of ``edit_id`` in ``session``'s transaction; returns the job id, or None when
    that job exists already (queueing twice is harmless).

    ``scorers`` names the scorers to run (default: ``score.scorers`` when the job runs); scores of
    other scorers are kept. ``rescore`` is a token that makes a new job although the edit was
    scored before (``synthpipe score --rescore`` passes one per invocation).
    """
    payload: dict[str, object] = {"edit_id": int(edit_id)}
    key = score_key(edit_id)
    if scorers:
        payload["scorers"] = sorted(set(scorers))
    if rescore is not None:
        key = f"{key}:rescore:{rescore}:{','.join(sorted(set(scorers or ())))}"
    return jobstore.enqueue(session, STAGE, key[:255], payload, item_set_id=item_set_id, parent_id=parent_id)
