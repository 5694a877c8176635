"""The openai backend's requests and header parsing, without a server (the server tests are in
test_served_vl.py): images as PNG data URLs before the prompt, the bounded schema as
``response_format``, per-provider extras merged in, Retry-After in both of its forms."""

from __future__ import annotations

import base64
import email.utils
import io
import time

import pytest
from PIL import Image

from common.core.errors import InputError
from common.domain.schemas import analysis_json_schema
from worker_vl.backends.base import VLItem
from worker_vl.backends.openai_compat import OpenAIVLBackend, retry_after
from worker_vl.constrained import bound_schema


def test_a_request_carries_images_schema_and_extras() -> None:
    backend = OpenAIVLBackend(model="m", base_url="http://127.0.0.1:1/v1", max_new_tokens=300,
                              extra_body={"structured_outputs": {"disable_any_whitespace": True}, "top_k": 1})
    person = Image.new("RGB", (40, 30), (10, 200, 30))
    schema = analysis_json_schema("tryon")
    body = backend.request_body(VLItem("k", [person, person.convert("L")], "sys", "look", json_schema=schema))
    system, user = body["messages"]
    assert system == {"role": "system", "content": "sys"} and user["content"][-1] == {"type": "text", "text": "look"}
    urls = [part["image_url"]["url"] for part in user["content"][:-1]]
    assert len(urls) == 2 and all(u.startswith("data:image/png;base64,") for u in urls)
    decoded = Image.open(io.BytesIO(base64.b64decode(urls[0].split(",", 1)[1])))
    assert decoded.size == (40, 30) and decoded.getpixel((0, 0)) == (10, 200, 30)  # lossless
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"] == bound_schema(schema)  # what the grammar compiles
    assert body["max_tokens"] == 300 and body["top_k"] == 1 and body["structured_outputs"]["disable_any_whitespace"]


def test_an_item_without_images_or_with_a_tiny_one_is_refused_before_sending() -> None:
    backend = OpenAIVLBackend(model="m")
    with pytest.raises(InputError, match="has 0 images"):
        backend.request_body(VLItem("k", [], "", "x"))
    with pytest.raises(InputError, match="image 0 is 8x8"):
        backend.request_body(VLItem("k", [Image.new("RGB", (8, 8))], "", "x"))


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert retry_after("3") == 3.0 and retry_after(" 0.5 ") == 0.5 and retry_after("-2") == 0.0
    when = email.utils.formatdate(time.time() + 10, usegmt=True)
    assert 8.0 <= (retry_after(when) or 0) <= 10.5
    assert retry_after(None) is None and retry_after("soon") is None


def test_params_name_the_key_variable_never_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNTHPIPE_TEST_KEY", "sk-secret-123")
    backend = OpenAIVLBackend(model="m", api_key_env="SYNTHPIPE_TEST_KEY")
    assert backend._read_key() == "sk-secret-123"
    assert "sk-secret-123" not in repr(backend) + str(backend.params())
