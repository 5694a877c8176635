"""``synthpipe serve-args vl``: the vLLM and SGLang command lines follow the settings (the served
tests start their real vLLM server with these flags, ``fixtures.vllm``)."""

from __future__ import annotations

import json

import pytest

from common.cli import main


def test_serve_args_follow_the_model_images_context_and_grammar(monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    for key, value in {"SYNTHPIPE_VL_MODEL": "Qwen/Qwen2.5-VL-7B-Instruct", "SYNTHPIPE_VL__MAX_PIXELS": str(768 * 784),
                       "SYNTHPIPE_VL__MAX_NEW_TOKENS": "1024", "SYNTHPIPE_PAIRING__MAX_GARMENTS": "2",
                       "SYNTHPIPE_VL__OPENAI__BASE_URL": "http://127.0.0.1:8011/v1",
                       "SYNTHPIPE_VL__OPENAI__MODEL": "qwen-vl"}.items():
        monkeypatch.setenv(key, value)
    assert main(["serve-args", "vl", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    vllm, sglang = got["vllm"], got["sglang"]
    assert vllm[:3] == ["vllm", "serve", "Qwen/Qwen2.5-VL-7B-Instruct"]
    flag = {vllm[i]: vllm[i + 1] for i in range(3, len(vllm) - 1) if vllm[i].startswith("--")}
    assert flag["--port"] == "8011" and flag["--host"] == "127.0.0.1" and flag["--served-model-name"] == "qwen-vl"
    assert json.loads(flag["--limit-mm-per-prompt"]) == {"image": 3, "video": 0}  # person + 2 garments
    assert json.loads(flag["--structured-outputs-config"]) == {"backend": "xgrammar", "disable_any_whitespace": True}
    # 3 images of 768 vision tokens (+2 markers each), 1024 for the prompt, 1024 answer tokens; rounded up to 256
    assert int(flag["--max-model-len"]) == 4608 == got["plan"]["context"]  # 3 * 770 + 2048 = 4358
    assert json.loads(flag["--mm-processor-kwargs"])["max_pixels"] == 768 * 784
    assert sglang[sglang.index("--context-length") + 1] == "4608" and "--constrained-json-disable-any-whitespace" in sglang
    assert got["settings"] == {"SYNTHPIPE_VL__BACKEND": "openai", "SYNTHPIPE_VL__OPENAI__BASE_URL": "http://127.0.0.1:8011/v1"}


def test_the_judge_needs_room_for_the_edited_photo_too(monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SYNTHPIPE_SCORE__SCORERS", "change,judge")
    assert main(["serve-args", "vl"]) == 0
    out = capsys.readouterr().out
    assert '--limit-mm-per-prompt \'{"image":5,"video":0}\'' in out  # input, edited, 3 garments
    assert "--served-model-name" not in out and "export SYNTHPIPE_VL__BACKEND=openai" in out


def test_the_readme_recipe_is_what_serve_args_prints_for_the_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    import re
    import shlex
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("## Serving the VL model"):]
    block = section[section.index("```bash"):section.index("```", section.index("```bash") + 3)]
    recipe = re.search(r"# (vllm serve .*?)\n(?!#   )", block, re.S)
    assert recipe is not None
    written = shlex.split(recipe.group(1).replace("\\\n#   ", " "))
    assert main(["serve-args", "vl", "--json"]) == 0
    assert written == json.loads(capsys.readouterr().out)["vllm"]
