"""Database models. The schema itself is made and changed only by Alembic (``migrations/``)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Identity,
    Index,
    Integer,
    String,
    Text,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, validates

# Stages are not listed here: they come from the registry (common.core.stages).
STATUSES = ("queued", "running", "succeeded", "skipped", "failed", "dead", "cancelled")
ROLES = ("person", "garment", "character")
RECIPES = ("tryon", "enrich")
FINAL_STATUSES = ("succeeded", "skipped", "failed", "dead", "cancelled")
#: where an edit came from
EDIT_ORIGINS = ("pipeline", "imported", "generated")
DECISIONS = ("accepted", "rejected")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)



#: Widths of the disjoint bit bands a 64-bit hash is cut into for indexed near-duplicate search.
#: Two hashes within ``len(PHASH_BANDS) - 1`` bits of each other agree exactly on at least one
#: band (pigeonhole), so an indexed equality match on any band finds every candidate.
PHASH_BANDS = (13, 13, 13, 13, 12)
BANDED_MAX_DISTANCE = len(PHASH_BANDS) - 1


def phash_bands(phash: str) -> tuple[int, ...]:
    """The band values of a 16-hex-digit hash, most significant band first."""
    value, out, shift = int(phash, 16), [], 64
    for width in PHASH_BANDS:
        shift -= width
        out.append((value >> shift) & ((1 << width) - 1))
    return tuple(out)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Asset(Base):
    """One stored image, content-addressed, with where it came from."""

    __tablename__ = "assets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    phash: Mapped[str] = mapped_column(String(16), index=True)
    # phash cut into bands (PHASH_BANDS), each indexed: near-duplicate search
    # looks up candidates that share a band instead of scanning every asset. Set from phash.
    phash_b0: Mapped[int | None] = mapped_column(Integer, index=True)
    phash_b1: Mapped[int | None] = mapped_column(Integer, index=True)
    phash_b2: Mapped[int | None] = mapped_column(Integer, index=True)
    phash_b3: Mapped[int | None] = mapped_column(Integer, index=True)
    phash_b4: Mapped[int | None] = mapped_column(Integer, index=True)
    colour: Mapped[str | None] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    format: Mapped[str] = mapped_column(String(16))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(16), index=True)
    uri: Mapped[str] = mapped_column(Text)
    source_path: Mapped[str | None] = mapped_column(Text)
    source_url: Mapped[str | None] = mapped_column(Text)
    page_url: Mapped[str | None] = mapped_column(Text)
    site: Mapped[str | None] = mapped_column(String(200), index=True)
    category: Mapped[str | None] = mapped_column(String(200), index=True)
    licence: Mapped[str | None] = mapped_column(Text)
    fetched_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    found_via: Mapped[str | None] = mapped_column(String(32))  # start | link | sitemap | image_sitemap
    # how the role was decided: {"by": "site_rule" | "detector" | "default" | "given", ...evidence}
    role_evidence: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # renditions of this photo the crawler met: [{url, width, height, sha256, kept}, ...] (0013)
    versions: Mapped[list[Any] | None] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    @validates("phash")
    def _set_bands(self, _key: str, phash: str) -> str:
        for i, band in enumerate(phash_bands(phash)):
            setattr(self, f"phash_b{i}", band)
        return phash


class ItemSet(Base):
    """What one VL job looks at: a person + garments (tryon) or one character photo (enrich)."""

    __tablename__ = "item_sets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(200), unique=True)
    recipe: Mapped[str] = mapped_column(String(16), index=True)
    variation: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    keywords: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    seed: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    members: Mapped[list[ItemSetAsset]] = relationship(
        order_by="ItemSetAsset.position", cascade="all, delete-orphan", lazy="selectin"
    )


class ItemSetAsset(Base):
    __tablename__ = "item_set_assets"

    item_set_id: Mapped[int] = mapped_column(ForeignKey("item_sets.id", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    asset_id: Mapped[int] = mapped_column(ForeignKey("assets.id"), index=True)
    role: Mapped[str] = mapped_column(String(16))

    asset: Mapped[Asset] = relationship(lazy="joined")


class Job(Base):
    """One unit of work of one stage. The database is the source of truth for its state."""

    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_claim", "stage", "status", "not_before", "id"),
        # claims and sweeps read only queued / running jobs, however long the finished history
        Index("ix_jobs_queued", "stage", "id", postgresql_where=text("status = 'queued'"),
              sqlite_where=text("status = 'queued'")),
        Index("ix_jobs_running_lease", "stage", "lease_expires_at", postgresql_where=text("status = 'running'"),
              sqlite_where=text("status = 'running'")),
        Index("ix_jobs_with_reason", "stage", "status", "reason", postgresql_where=text("reason IS NOT NULL"),
              sqlite_where=text("reason IS NOT NULL")),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    stage: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    key: Mapped[str] = mapped_column(String(255), unique=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    item_set_id: Mapped[int | None] = mapped_column(ForeignKey("item_sets.id"), index=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), index=True)
    not_before: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    worker: Mapped[str | None] = mapped_column(String(200))
    error_type: Mapped[str | None] = mapped_column(String(100))  # the error's kind (common.core.errors.ErrorKind)
    reason: Mapped[str | None] = mapped_column(String(100), index=True)  # stable reason code of a failure or skip
    error_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))



class JobCount(Base):
    """Jobs per stage and status, kept by database triggers (migration 0010), so ``status`` and
    the metrics scrape never count the jobs table. On PostgreSQL recent changes wait in
    :class:`JobCountDelta` until a reader folds them in (``common.store.jobs.counts``)."""

    __tablename__ = "job_counts"

    stage: Mapped[str] = mapped_column(String(16), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger, default=0)


class JobCountDelta(Base):
    """PostgreSQL only: one aggregated change per (stage, status) per statement on ``jobs``."""

    __tablename__ = "job_count_deltas"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    stage: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    delta: Mapped[int] = mapped_column(BigInteger)

class Analysis(Base):
    """A validated VL analysis of one item set, with the raw text it was parsed from."""

    __tablename__ = "analyses"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), unique=True)
    item_set_id: Mapped[int] = mapped_column(ForeignKey("item_sets.id"), index=True)
    recipe: Mapped[str] = mapped_column(String(16))
    schema_version: Mapped[str] = mapped_column(String(32))
    prompt_version: Mapped[str] = mapped_column(String(32))
    backend: Mapped[str] = mapped_column(String(64))
    model_id: Mapped[str] = mapped_column(Text)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    raw_text: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    edit_prompt: Mapped[str] = mapped_column(Text)
    negative_prompt: Mapped[str | None] = mapped_column(Text)
    confidence: Mapped[float] = mapped_column(Float)
    feasibility: Mapped[str] = mapped_column(String(16))
    timings: Mapped[dict[str, Any]] = mapped_column(JSON)
    adapter_id: Mapped[int | None] = mapped_column(ForeignKey("adapters.id"), index=True)  # LoRA used, if any
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Edit(Base):
    """One edited image, content-addressed, with everything needed to make it again."""

    __tablename__ = "edits"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # pipeline edits come from an edit job and an analysis; imported ones have neither
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"), unique=True)
    analysis_id: Mapped[int | None] = mapped_column(ForeignKey("analyses.id"), index=True)
    item_set_id: Mapped[int] = mapped_column(ForeignKey("item_sets.id"), index=True)
    origin: Mapped[str] = mapped_column(String(16), default="pipeline", index=True)
    edit_prompt: Mapped[str | None] = mapped_column(Text)  # the instruction the edit followed
    import_key: Mapped[str | None] = mapped_column(String(200), unique=True)  # imported: sha of the row
    provenance: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # imported: where the row came from
    backend: Mapped[str] = mapped_column(String(64))
    model_id: Mapped[str] = mapped_column(Text)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    seed: Mapped[int] = mapped_column(BigInteger)
    output_uri: Mapped[str] = mapped_column(Text)
    output_sha256: Mapped[str] = mapped_column(String(64))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    timings: Mapped[dict[str, Any]] = mapped_column(JSON)
    adapter_id: Mapped[int | None] = mapped_column(ForeignKey("adapters.id"), index=True)  # LoRA used, if any
    candidate: Mapped[int | None] = mapped_column(Integer)  # which of an analysis's N candidates (0014)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Score(Base):
    """The metrics one scorer wrote for one edit (or why it could not). Stored once: thresholds
    are applied to these rows by the decision step, so changing a threshold never rescores."""

    __tablename__ = "scores"
    __table_args__ = (Index("ux_scores_edit_scorer", "edit_id", "scorer", unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    edit_id: Mapped[int] = mapped_column(ForeignKey("edits.id"), index=True)
    scorer: Mapped[str] = mapped_column(String(32))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    raw_text: Mapped[str | None] = mapped_column(Text)
    error_kind: Mapped[str | None] = mapped_column(String(32))
    error_code: Mapped[str | None] = mapped_column(String(100))
    error_message: Mapped[str | None] = mapped_column(Text)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Decision(Base):
    """The AI decision on one edit: accepted or rejected, with stable reason codes and the values
    that failed. Re-deciding (new thresholds) updates this row from the stored scores."""

    __tablename__ = "decisions"
    __table_args__ = (
        # the review queue walks "least certain first", overall or within one AI decision (0011)
        Index("ix_decisions_margin", "margin", "edit_id"),
        Index("ix_decisions_decision_margin", "decision", "margin", "edit_id"),
        # and on PostgreSQL ix_decisions_reasons, a GIN index of (reasons::jsonb) for the reason filter
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    edit_id: Mapped[int] = mapped_column(ForeignKey("edits.id"), unique=True)
    decision: Mapped[str] = mapped_column(String(16), index=True)
    reasons: Mapped[list[Any]] = mapped_column(JSON, default=list)  # codes, e.g. ["identity_lost"]
    failed: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # code -> {metric, value, threshold}
    thresholds: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # what it was decided against
    margin: Mapped[float | None] = mapped_column(Float)  # distance to the nearest threshold (uncertainty)
    decided_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class JobEvent(Base):
    """A change made to a job by a person (retry, cancel): every change is kept."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    action: Mapped[str] = mapped_column(String(32))
    from_status: Mapped[str] = mapped_column(String(16))
    to_status: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str | None] = mapped_column(String(200))
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


