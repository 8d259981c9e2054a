"""The accelerators of this machine: found through NVML, or declared in configuration.

Discovery never fails the server: without the NVIDIA driver, without ``nvidia-ml-py`` or
without a GPU, NVML finds nothing and the declared inventory (possibly empty) is used.
This module only lists devices; who holds them is ``placement.py``'s business.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from aiscale.gpus.config import GpuPoolConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GpuDevice:
    """One accelerator; ``device_id`` is what ``CUDA_VISIBLE_DEVICES`` takes for it."""

    device_id: str
    kind: str
    memory_mb: int
    #: ``nvml`` or ``declared``.
    source: str = "declared"


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def discover_nvml() -> list[GpuDevice]:
    """The GPUs NVML sees, by index; empty when NVML or its driver is absent.

    The device id is the NVML index, which is also CUDA's order when
    ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` (the replica environment sets it with the ids).
    """
    try:
        import pynvml
    except ImportError:
        logger.info("nvidia-ml-py is not installed; no GPUs discovered")
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        logger.info("NVML is not available (%s); no GPUs discovered", exc)
        return []
    devices: list[GpuDevice] = []
    try:
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            devices.append(
                GpuDevice(
                    device_id=str(index),
                    kind=_text(pynvml.nvmlDeviceGetName(handle)),
                    memory_mb=int(memory.total) // (1024 * 1024),
                    source="nvml",
                )
            )
    except pynvml.NVMLError as exc:
        logger.warning("NVML failed while listing GPUs (%s); using the %d found", exc, len(devices))
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass
    return devices


def declared_inventory(config: GpuPoolConfig) -> list[GpuDevice]:
    return [GpuDevice(i, kind, memory_mb) for i, kind, memory_mb in config.declared_devices()]


def build_inventory(config: GpuPoolConfig) -> list[GpuDevice]:
    """The devices the pool hands out, chosen by ``config.discovery`` (see ``GpuPoolConfig``).

    Logs which inventory it chose and why, once, when the server starts.
    """
    declared = declared_inventory(config)
    if config.discovery == "declared":
        logger.info("GPU pool: %d declared devices (discovery: declared)", len(declared))
        return declared
    found = discover_nvml()
    if found:
        unused = f"; the {len(declared)} declared are not used" if declared else ""
        logger.info("GPU pool: %d devices found by NVML%s", len(found), unused)
        return found
    if config.discovery == "nvml":
        if declared:
            logger.warning(
                "NVML found no GPUs and discovery is 'nvml': the %d declared devices are not "
                "used and the GPU pool is empty",
                len(declared),
            )
        return []
    if declared:
        logger.info("GPU pool: NVML found none; using the %d declared devices", len(declared))
    return declared
