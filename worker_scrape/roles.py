"""An image's role from the image as well as its URL.

The site file's role rules win when one matches the image's URL (or its page's). Otherwise, with
the site's ``roles_from_image`` on (the default), the downloaded photo is looked at: dlib's HOG
face detector (the one the score stage ships, without its model files) finding a face of at least
``MIN_FACE_FRACTION`` of the photo's shorter side makes it a ``person`` photo; none makes it the
site's ``default_role``, or a ``garment`` (a product shot) when the site names none. With
``roles_from_image: false`` the site's ``default_role`` applies to every unmatched image (none:
the image is skipped, never downloaded). The decision and what it saw are stored on the asset
(``role_evidence``).

Known limit: a model photo cropped below the face (common on shop pages) has no face to find and
is taken for a product shot; a site rule for such galleries wins.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from common.core.errors import ImageRejected
from common.core.settings import ImageSettings
from common.media.faces import FaceModels
from common.media.images import load_image
from worker_scrape.sites import Site

MIN_FACE_FRACTION = 0.06  # of the shorter side: a face in a printed T-shirt motif or a tiny thumbnail is not a model
DETECT_SIDE = 800  # photos are looked at at most this large


@dataclass(frozen=True)
class RoleDecision:
    role: str | None
    evidence: dict[str, Any] = field(default_factory=dict)


def rule_role(site: Site, image_url: str, page_url: str) -> RoleDecision | None:
    """The first site rule matching the image URL, else the page URL; None when none matches."""
    found = site.matching_rule(image_url, page_url)
    if found is None:
        return None
    rule, where = found
    return RoleDecision(rule.role, {"by": "site_rule", "match": rule.match, "on": where})


class RoleDetector:
    """Looks for people in downloaded photos (thread-safe: one detector, used under a lock)."""

    def __init__(self, limits: ImageSettings) -> None:
        self.limits = limits
        self._models: FaceModels | None = None
        self._lock = threading.Lock()

    def _loaded(self) -> FaceModels:
        if self._models is None:
            models = FaceModels(upsample=0, max_side=DETECT_SIDE, descriptors=False)
            models.load()  # no dlib: a settings error naming the extra to install
            self._models = models
        return self._models

    def by_image(self, site: Site, data: bytes) -> RoleDecision:
        """The role of a photo no site rule matched (:func:`rule_role`): the detector's when the site
        allows it, else the site's default role."""
        if not site.roles_from_image:
            return RoleDecision(site.default_role, {"by": "default"})
        try:
            image = load_image(data, self.limits).image
        except ImageRejected:  # registration refuses it with the loader's code
            return RoleDecision(site.default_role or "garment", {"by": "default", "detector": "unreadable"})
        with self._lock:
            faces = self._loaded().faces(image, describe_largest=False)
        short = min(image.size)
        big = [f for f in faces if min(f.right - f.left, f.bottom - f.top) >= MIN_FACE_FRACTION * short]
        evidence: dict[str, Any] = {
            "by": "detector", "detector": "dlib-hog-face", "faces": len(big), "small_faces": len(faces) - len(big),
            "boxes": [[f.left, f.top, f.right, f.bottom] for f in big[:4]], "size": list(image.size),
        }
        return RoleDecision("person" if big else (site.default_role or "garment"), evidence)