# --- review (issue: human review) ---------------------------------------------------------


class Reviewer(Base):
    """A person who reviews edits. Only hashes are stored: argon2 for the password, sha256 for
    the script token (a random 256-bit value needs no slow hash)."""

    __tablename__ = "reviewers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    password_hash: Mapped[str] = mapped_column(Text)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    token_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    token_created_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ReviewSession(Base):
    """A login: the cookie holds a random value, the row its sha256 and the form (CSRF) token."""

    __tablename__ = "review_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    reviewer_id: Mapped[int] = mapped_column(ForeignKey("reviewers.id"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), index=True)


class Review(Base):
    """One decision of one reviewer on one edit. Rows are only ever added: the newest row of a
    (reviewer, edit) is that reviewer's current decision; an undo adds a row that restores the
    state before the row it undoes (``undoes_id``)."""

    __tablename__ = "reviews"
    __table_args__ = (Index("ix_reviews_reviewer_edit", "reviewer_id", "edit_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    reviewer_id: Mapped[int] = mapped_column(ForeignKey("reviewers.id"), index=True)
    edit_id: Mapped[int] = mapped_column(ForeignKey("edits.id"), index=True)
    decision: Mapped[str] = mapped_column(String(16))  # accepted | rejected | cleared (undone)
    tags: Mapped[list[Any]] = mapped_column(JSON, default=list)
    note: Mapped[str | None] = mapped_column(Text)
    undoes_id: Mapped[int | None] = mapped_column(ForeignKey("reviews.id"), index=True)
    batch_id: Mapped[str | None] = mapped_column(String(32), index=True)  # rows of one accept-all
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ReviewCurrent(Base):
    """A reviewer's current decision on an edit: a copy of their newest ``reviews`` row, kept by
    a database trigger on ``reviews`` (migration 0011), so the queue and the stats never group
    the whole review history. ``decision`` is ``cleared`` after an undo back to nothing."""

    __tablename__ = "review_current"
    __table_args__ = (Index("ix_review_current_edit", "edit_id"),)

    reviewer_id: Mapped[int] = mapped_column(ForeignKey("reviewers.id"), primary_key=True)
    edit_id: Mapped[int] = mapped_column(ForeignKey("edits.id"), primary_key=True)
    decision: Mapped[str] = mapped_column(String(16))
    tags: Mapped[list[Any] | None] = mapped_column(JSON)
    note: Mapped[str | None] = mapped_column(Text)
    review_id: Mapped[int] = mapped_column(Integer)  # the reviews row this copies
    created_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class ReviewEditCount(Base):
    """Per reviewed edit, how many reviewers currently accept and reject it; kept by the same
    trigger. An edit nobody reviewed has no row."""

    __tablename__ = "review_edit_counts"

    edit_id: Mapped[int] = mapped_column(ForeignKey("edits.id"), primary_key=True)
    accepted: Mapped[int] = mapped_column(Integer, default=0)
    rejected: Mapped[int] = mapped_column(Integer, default=0)


class ReviewLoginFailure(Base):
    """A failed login, by the name tried and the client address: recent ones slow logins down."""

    __tablename__ = "review_login_failures"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), index=True)
    address: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)


