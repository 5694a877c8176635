"""Property tests of the one safe image loader (:func:`common.media.images.load_image`): whatever
bytes come in, out comes a normalised RGB image within the limits or an ``ImageRejected`` with
one of the loader's reason codes, never another exception, and within a time bound (hypothesis'
per-example ``deadline``). Inputs are random bytes (some behind a real format's magic number, so
the parsers get past the first check) and small real PNG, JPEG, GIF and WebP files with bytes
flipped, overwritten, inserted, removed or cut off."""

from __future__ import annotations

import io
from datetime import timedelta

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from common.core.errors import ImageRejected
from common.core.settings import ImageSettings
from common.media.images import load_image

#: small limits keep every example cheap: a header that claims a huge image is refused unread
LIMITS = ImageSettings(max_bytes=200_000, max_pixels=1_000_000, min_side=8, animated="first_frame")
STRICT = ImageSettings(max_bytes=200_000, max_pixels=1_000_000, min_side=8, animated="reject",
                       formats=["PNG", "JPEG"])
#: every reason the loader gives; a code outside it is a refusal nobody counts
CODES = {"image.empty", "image.too_large", "image.not_an_image", "image.decompression_bomb", "image.corrupt",
         "image.format_not_allowed", "image.animated", "image.too_small"}
FUZZ = settings(max_examples=300, deadline=timedelta(seconds=3), database=None, derandomize=False,
                suppress_health_check=[HealthCheck.too_slow])
MAGICS = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"GIF87a", b"RIFF\x00\x01\x00\x00WEBPVP8 ",
          b"BM", b"II*\x00", b"MM\x00*", b"\x00\x00\x01\x00"]


def _picture(mode: str, size: tuple[int, int] = (40, 32), seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    return rgb.convert(mode) if mode != "RGB" else rgb


def _encode(im: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _seeds() -> dict[str, bytes]:
    frames = [_picture("RGB", seed=i).convert("P") for i in range(3)]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=80, loop=0)
    return {
        "rgb.png": _encode(_picture("RGB"), "PNG"),
        "rgba.png": _encode(_picture("RGBA"), "PNG"),
        "grey16.png": _encode(_picture("L").convert("I;16"), "PNG"),
        "palette.png": _encode(_picture("P"), "PNG", transparency=0),
        "photo.jpg": _encode(_picture("RGB"), "JPEG", quality=80),
        "progressive.jpg": _encode(_picture("RGB"), "JPEG", quality=70, progressive=True),
        "cmyk.jpg": _encode(_picture("CMYK"), "JPEG"),
        "animated.gif": gif.getvalue(),
        "still.gif": _encode(_picture("P"), "GIF"),
        "lossy.webp": _encode(_picture("RGB"), "WEBP", quality=60),
        "lossless.webp": _encode(_picture("RGBA"), "WEBP", lossless=True),
    }


SEEDS = _seeds()


def _check(data: bytes, limits: ImageSettings) -> str:
    """Load ``data``; the outcome ("loaded" or the refusal's code), after checking it is a
    well-formed one. Any other exception propagates and fails the test."""
    try:
        loaded = load_image(data, limits)
    except ImageRejected as exc:
        assert exc.code in CODES, exc.code
        assert exc.reason and "\n" not in exc.reason
        return exc.code
    assert loaded.image.mode == "RGB"
    assert loaded.image.size == (loaded.width, loaded.height)
    assert min(loaded.width, loaded.height) >= limits.min_side
    assert loaded.width * loaded.height <= limits.max_pixels
    assert loaded.format in limits.formats
    assert len(loaded.phash) == 16 and len(loaded.colour) == 54
    return "loaded"


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, bytes]:
    """A seed image with up to 8 edits: bytes flipped or overwritten, a run inserted or removed,
    the file cut short."""
    name = draw(st.sampled_from(sorted(SEEDS)))
    data = bytearray(SEEDS[name])
    for _ in range(draw(st.integers(1, 8))):
        if not data:
            break
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        at = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[at] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, draw(st.integers(0, 255))]))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 64))]
        else:
            del data[at:]
    return name, bytes(data)


def test_every_seed_loads_so_the_mutations_start_from_real_images() -> None:
    outcomes = {name: _check(data, LIMITS) for name, data in SEEDS.items()}
    assert outcomes == dict.fromkeys(SEEDS, "loaded")
    assert {load_image(d, LIMITS).format for d in SEEDS.values()} == {"PNG", "JPEG", "GIF", "WEBP"}
    assert _check(SEEDS["animated.gif"], STRICT) == "image.format_not_allowed"
    assert _check(SEEDS["lossy.webp"], STRICT) == "image.format_not_allowed"


@FUZZ
@given(data=st.one_of(st.binary(max_size=4096),
                      st.tuples(st.sampled_from(MAGICS), st.binary(max_size=4096)).map(lambda t: t[0] + t[1])))
def test_any_bytes_load_or_are_refused_with_a_code(data: bytes) -> None:
    _check(data, LIMITS)


@FUZZ
@given(case=mutated())
def test_mutated_real_images_load_or_are_refused_with_a_code(case: tuple[str, bytes]) -> None:
    _check(case[1], LIMITS)
    _check(case[1], STRICT)


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_every_cut_of_a_real_image_loads_or_is_refused_with_a_code(name: str) -> None:
    """Not random: the file cut after every 7th byte, each a truncated file a crawler may meet."""
    data = SEEDS[name]
    outcomes = {_check(data[:n], LIMITS) for n in range(0, len(data), 7)}
    assert "image.empty" in outcomes and outcomes & {"image.corrupt", "image.not_an_image"}
