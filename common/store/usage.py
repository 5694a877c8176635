"""Token totals of the model stages: what a run's analyses and verdicts cost.

A stage puts ``{"usage": {"model", "prompt_tokens", "completion_tokens"}}`` (or a list of them)
in a job's result; :func:`add` folds it into ``model_usage`` inside the transaction that records
the job, fenced on its claim like every other output, so a job recorded twice is never counted
twice and a lost claim counts nothing. One upsert per recorded job on a row per (stage, model):
a few rows for ``status`` to read, however many analyses there are. (On PostgreSQL the row is
locked until that transaction commits, a few milliseconds; job recording is not the bottleneck of
a model stage.)
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from common.store.rows import ModelUsage

MAX_MODEL = 300  # the column's width


def usage_entries(result: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The usage entries of a job result (none when it spent no tokens)."""
    spent = (result or {}).get("usage")
    entries = spent if isinstance(spent, list) else [spent] if isinstance(spent, dict) else []
    return [e for e in entries if isinstance(e, dict) and (e.get("prompt_tokens") or e.get("completion_tokens"))]


def add(session: Session, stage: str, result: dict[str, Any] | None) -> None:
    """Add the tokens of one recorded job's ``result`` to the totals of ``stage``."""
    entries = usage_entries(result)
    if not entries:
        return
    dialect = session.get_bind().dialect.name
    for entry in entries:
        values = {"stage": stage, "model": str(entry.get("model") or "unknown")[:MAX_MODEL], "requests": 1,
                  "prompt_tokens": int(entry.get("prompt_tokens") or 0),
                  "completion_tokens": int(entry.get("completion_tokens") or 0)}
        if dialect in ("postgresql", "sqlite"):
            stmt = (pg_insert if dialect == "postgresql" else sqlite_insert)(ModelUsage).values(**values)
            table = ModelUsage.__table__.c
            session.execute(stmt.on_conflict_do_update(
                index_elements=["stage", "model"],
                set_={k: table[k] + stmt.excluded[k] for k in ("requests", "prompt_tokens", "completion_tokens")}))
            continue
        row = session.get(ModelUsage, (values["stage"], values["model"]), with_for_update=True)
        if row is None:
            session.add(ModelUsage(**values))
        else:
            for key in ("requests", "prompt_tokens", "completion_tokens"):
                setattr(row, key, getattr(row, key) + values[key])
        session.flush()


def totals(session: Session) -> list[dict[str, Any]]:
    """Every (stage, model) total, in stage then model order."""
    rows = session.execute(select(ModelUsage).order_by(ModelUsage.stage, ModelUsage.model)).scalars().all()
    return [{"stage": r.stage, "model": r.model, "requests": int(r.requests), "prompt_tokens": int(r.prompt_tokens),
             "completion_tokens": int(r.completion_tokens)} for r in rows]
