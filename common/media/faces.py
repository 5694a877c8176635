"""dlib's HOG face detector, 5-point landmarks and ResNet face descriptor, shared by the identity
and garment scorers and by the crawler, which tells a model photo from a product shot with the
detector alone (no model files).

The weights come from the ``face-recognition-models`` package. It is located without being
imported: its ``__init__`` needs ``pkg_resources``, which newer setuptools no longer ships. Only
the 5-point landmark model is used; the 68-point one was trained on iBUG 300-W, whose licence
forbids commercial use.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from common.core.errors import ConfigError
from common.media.images import to_rgb

FIVE_POINT = "shape_predictor_5_face_landmarks.dat"
DESCRIPTOR = "dlib_face_recognition_resnet_model_v1.dat"
INSTALL_HINT = "pip install 'synthpipe[score]' (dlib-bin, face-recognition-models; the crawler's role detector needs only dlib-bin, in 'synthpipe[scrape]')"


def model_file(name: str) -> Path:
    """Path of one of dlib's model files in the ``face-recognition-models`` package."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"the face models are not installed: {INSTALL_HINT}", code="score.face_models_missing")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / name
    if not path.is_file():
        raise ConfigError(f"face model file {path} is missing: reinstall face-recognition-models",
                          code="score.face_models_missing")
    return path


@dataclass(frozen=True)
class Face:
    """A detected face in the coordinates of the photo it was found in."""

    left: int
    top: int
    right: int
    bottom: int
    descriptor: np.ndarray | None = None

    @property
    def area(self) -> int:
        return max(0, self.right - self.left) * max(0, self.bottom - self.top)


class FaceModels:
    """Detector, landmarks and descriptor, loaded once."""

    def __init__(self, upsample: int = 1, max_side: int = 1024, descriptors: bool = True) -> None:
        self.upsample = int(upsample)
        self.max_side = int(max_side)
        self.descriptors = descriptors
        self._detector: Any = None

    def load(self) -> None:
        try:
            import dlib
        except ImportError:
            raise ConfigError(f"dlib is not installed: {INSTALL_HINT}", code="score.face_models_missing") from None
        self._detector = dlib.get_frontal_face_detector()
        if self.descriptors:
            self._shape = dlib.shape_predictor(str(model_file(FIVE_POINT)))
            self._encoder = dlib.face_recognition_model_v1(str(model_file(DESCRIPTOR)))

    def unload(self) -> None:
        self._detector = None

    def faces(self, im: Image.Image, *, describe_largest: bool = True) -> list[Face]:
        """Faces in ``im``, largest first; the largest one with its 128-d descriptor."""
        im = to_rgb(im)
        scale = min(1.0, self.max_side / max(im.size))
        if scale < 1.0:
            im = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.BILINEAR)
        arr = np.ascontiguousarray(np.asarray(im, dtype=np.uint8))
        rects = sorted(self._detector(arr, self.upsample), key=lambda r: r.width() * r.height(), reverse=True)
        faces = []
        for k, r in enumerate(rects):
            descriptor = None
            if k == 0 and describe_largest and self.descriptors:
                shape = self._shape(arr, r)
                descriptor = np.asarray(self._encoder.compute_face_descriptor(arr, shape), dtype=np.float64)
            faces.append(Face(round(r.left() / scale), round(r.top() / scale), round(r.right() / scale),
                              round(r.bottom() / scale), descriptor))
        return faces
