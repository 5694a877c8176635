"""Safe image intake: real photos mixed with every kind of bad file; storage; the CLI."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from PIL import Image

from common.core.errors import ImageRejected
from common.core.settings import ImageSettings
from common.devkit import samples
from common.media.images import dhash, hamming, load_image

LIMITS = ImageSettings(max_bytes=2_000_000, max_pixels=4_000_000, min_side=32)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with a tiny (bogus) data stream."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _photo(seed: int = 1) -> Image.Image:
    return samples.person(seed, (120, 160))


def _enc(im: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def good_files() -> dict[str, bytes]:
    """Valid images in every mode the loader must normalise."""
    base = _photo(1)
    rgba = base.convert("RGBA")
    rgba.putalpha(128)
    pal = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    pal.info["transparency"] = 0
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    i16 = Image.new("I;16", (100, 80))
    i16.putdata([(x * 600) % 65535 for x in range(100 * 80)])
    return {
        "photo.jpg": _enc(base, "JPEG", quality=90),
        "photo2.png": _enc(_photo(2), "PNG"),
        "rgba.png": _enc(rgba, "PNG"),
        "palette_transparent.png": _enc(pal, "PNG", transparency=0),
        "cmyk.jpg": _enc(_photo(3).convert("CMYK"), "JPEG"),
        "grey.png": _enc(_photo(4).convert("L"), "PNG"),
        "grey_alpha.png": _enc(_photo(5).convert("LA"), "PNG"),
        "sixteen_bit.png": _enc(i16, "PNG"),
        "rotated.jpg": _enc(_photo(6), "JPEG", exif=exif.tobytes()),
        "photo.webp": _enc(_photo(7), "WEBP"),
        "photo.bmp": _enc(_photo(8), "BMP"),
        "photo.tiff": _enc(_photo(9), "TIFF"),
        "png_named.jpg": _enc(_photo(10), "PNG"),  # content decides, not the name
    }


def bad_files() -> dict[str, tuple[bytes, str]]:
    """Bad files with the start of the reason each must get."""
    jpeg = _enc(_photo(20), "JPEG", quality=90)
    png = _enc(_photo(21), "PNG")
    frames = [_photo(22 + i) for i in range(3)]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    corrupt_png = bytearray(png)
    corrupt_png[len(png) // 2: len(png) // 2 + 64] = b"\xff" * 64
    return {
        "empty.jpg": (b"", "empty file"),
        "notes.txt": (b"this is not an image\n" * 20, "not an image"),
        "page.jpg": (b"<!doctype html><html><body>404</body></html>", "not an image"),
        "vector.svg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="100" height="100"/>', "not an image"),
        "doc.pdf": (b"%PDF-1.4\n" + random.Random(1).randbytes(512), "not an image"),
        # seeded: a rare random buffer does parse as a header of some format (PCX, TGA, ...)
        "random.bin": (random.Random(1234).randbytes(4096), "not an image"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "truncated or corrupt"),
        "truncated.png": (png[: len(png) // 2], "truncated or corrupt"),
        "corrupt.png": (bytes(corrupt_png), "truncated or corrupt"),
        "bomb.png": (_png_header_only(50_000, 50_000), "decompression bomb"),
        "tiny.png": (_enc(_photo(23).resize((16, 16)), "PNG"), "too small"),
        "animated.gif": (gif.getvalue(), "animated image (3 frames)"),
        "icon.ico": (_enc(_photo(24).resize((64, 64)), "ICO"), "format ICO not allowed"),
        "huge.bmp": (b"BM" + b"\0" * (LIMITS.max_bytes + 10), "too large"),
    }


def test_every_good_mode_normalises_to_rgb() -> None:
    for name, data in good_files().items():
        loaded = load_image(data, LIMITS)
        assert loaded.image.mode == "RGB", name
        assert loaded.sha256 == hashlib.sha256(data).hexdigest()
        assert len(loaded.phash) == 16
    rotated = load_image(good_files()["rotated.jpg"], LIMITS)
    assert (rotated.width, rotated.height) == (160, 120), "EXIF orientation not applied"
    rgba = load_image(good_files()["rgba.png"], LIMITS).image
    # half-transparent pixels composited on white are lighter than the original
    assert sum(rgba.getpixel((0, 0))) > sum(_photo(1).getpixel((0, 0)))


def test_every_bad_file_gets_its_reason() -> None:
    for name, (data, reason) in bad_files().items():
        with pytest.raises(ImageRejected) as info:
            load_image(data, LIMITS)
        assert info.value.reason.startswith(reason), f"{name}: {info.value.reason!r}"


def test_animated_first_frame_when_configured() -> None:
    data = bad_files()["animated.gif"][0]
    loaded = load_image(data, ImageSettings(animated="first_frame", min_side=32))
    assert loaded.frames == 3 and loaded.image.mode == "RGB"


def test_perceptual_hash_sees_reencoding_as_near() -> None:
    a = _photo(30)
    b = Image.open(io.BytesIO(_enc(a.resize((96, 128)), "JPEG", quality=60)))
    c = _photo(31)
    assert hamming(dhash(a), dhash(b)) <= 6
    assert hamming(dhash(a), dhash(c)) > 6


def test_ingest_accounts_for_every_file(tmp_path: Path, isolated_settings: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from common.core.settings import get_settings, reset_settings
    from common.dataset.ingest import ingest
    from common.store.db import get_database
    from common.store.rows import Asset
    from common.store.storage import get_storage

    monkeypatch.setenv("SYNTHPIPE_IMAGES__MAX_BYTES", str(LIMITS.max_bytes))
    monkeypatch.setenv("SYNTHPIPE_IMAGES__MIN_SIDE", "32")
    monkeypatch.setenv("SYNTHPIPE_IMAGES__MAX_PIXELS", str(LIMITS.max_pixels))
    reset_settings()
    folder = tmp_path / "in"
    (folder / "nested" / "deeper").mkdir(parents=True)
    good, bad = good_files(), bad_files()
    for name, data in good.items():
        (folder / name).write_bytes(data)
    for name, (data, _) in bad.items():
        (folder / "nested" / name).write_bytes(data)
    (folder / "nested" / "deeper" / "copy.jpg").write_bytes(good["photo.jpg"])
    (folder / "loop").symlink_to(folder, target_is_directory=True)  # must not recurse forever

    settings = get_settings()
    db, storage = get_database(), get_storage()
    report = ingest(folder, "person", db=db, storage=storage, settings=settings)
    assert report.registered == len(good)
    assert report.duplicates == 1
    rejected = {Path(r["path"]).name: r["reason"] for r in report.rejected}
    assert set(rejected) == set(bad) | {"loop"}
    for name, (_, reason) in bad.items():
        assert rejected[name].startswith(reason), (name, rejected[name])
    assert report.registered + report.duplicates + len(report.rejected) == len(good) + len(bad) + 2

    with db.session() as s:
        assets = s.query(Asset).all()
    assert len(assets) == len(good)
    for asset in assets:
        data = storage.get(asset.uri)
        assert hashlib.sha256(data).hexdigest() == asset.sha256
        assert asset.uri.endswith(f"{asset.sha256}.{asset.uri.rsplit('.', 1)[1]}")
        assert asset.role == "person" and asset.source_path
    originals = {hashlib.sha256(d).hexdigest() for d in good.values()}
    assert {a.sha256 for a in assets} == originals  # stored bytes are the originals

    again = ingest(folder, "person", db=db, storage=storage, settings=settings)
    assert again.registered == 0 and again.duplicates == len(good) + 1


def test_storage_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from common.store.storage import Storage, sha256_hex

    store = Storage((tmp_path / "objects").as_uri())
    data = b"x" * 10_000
    path = store.path_for(sha256_hex(data), "bin")

    def crash(_fd: int) -> None:
        raise OSError("power cut")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(Exception, match="power cut"):
        store.put(data, "bin")
    assert not os.path.exists(path)
    assert not any(p.name.startswith(".tmp-") for p in (tmp_path / "objects").rglob("*"))
    monkeypatch.undo()
    obj = store.put(data, "bin")
    assert obj.created and Path(path).read_bytes() == data
    assert not store.put(data, "bin").created


def test_storage_works_on_any_fsspec_url() -> None:
    from common.store.storage import Storage

    store = Storage("memory://synthpipe-test/objects")
    obj = store.put(b"hello", "txt")
    assert obj.uri.startswith("memory://")
    assert store.get(obj.uri) == b"hello"


def _cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "common.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd, timeout=120)


def test_cli_ingest_json_status_and_usage_errors(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        (folder / f"p{i}.jpg").write_bytes(_enc(_photo(40 + i), "JPEG"))
    (folder / "bad.jpg").write_bytes(b"not a photo")
    first = _cli("ingest", str(folder), "--role", "garment", "--json")
    assert first.returncode == 0, first.stderr
    out = json.loads(first.stdout)
    assert out["registered"] == 3 and out["duplicates"] == 0
    assert out["rejected"] == [{"path": str(folder / "bad.jpg"), "reason": "not an image (unrecognised format)"}]
    second = json.loads(_cli("ingest", str(folder), "--role", "garment", "--json").stdout)
    assert second["registered"] == 0 and second["duplicates"] == 3
    status = json.loads(_cli("status", "--json").stdout)
    assert status["assets"] == {"person": 0, "garment": 3, "character": 0}
    assert status["jobs"]["vl"]["queued"] == 0

    missing = _cli("ingest", str(tmp_path / "nope"), "--role", "person")
    assert missing.returncode != 0 and "no such file or folder" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    bad_role = _cli("ingest", str(folder), "--role", "hat")
    assert bad_role.returncode == 2 and "invalid choice" in bad_role.stderr
    assert bad_role.stderr.strip().splitlines() == [bad_role.stderr.strip()]
    assert "synthpipe ingest --help" in bad_role.stderr
    bad_cfg = _cli("status", env={"SYNTHPIPE_JOBS__MAX_ATTEMPTS": "0", "SYNTHPIPE_EDIT__STEPS": "0"})
    assert bad_cfg.returncode == 2 and "jobs.max_attempts (SYNTHPIPE_JOBS__MAX_ATTEMPTS)" in bad_cfg.stderr
    assert "edit.steps (SYNTHPIPE_EDIT__STEPS)" in bad_cfg.stderr
    assert len(bad_cfg.stderr.strip().splitlines()) == 1


def test_help_is_fast_and_imports_no_heavy_library() -> None:
    code = ("import sys, contextlib, io\nfrom common import cli\n"
            "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
            "    cli.main(['--help'])\n"
            "heavy = [m for m in ('torch', 'transformers', 'diffusers', 'selenium') if m in sys.modules]\n"
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_settings_from_toml_and_unknown_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from common.core.errors import ConfigError
    from common.core.settings import load_settings

    cfg = tmp_path / "synthpipe.toml"
    cfg.write_text('vl_model = "/models/vl"\n[edit]\nsteps = 7\n')
    monkeypatch.setenv("SYNTHPIPE_CONFIG", str(cfg))
    monkeypatch.setenv("SYNTHPIPE_EDIT__GUIDANCE_SCALE", "3.5")
    s = load_settings()
    assert s.vl_model == "/models/vl" and s.edit.steps == 7 and s.edit.guidance_scale == 3.5
    assert s.database_url and s.database_url.startswith("sqlite:///")
    assert not s.distributed
    cfg.write_text("[edit]\nstepz = 7\n")
    with pytest.raises(ConfigError, match=r"synthpipe\.toml: \[edit\] stepz: unknown setting \(did you mean \[edit\] steps\?\)"):
        load_settings()
    cfg.write_text("")
    # names are checked against the registries at start-up, not by the first job that uses them
    for var, value, message in [
        ("SYNTHPIPE_EDIT__SCHEDULER", "bogus", r"edit\.scheduler \(SYNTHPIPE_EDIT__SCHEDULER\): unknown .*euler_ancestral"),
        ("SYNTHPIPE_EDIT__BACKEND_TRYON", "bogus", r"edit\.backend_tryon .*allowed: flux-kontext, instruct-pix2pix"),
        ("SYNTHPIPE_VL__BACKEND", "llava", r"vl\.backend .*allowed: openai, qwen"),
        ("SYNTHPIPE_VL__DEVICE", "gpu", r"vl\.device .*cuda:N"),
        ("SYNTHPIPE_EDIT__DEVICE", "cuda:x", r"edit\.device"),
        ("SYNTHPIPE_VL__PROMPT_VERSION", "v9", r"vl\.prompt_version .*have: v1"),
        ("SYNTHPIPE_DATABSE_URL", "postgresql://x", r"SYNTHPIPE_DATABSE_URL: unknown setting"),
    ]:
        with monkeypatch.context() as m:
            m.setenv(var, value)
            with pytest.raises(ConfigError, match=message) as info:
                load_settings()
            assert "\n" not in str(info.value)
    with monkeypatch.context() as m:
        m.setenv("SYNTHPIPE_EDIT__SCHEDULER", "pndm")
        m.setenv("SYNTHPIPE_EDIT__STEPS", "3")
        with pytest.raises(ConfigError, match=r"edit\.steps .*at least 4 with edit\.scheduler pndm"):
            load_settings()
    monkeypatch.setenv("SYNTHPIPE_EDIT__DEVICE", "cuda:1")
    monkeypatch.setenv("SYNTHPIPE_TEST_ANYTHING", "1")  # test and benchmark hooks are not settings
    assert load_settings().edit.device == "cuda:1"
