"""The one safe image loader every stage uses.

Checks, in order, each refusal with a short reason: not empty; within the byte limit; a format
Pillow recognises and the settings allow; within the pixel limit, checked from the header
before any decoding (decompression bombs); animation handled as configured; decodes fully
(truncated or corrupt files refused); EXIF orientation applied; every mode normalised to 8-bit
RGB (alpha composited on white, palette, CMYK, 16-bit, greyscale); a minimum side.
"""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from common.core.errors import ImageRejected
from common.core.settings import ImageSettings
from common.store.storage import sha256_hex

log = logging.getLogger(__name__)

ImageFile.LOAD_TRUNCATED_IMAGES = False  # never decode half a file silently

# Pillow names some containers differently from the format a user allows.
FORMAT_ALIASES = {"MPO": "JPEG"}  # multi-picture JPEG from cameras: the first picture is the photo
EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tiff"}
ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


@dataclass(frozen=True)
class LoadedImage:
    """A decoded, normalised image and the facts about its original bytes."""

    image: Image.Image  # RGB, 8-bit, orientation applied
    format: str  # canonical format name (JPEG, PNG, …)
    width: int
    height: int
    frames: int
    sha256: str  # of the original bytes
    size_bytes: int
    phash: str  # 64-bit difference hash, 16 hex digits
    colour: str  # 3x3 grid of mean RGB, 54 hex digits

    @property
    def extension(self) -> str:
        return EXTENSIONS.get(self.format, self.format.lower())


def load_image(data: bytes, limits: ImageSettings) -> LoadedImage:
    """Decode ``data`` safely or raise ``ImageRejected`` with the reason."""
    if not data:
        raise ImageRejected("empty file", code="image.empty")
    if len(data) > limits.max_bytes:
        raise ImageRejected(f"too large: {len(data)} bytes (limit {limits.max_bytes})", code="image.too_large")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im: Image.Image = Image.open(io.BytesIO(data))  # reads the header only
        except UnidentifiedImageError:
            raise ImageRejected("not an image (unrecognised format)", code="image.not_an_image") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageRejected(f"decompression bomb: {exc}", code="image.decompression_bomb") from None
        except Exception as exc:  # Pillow raises many types on hostile headers
            raise ImageRejected(f"truncated or corrupt: {_short(exc)}", code="image.corrupt") from None
        fmt = FORMAT_ALIASES.get(im.format or "", im.format or "unknown")
        if fmt not in limits.formats:
            raise ImageRejected(f"format {fmt} not allowed (allowed: {', '.join(limits.formats)})", code="image.format_not_allowed")
        width, height = im.size
        if width <= 0 or height <= 0:
            raise ImageRejected(f"corrupt header: size {width}x{height}", code="image.corrupt")
        if width * height > limits.max_pixels:
            raise ImageRejected(
                f"decompression bomb: {width}x{height} = {width * height} pixels (limit {limits.max_pixels})",
                code="image.decompression_bomb")
        frames = _frame_count(im)
        if frames > 1 and im.format != "MPO":
            if limits.animated == "reject":
                raise ImageRejected(f"animated image ({frames} frames); set images.animated=first_frame to use the first", code="image.animated")
            im.seek(0)
        try:
            im.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageRejected(f"decompression bomb: {exc}", code="image.decompression_bomb") from None
        except Exception as exc:
            raise ImageRejected(f"truncated or corrupt: {_short(exc)}", code="image.corrupt") from None
    im = _apply_orientation(im)
    rgb = to_rgb(im)
    w, h = rgb.size
    if min(w, h) < limits.min_side:
        raise ImageRejected(f"too small: {w}x{h} (minimum side {limits.min_side})", code="image.too_small")
    return LoadedImage(
        image=rgb, format=fmt, width=w, height=h, frames=frames, sha256=sha256_hex(data),
        size_bytes=len(data), phash=dhash(rgb), colour=colour_signature(rgb),
    )


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode → 8-bit RGB; transparency is composited on white."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode == "P" or mode == "PA":
        im = im.convert("RGBA") if ("transparency" in im.info or mode == "PA") else im.convert("RGB")
        mode = im.mode
    if mode in ALPHA_MODES:
        rgba = im.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    if mode.startswith("I;16") or mode == "I":
        # 16-bit greyscale: scale 0..65535 down to 0..255 rather than clip.
        im = im.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    elif mode == "F":
        im = im.convert("L")
    return im.convert("RGB")


def dhash(im: Image.Image, size: int = 8) -> str:
    """64-bit difference hash: robust to resizing and re-encoding, cheap to compare."""
    grey = im.convert("L").resize((size + 1, size), Image.Resampling.LANCZOS)
    px = grey.tobytes()
    bits = 0
    for row in range(size):
        for col in range(size):
            left = px[row * (size + 1) + col]
            right = px[row * (size + 1) + col + 1]
            bits = (bits << 1) | (left > right)
    return f"{bits:016x}"


def colour_signature(im: Image.Image, grid: int = 3) -> str:
    """Mean colour of each cell of a ``grid`` x ``grid`` split, as hex. The difference hash
    sees only luminance gradients, so it calls colour variants of one product (same shot,
    another dye) duplicates; comparing this too keeps them apart."""
    return im.convert("RGB").resize((grid, grid), Image.Resampling.BOX).tobytes().hex()


def colour_distance(a: str, b: str) -> int:
    """Largest per-channel difference between two colour signatures (0–255)."""
    return max(abs(x - y) for x, y in zip(bytes.fromhex(a), bytes.fromhex(b), strict=True))


def hamming(a: str, b: str) -> int:
    return (int(a, 16) ^ int(b, 16)).bit_count()


def _frame_count(im: Image.Image) -> int:
    try:
        return int(getattr(im, "n_frames", 1))
    except Exception as exc:
        raise ImageRejected(f"truncated or corrupt: {_short(exc)}", code="image.corrupt") from None


def _apply_orientation(im: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(im)
    except Exception as exc:  # a broken EXIF block must not lose an otherwise good photo
        log.info("ignoring unreadable EXIF orientation: %s", _short(exc))
        return im


def _short(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]
