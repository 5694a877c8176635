"""One residency manager per device: with ``models.exclusive_per_device`` on (the default for one
card), a local run unloads the VL model before it loads the editor."""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures.models import use_tiny_models
from fixtures.pipeline import ingest_and_pair, stage_context


@pytest.mark.parametrize("exclusive", [True, False])
def test_a_local_run_holds_one_model_per_device_when_exclusive(exclusive: bool, tiny_models: dict[str, Path],
                                                               tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from common.core.settings import reset_settings
    from common.runtime.resident import clear_all, on_device
    from common.runtime.runner import run_all

    use_tiny_models(monkeypatch, tiny_models)
    for key, value in {"SYNTHPIPE_MODELS__EXCLUSIVE_PER_DEVICE": str(exclusive).lower(),
                       "SYNTHPIPE_VL__DEVICE": "cpu", "SYNTHPIPE_EDIT__DEVICE": "cpu",
                       "SYNTHPIPE_SCORE__SCORERS": "change"}.items():
        monkeypatch.setenv(key, value)
    reset_settings()
    clear_all()
    ingest_and_pair(tmp_path, persons=0, garments=0, characters=1, tryon=0)
    ctx = stage_context()
    manager = on_device("cpu", ctx.settings)
    before = len(manager.events)
    results = run_all(ctx, ("vl", "edit"))
    assert results["vl"].claimed == 5 and results["edit"].claimed >= 1
    events = manager.events[before:]
    vl_load = events.index(("load", f"qwen {tiny_models['vl']}"))
    edit_load = next(i for i, e in enumerate(events) if e[0] == "load" and e[1].startswith("instruct-pix2pix"))
    vl_unloads = [i for i, e in enumerate(events) if e == ("unload", f"qwen {tiny_models['vl']}")]
    if exclusive:  # the VL model left the device before the editor came
        assert vl_load < vl_unloads[0] < edit_load
        assert len(manager.held()) == 1
    else:
        assert not vl_unloads and len(manager.held()) == 2
    clear_all()


def test_a_served_backend_lives_in_the_remote_manager_and_unloads_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A model server's client holds no device: loading it never clears a card's models, even with
    ``models.exclusive_per_device`` on, and torch is not asked where ``remote`` is."""
    from common.core.settings import get_settings, reset_settings
    from common.runtime.resident import REMOTE, on_device

    monkeypatch.setenv("SYNTHPIPE_MODELS__EXCLUSIVE_PER_DEVICE", "true")
    reset_settings()
    settings = get_settings()

    class Held:
        unloaded = False

        def load(self) -> None:
            pass

        def unload(self) -> None:
            self.unloaded = True

    cpu, remote = on_device("cpu", settings), on_device(REMOTE, settings)
    cpu.clear()
    model = cpu.get("model", Held, label="model")
    first, second = remote.get("a", Held, label="a"), remote.get("b", Held, label="b")
    assert cpu.exclusive and not remote.exclusive
    assert not (model.unloaded or first.unloaded or second.unloaded) and cpu.held() == ["model"]
    assert {"a", "b"} <= set(remote.held())
    cpu.clear()
    remote.clear()