# --- train (issue: flywheel) --------------------------------------------------------------


#: what a train job fine-tunes
TRAIN_TARGETS = ("edit", "vl", "character", "edit-plus")


class Snapshot(Base):
    """A frozen training set: the accepted edit ids a train job reads, with their hash, so the
    same job can be run again on exactly the same data (and exported for outside trainers)."""

    __tablename__ = "snapshots"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)  # of the sorted edit ids + selection
    target: Mapped[str] = mapped_column(String(16), index=True)
    edit_ids: Mapped[list[Any]] = mapped_column(JSON)  # sorted
    size: Mapped[int] = mapped_column(Integer)
    selection: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # source of decisions, exclusions
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Adapter(Base):
    """A trained LoRA adapter, its files stored content-addressed, with how it was made."""

    __tablename__ = "adapters"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    target: Mapped[str] = mapped_column(String(16), index=True)
    base_model: Mapped[str] = mapped_column(Text)
    round: Mapped[int | None] = mapped_column(Integer)
    snapshot_id: Mapped[int] = mapped_column(ForeignKey("snapshots.id"), index=True)
    snapshot_sha256: Mapped[str] = mapped_column(String(64))
    sha256: Mapped[str] = mapped_column(String(64), index=True)  # of the weights file
    weights_uri: Mapped[str] = mapped_column(Text)
    config_uri: Mapped[str] = mapped_column(Text)
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    loss_curve: Mapped[list[Any]] = mapped_column(JSON)  # [[step, loss], ...]
    steps: Mapped[int] = mapped_column(Integer)
    train_seconds: Mapped[float] = mapped_column(Float)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

