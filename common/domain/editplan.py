"""Best-of-N candidates: the edit jobs an analysed set gets, and what a candidate's decision does
to the candidates not made yet.

**Plan** (:func:`enqueue_candidates`, called by the VL stage in the transaction that writes the
analysis). An analysed set gets ``edit.candidates`` (N) candidate edit jobs, each its own job with
its own key, seed and backend, so each is made, stored, retried and recovered as any edit is:

- keys: candidate 0 keeps the key an edit has always had (``edit:<item set key>``), so N = 1
  changes nothing and candidate 0 of a best-of-N set is the very edit N = 1 makes; candidate
  k ≥ 1 is ``<that key>:c<k>``;
- seeds: each candidate's comes from its own key (:func:`seed_for`);
- backends: candidate k uses ``edit.ensemble[k mod len]``; without an ensemble, the recipe's
  backend (:func:`backend_for`). A best-of-N job names its backend in its payload, which routes
  it to the workers that serve that backend (``synthpipe worker edit --backends``);
- payload: ``candidate`` (k), ``candidates`` (the N planned for the set), ``set_key`` (candidate
  0's key), and for best-of-N ``backend``, ``seed`` and ``early_stop_margin``. A plain edit (N = 1
  and no ensemble) names no backend: its edit worker's settings choose as before, and its set gets
  no selection (:func:`best_of_n_payload`).

**Budget guards.** ``edit.candidates_max_per_run`` bounds the *extra* candidates (k ≥ 1) one
producer process plans (:class:`CandidateBudget`, held by the stage context: one
``synthpipe run`` in local mode, one vl worker process in distributed mode); a set planned past
it gets candidate 0 alone. ``edit.early_stop_margin`` (m) makes the set's candidates in two
waves: candidate 0 first, carrying the others' plan (``deferred``); when it is decided
(:func:`after_decision`, in the score job's transaction) and accepted with margin ≥ m the set
stops there, otherwise the deferred candidates are queued. Whenever a candidate is accepted with
margin ≥ m, its siblings still queued are cancelled with the reason code ``edit.early_stop``.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from common.store import jobs as jobstore
from common.store.rows import Edit, Job

if TYPE_CHECKING:
    from common.core.settings import Settings

#: the reason code of a candidate cancelled because a sibling was accepted with margin
EARLY_STOP = "edit.early_stop"


def seed_for(key: str) -> int:
    """A stable 53-bit seed from a job key (exact in JSON, valid for torch)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") >> 11


def backend_for(recipe: str, settings: Settings) -> str:
    """The edit backend of ``recipe`` (``edit.backend_tryon`` / ``edit.backend_enrich``, else ``edit.backend``)."""
    edit = settings.edit
    chosen = {"tryon": edit.backend_tryon, "enrich": edit.backend_enrich}.get(recipe)
    return chosen or edit.backend


def candidate_key(set_key: str, k: int) -> str:
    """The job key of candidate ``k`` of the set whose candidate 0 has ``set_key``."""
    return set_key if k == 0 else f"{set_key}:c{k}"


@dataclass
class CandidateBudget:
    """The extra candidates (beyond each set's first) one producer process may still plan."""

    limit: int | None
    used: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def take(self, wanted: int) -> int:
        """Grant up to ``wanted`` extra candidates; returns how many were granted."""
        with self._lock:
            granted = wanted if self.limit is None else max(0, min(wanted, self.limit - self.used))
            self.used += granted
            return granted


def plan(set_key: str, recipe: str, settings: Settings, budget: CandidateBudget | None) -> list[dict[str, Any]]:
    """The candidates of one set, each as ``{"key", "candidate", "backend", "seed"}`` (backend and
    seed None for a plain N = 1 edit, which its edit worker's settings decide as before)."""
    edit = settings.edit
    wanted = edit.candidates
    if wanted > 1 and budget is not None:
        wanted = 1 + budget.take(wanted - 1)
    best_of_n = edit.candidates > 1 or bool(edit.ensemble)
    out = []
    for k in range(wanted):
        key = candidate_key(set_key, k)
        backend = edit.ensemble[k % len(edit.ensemble)] if edit.ensemble else backend_for(recipe, settings)
        out.append({"key": key, "candidate": k, "backend": backend if best_of_n else None,
                    "seed": seed_for(key) if best_of_n else None})
    return out


