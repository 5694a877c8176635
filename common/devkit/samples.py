"""Sample photos drawn in code, for the offline demo and the tests.

Each picture is a simple, deterministic drawing (a figure on a backdrop, a garment on a plain
ground) with photo-like texture, so the whole pipeline can run with no downloaded data.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

PALETTE = [
    (200, 40, 40), (40, 90, 200), (30, 150, 80), (230, 180, 40), (120, 60, 160),
    (240, 240, 235), (30, 30, 35), (200, 120, 60), (90, 160, 200), (220, 110, 160),
]


def _backdrop(rng: random.Random, size: tuple[int, int]) -> Image.Image:
    w, h = size
    top = tuple(rng.randint(120, 240) for _ in range(3))
    bottom = tuple(rng.randint(40, 160) for _ in range(3))
    im = Image.new("RGB", size)
    draw = ImageDraw.Draw(im)
    for y in range(h):
        t = y / max(1, h - 1)
        draw.line([(0, y), (w, y)], fill=tuple(int(a + (b - a) * t) for a, b in zip(top, bottom, strict=True)))
    return im


def _grain(im: Image.Image, rng: random.Random) -> Image.Image:
    """Sensor-like grain from the seeded generator (Pillow's own noise is not reproducible)."""
    noise = Image.frombytes("L", im.size, rng.randbytes(im.size[0] * im.size[1])).convert("RGB")
    return Image.blend(im, noise, 0.06).filter(ImageFilter.GaussianBlur(0.6))


def person(seed: int, size: tuple[int, int] = (192, 256)) -> Image.Image:
    """A standing figure wearing a top and trousers, on a gradient backdrop."""
    rng = random.Random(seed)
    im = _backdrop(rng, size)
    d = ImageDraw.Draw(im)
    w, h = size
    cx = w // 2 + rng.randint(-w // 10, w // 10)
    skin = rng.choice([(240, 200, 170), (200, 150, 110), (150, 100, 70), (100, 70, 50)])
    top, legs = rng.sample(PALETTE, 2)
    head_r = h // 12
    d.ellipse([cx - head_r, h // 10, cx + head_r, h // 10 + 2 * head_r], fill=skin)
    torso_top = h // 10 + 2 * head_r + 4
    d.rectangle([cx - w // 6, torso_top, cx + w // 6, torso_top + h // 3], fill=top)
    d.rectangle([cx - w // 4, torso_top, cx - w // 6, torso_top + h // 4], fill=top)
    d.rectangle([cx + w // 6, torso_top, cx + w // 4, torso_top + h // 4], fill=top)
    hip = torso_top + h // 3
    d.rectangle([cx - w // 6, hip, cx - 4, h - h // 12], fill=legs)
    d.rectangle([cx + 4, hip, cx + w // 6, h - h // 12], fill=legs)
    return _grain(im, rng)


def garment(seed: int, size: tuple[int, int] = (192, 192)) -> Image.Image:
    """A flat-lay t-shirt or dress with a simple pattern on a light ground."""
    rng = random.Random(seed)
    w, h = size
    im = Image.new("RGB", size, tuple(rng.randint(225, 250) for _ in range(3)))
    d = ImageDraw.Draw(im)
    colour = rng.choice(PALETTE)
    if rng.random() < 0.5:  # t-shirt
        d.polygon([(w * .3, h * .15), (w * .7, h * .15), (w * .95, h * .35), (w * .8, h * .45),
                   (w * .75, h * .4), (w * .75, h * .9), (w * .25, h * .9), (w * .25, h * .4),
                   (w * .2, h * .45), (w * .05, h * .35)], fill=colour)
    else:  # dress
        d.polygon([(w * .38, h * .08), (w * .62, h * .08), (w * .68, h * .4), (w * .85, h * .92),
                   (w * .15, h * .92), (w * .32, h * .4)], fill=colour)
    stripe = rng.choice(PALETTE)
    if rng.random() < 0.5:
        for y in range(int(h * .3), int(h * .9), max(6, h // 16)):
            d.line([(w * .3, y), (w * .7, y)], fill=stripe, width=2)
    return _grain(im, rng)


def character(seed: int, size: tuple[int, int] = (192, 256)) -> Image.Image:
    """A character portrait: a figure with a distinctive hat and scarf."""
    rng = random.Random(10_000 + seed)
    im = person(seed, size)
    d = ImageDraw.Draw(im)
    w, h = size
    hat = rng.choice(PALETTE)
    d.rectangle([w // 2 - w // 8, h // 16, w // 2 + w // 8, h // 9], fill=hat)
    d.rectangle([w // 2 - w // 5, h // 9, w // 2 + w // 5, h // 9 + 4], fill=hat)
    return im


def encode(im: Image.Image, fmt: str = "JPEG", **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}) | kw)
    return buf.getvalue()


def write_samples(folder: Path, *, persons: int = 0, garments: int = 0, characters: int = 0,
                  seed: int = 0) -> dict[str, Path]:
    """Write JPEG samples under ``folder/{person,garment,character}``; returns the folders."""
    out: dict[str, Path] = {}
    for role, n, draw in (("person", persons, person), ("garment", garments, garment),
                          ("character", characters, character)):
        if n <= 0:
            continue
        sub = folder / role
        sub.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (sub / f"{role}-{i:03d}.jpg").write_bytes(encode(draw(seed * 1000 + i)))
        out[role] = sub
    return out
