"""Resumable training checkpoints, without pickle: tensors in safetensors, the rest in JSON.

A checkpoint is a folder ``step-NNNNNNNN`` holding the trainable weights, the optimizer state
(flattened to named tensors plus JSON scalars) and ``state.json`` (step, loss curve, anything
else the trainer keeps). It is written to a temporary folder and renamed, so a job killed while
writing leaves the previous checkpoint intact; older checkpoints are removed after.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PREFIX = "step-"


@dataclass
class Checkpoint:
    step: int
    weights: dict[str, Any]  # name -> tensor
    optimizer: dict[str, Any]  # an optimizer state_dict
    state: dict[str, Any]


def _flatten_optimizer(state_dict: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Optimizer state as named tensors + JSON scalars; nested dicts (bitsandbytes keeps its
    quantisation state in one) become ``/``-joined names."""
    import torch

    tensors: dict[str, Any] = {}
    scalars: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                walk(f"{prefix}/{key}", sub)
        elif isinstance(value, torch.Tensor):
            tensors[prefix] = value.detach().contiguous().cpu()
        else:
            scalars[prefix] = value

    for idx, per_param in state_dict["state"].items():
        walk(str(idx), per_param)
    return tensors, {"scalars": scalars, "param_groups": state_dict["param_groups"]}


def _unflatten_optimizer(tensors: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in [*tensors.items(), *meta["scalars"].items()]:
        idx, *path = name.split("/")
        node = state.setdefault(int(idx), {})
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save(folder: Path, step: int, weights: dict[str, Any], optimizer_state: dict[str, Any],
         state: dict[str, Any]) -> Path:
    """Write checkpoint ``step`` under ``folder``; returns its path. Older ones are removed."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{PREFIX}{step:08d}"
    tmp = folder / f".tmp-{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, str(tmp / "weights.safetensors"))
    opt_tensors, opt_meta = _flatten_optimizer(optimizer_state)
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    (tmp / "optimizer.json").write_text(json.dumps(opt_meta))
    (tmp / "state.json").write_text(json.dumps({**state, "step": step}))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in folder.glob(f"{PREFIX}*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    log.info("checkpoint at step %d in %s", step, final)
    return final


def latest(folder: Path) -> Checkpoint | None:
    """The newest complete checkpoint under ``folder``, or None."""
    from safetensors.torch import load_file

    done = sorted(p for p in folder.glob(f"{PREFIX}*") if (p / "state.json").is_file()) if folder.is_dir() else []
    if not done:
        return None
    path = done[-1]
    state = json.loads((path / "state.json").read_text())
    optimizer = _unflatten_optimizer(load_file(str(path / "optimizer.safetensors")),
                                     json.loads((path / "optimizer.json").read_text()))
    return Checkpoint(int(state["step"]), load_file(str(path / "weights.safetensors")), optimizer, state)
