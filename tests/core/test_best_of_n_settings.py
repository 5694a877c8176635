"""Best-of-N settings are checked at start-up: one line naming the key and what is allowed."""

from __future__ import annotations

import pytest

from common.core.errors import ConfigError
from common.core.settings import load_settings


@pytest.mark.parametrize(("env", "message"), [
    ({"SYNTHPIPE_EDIT__ENSEMBLE": "instruct-pix2pix,nope"},
     "edit.ensemble (SYNTHPIPE_EDIT__ENSEMBLE): unknown edit backend(s) nope; allowed: flux-kontext, instruct-pix2pix"),
    ({"SYNTHPIPE_EDIT__ENSEMBLE": "instruct-pix2pix,flux-kontext", "SYNTHPIPE_EDIT__CANDIDATES": "1"},
     "edit.candidates (SYNTHPIPE_EDIT__CANDIDATES) is 1, fewer than the 2 backends of edit.ensemble"),
    ({"SYNTHPIPE_EDIT__CANDIDATES": "0"}, "edit.candidates (SYNTHPIPE_EDIT__CANDIDATES): Input should be greater"),
    ({"SYNTHPIPE_EDIT__SELECT_BY": "judge"}, "edit.select_by (SYNTHPIPE_EDIT__SELECT_BY): must be margin or scorer.metric"),
    ({"SYNTHPIPE_EDIT__SERVE_BACKENDS": "flux"}, "edit.serve_backends (SYNTHPIPE_EDIT__SERVE_BACKENDS): unknown edit"),
    ({"SYNTHPIPE_EDIT__ENSEMBLE": "qwen-image-edit-plus"}, "set pairing.max_garments (SYNTHPIPE_PAIRING__MAX_GARMENTS)"),
])
def test_bad_best_of_n_settings_fail_in_one_line_naming_the_key(monkeypatch: pytest.MonkeyPatch, env: dict[str, str],
                                                                message: str) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert message in str(err.value) and "\n" not in str(err.value)


def test_an_ensemble_sets_the_number_of_candidates_unless_it_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNTHPIPE_EDIT__ENSEMBLE", "instruct-pix2pix,flux-kontext")
    assert load_settings().edit.candidates == 2
    monkeypatch.setenv("SYNTHPIPE_EDIT__CANDIDATES", "5")
    edit = load_settings().edit
    assert edit.candidates == 5 and edit.ensemble == ["instruct-pix2pix", "flux-kontext"]
    assert edit.select_by == "judge.judge_overall" and edit.early_stop_margin is None
    monkeypatch.setenv("SYNTHPIPE_EDIT__SELECT_BY", "-identity.identity_distance")
    assert load_settings().edit.select_by == "-identity.identity_distance"
