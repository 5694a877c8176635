"""Storing a trained adapter: its files content-addressed, its ``adapters`` row with its history."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from common.domain.adapters import CONFIG_NAME, WEIGHTS_NAME
from common.store.rows import Adapter
from common.store.storage import Storage, StoredObject


def store_files(storage: Storage, folder: Path, target: str) -> tuple[StoredObject, StoredObject]:
    """Put the adapter in ``folder`` into storage; returns (weights, config) objects."""
    weights = storage.put((folder / WEIGHTS_NAME[target]).read_bytes(), "safetensors")
    config = storage.put((folder / CONFIG_NAME).read_bytes(), "json")
    return weights, config


def list_adapters(session: Session, target: str | None = None) -> list[dict[str, Any]]:
    """Every adapter (of ``target``), newest first, as plain rows."""
    q = select(Adapter).order_by(Adapter.id.desc())
    if target is not None:
        q = q.where(Adapter.target == target)
    return [adapter_dict(a) for a in session.scalars(q)]


def adapter_dict(a: Adapter) -> dict[str, Any]:
    losses = [loss for _, loss in a.loss_curve]
    return {
        "id": a.id, "target": a.target, "base_model": a.base_model, "round": a.round,
        "snapshot_id": a.snapshot_id, "snapshot_sha256": a.snapshot_sha256, "sha256": a.sha256,
        "weights_uri": a.weights_uri, "config_uri": a.config_uri, "hyperparameters": a.hyperparameters,
        "steps": a.steps, "train_seconds": a.train_seconds, "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None, "loss_curve": a.loss_curve, "job_id": a.job_id,
        "created_at": a.created_at.isoformat(),
    }