def _payload(base: dict[str, Any], spec: dict[str, Any], n: int, set_key: str,
             early_stop: float | None) -> dict[str, Any]:
    payload = {**base, "candidate": spec["candidate"], "candidates": n, "set_key": set_key}
    if spec["backend"] is not None:
        payload.update(backend=spec["backend"], seed=spec["seed"])
    if early_stop is not None and n > 1:
        payload["early_stop_margin"] = early_stop
    return payload


def enqueue_candidates(session: Session, *, set_key: str, base: dict[str, Any], recipe: str, item_set_id: int,
                       parent_id: int | None, settings: Settings, budget: CandidateBudget | None) -> list[int]:
    """Queue the candidate edit jobs of one analysed set (``base``: the payload every candidate
    shares, naming the analysis); returns the ids queued (none when they exist already)."""
    specs = plan(set_key, recipe, settings, budget)
    n, early_stop = len(specs), settings.edit.early_stop_margin
    first, *rest = specs
    payload = _payload(base, first, n, set_key, early_stop)
    if early_stop is not None and rest:  # two waves: the rest wait for candidate 0's decision
        payload["deferred"] = rest
        rest = []
    ids = [jobstore.enqueue(session, "edit", first["key"], payload, item_set_id=item_set_id, parent_id=parent_id)]
    for spec in rest:
        ids.append(jobstore.enqueue(session, "edit", spec["key"], _payload(base, spec, n, set_key, early_stop),
                                    item_set_id=item_set_id, parent_id=parent_id))
    return [i for i in ids if i is not None]


def best_of_n_payload(session: Session, edit: Edit) -> dict[str, Any] | None:
    """The payload of the job that made ``edit`` when the edit is a best-of-N candidate (planned
    with several candidates, or with a backend of an ensemble); None for a plain edit (N = 1, no
    ensemble: no selection, today's behaviour), an imported one or a flywheel's own."""
    if edit.candidate is None or edit.job_id is None or edit.analysis_id is None:
        return None
    job = session.get(Job, edit.job_id)
    payload = job.payload if job is not None else None
    if not payload or "set_key" not in payload:
        return None
    return payload if int(payload.get("candidates", 1)) > 1 or payload.get("backend") else None


@dataclass
class AfterDecision:
    """What a candidate's decision did to its set: deferred candidates queued, siblings cancelled."""

    queued: list[int] = field(default_factory=list)
    cancelled: list[int] = field(default_factory=list)


def after_decision(session: Session, edit: Edit, payload: dict[str, Any], decision: str,
                   margin: float | None) -> AfterDecision:
    """Apply the early-stop rule for candidate ``edit`` (made by a job with ``payload``) just
    decided ``decision`` with ``margin``, in the score job's transaction: accepted with margin ≥
    its set's ``early_stop_margin`` cancels the siblings still queued (``edit.early_stop``);
    otherwise candidate 0 queues the candidates it deferred. Queueing and cancelling by key make
    a repeat harmless."""
    done = AfterDecision()
    stop_at = payload.get("early_stop_margin")
    if stop_at is not None and decision == "accepted" and margin is not None and margin >= float(stop_at):
        keys = [candidate_key(payload["set_key"], k) for k in range(int(payload.get("candidates", 1)))]
        others = [Job.stage == "edit", Job.key.in_(keys), Job.id != edit.job_id]
        done.cancelled = jobstore.cancel_queued_in(session, others, reason=EARLY_STOP,
                                                   actor=f"early-stop: edit {edit.id} accepted, margin {margin:.4f}")
        return done
    deferred = payload.get("deferred") or ()
    parent_id = session.scalar(select(Job.parent_id).where(Job.id == edit.job_id)) if deferred else None
    base = {k: v for k, v in payload.items() if k not in ("deferred", "candidate", "backend", "seed")}
    for spec in deferred:
        spec_payload = _payload(base, spec, int(payload["candidates"]), payload["set_key"], stop_at)
        new = jobstore.enqueue(session, "edit", spec["key"], spec_payload, item_set_id=edit.item_set_id,
                               parent_id=parent_id)  # the vl job planned them
        if new is not None:
            done.queued.append(new)
    return done
