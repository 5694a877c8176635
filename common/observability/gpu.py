"""GPU memory and utilisation for a worker's ``/metrics``, read through NVML at scrape time."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

from common.observability.specs import SPEC_BY_NAME

log = logging.getLogger(__name__)


class GpuCollector:
    """Memory and utilisation of the cards this process may use (``CUDA_VISIBLE_DEVICES``), read
    through NVML at scrape time. No card, no driver or no ``nvidia-ml-py``: no samples, no error."""

    def __init__(self) -> None:
        self._nvml: Any = None
        self._failed = False

    def _init(self) -> Any:
        if self._nvml is None and not self._failed:
            try:
                import pynvml

                pynvml.nvmlInit()
                self._nvml = pynvml
            except Exception as exc:  # no library, no driver, no card
                log.info("no GPU metrics: %s", exc)
                self._failed = True
        return self._nvml

    def cards(self) -> list[dict[str, Any]]:
        """One dict per visible card: gpu (index), uuid, name, used, total (bytes), utilization (0-1)."""
        nvml = self._init()
        if nvml is None:
            return []
        out = []
        for index in _visible(nvml):
            try:
                h = nvml.nvmlDeviceGetHandleByIndex(index)
                mem = nvml.nvmlDeviceGetMemoryInfo(h)
                util = nvml.nvmlDeviceGetUtilizationRates(h)
                uuid, name = nvml.nvmlDeviceGetUUID(h), nvml.nvmlDeviceGetName(h)
            except Exception as exc:
                log.warning("GPU %s: %s", index, exc)
                continue
            out.append({"gpu": str(index), "uuid": _text(uuid), "name": _text(name), "used": float(mem.used),
                        "total": float(mem.total), "utilization": util.gpu / 100.0})
        return out

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        cards = self.cards()
        if not cards:
            return
        for name, key in (("synthpipe_gpu_memory_used_bytes", "used"), ("synthpipe_gpu_memory_total_bytes", "total"),
                          ("synthpipe_gpu_utilization_ratio", "utilization")):
            spec = SPEC_BY_NAME[name]
            fam = GaugeMetricFamily(name, spec.help, labels=spec.labels)
            for c in cards:
                fam.add_metric([c["gpu"], c["uuid"], c["name"]], c[key])
            yield fam


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _visible(nvml: Any) -> list[int]:
    """NVML indices of the cards ``CUDA_VISIBLE_DEVICES`` leaves this process (all when unset)."""
    count = int(nvml.nvmlDeviceGetCount())
    spec = os.environ.get("CUDA_VISIBLE_DEVICES")
    if spec is None:
        return list(range(count))
    picked: list[int] = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        if part.isdigit() and int(part) < count:
            picked.append(int(part))
        elif part.startswith(("GPU-", "MIG-")):
            for i in range(count):
                if _text(nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByIndex(i))).startswith(part):
                    picked.append(i)
        else:  # CUDA stops at the first entry it cannot parse
            break
    return picked