# --- generate (issue: FLUX) ---------------------------------------------------------------


#: how a lineage row's asset came to be
ASSET_PROVENANCES = ("generated",)


class AssetLineage(Base):
    """Where a generated asset came from: the character photo it depicts, the adapter, prompt,
    seed and parameters that made it, and the edit row (origin ``generated``) it is scored as."""

    __tablename__ = "asset_lineage"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    asset_id: Mapped[int] = mapped_column(ForeignKey("assets.id"), unique=True)
    provenance: Mapped[str] = mapped_column(String(16), default="generated", index=True)
    source_asset_id: Mapped[int] = mapped_column(ForeignKey("assets.id"), index=True)
    edit_id: Mapped[int | None] = mapped_column(ForeignKey("edits.id"), unique=True)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"), unique=True)
    adapter_id: Mapped[int | None] = mapped_column(ForeignKey("adapters.id"), index=True)
    prompt: Mapped[str] = mapped_column(Text)
    seed: Mapped[int] = mapped_column(BigInteger)
    backend: Mapped[str] = mapped_column(String(64))
    model_id: Mapped[str] = mapped_column(Text)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)



class Selection(Base):
    """Best-of-N: the candidate edit the selection step picked for one analysis (``edit_id``),
    the ranking and why; a person's overrule (``person_edit_id``) wins over it."""

    __tablename__ = "selections"

    analysis_id: Mapped[int] = mapped_column(ForeignKey("analyses.id"), primary_key=True)
    item_set_id: Mapped[int] = mapped_column(ForeignKey("item_sets.id"), index=True)
    edit_id: Mapped[int | None] = mapped_column(ForeignKey("edits.id"), index=True)
    ranking: Mapped[list[Any]] = mapped_column(JSON, default=list)
    rule: Mapped[str] = mapped_column(String(100))
    why: Mapped[str] = mapped_column(Text)
    candidates: Mapped[int] = mapped_column(Integer)  # candidates scored when it was selected
    expected: Mapped[int] = mapped_column(Integer)  # candidates asked for (edit.candidates then)
    person_edit_id: Mapped[int | None] = mapped_column(ForeignKey("edits.id"), index=True)
    person_reviewer_id: Mapped[int | None] = mapped_column(ForeignKey("reviewers.id"))
    person_note: Mapped[str | None] = mapped_column(Text)
    person_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    # indexed: a run's summary reads the sets it selected (0014)
    selected_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)


class ModelUsage(Base):
    """Tokens the model stages spent, per stage and model id (a served model's id as its server
    names it), added in the transaction that records each job (``common.store.usage``), so a
    hosted run's cost is one small read for ``status``, whatever the number of analyses."""

    __tablename__ = "model_usage"

    stage: Mapped[str] = mapped_column(String(16), primary_key=True)
    model: Mapped[str] = mapped_column(String(300), primary_key=True)
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)


__all__ = [
    "FINAL_STATUSES",
    "RECIPES",
    "ROLES",
    "DECISIONS",
    "EDIT_ORIGINS",
    "STATUSES",
    "TRAIN_TARGETS",
    "Adapter",
    "ASSET_PROVENANCES",
    "Analysis",
    "Asset",
    "AssetLineage",
    "Base",
    "Decision",
    "Edit",
    "ItemSet",
    "ItemSetAsset",
    "Job",
    "JobEvent",
    "ModelUsage",
    "Score",
    "Selection",
    "Review",
    "ReviewCurrent",
    "ReviewEditCount",
    "ReviewLoginFailure",
    "ReviewSession",
    "Reviewer",
    "Snapshot",
    "utcnow",
]
