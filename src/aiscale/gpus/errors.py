"""Refusals of the GPU pool. Both are ``Conflict`` (409): the request conflicts with what the
pool holds now. Their own type names reach the JSON error body, so a client tells them apart;
the status comes from ``serving/errors.py``'s one table through the parent class."""

from __future__ import annotations

from aiscale.errors import Conflict


class GpuQuotaExceeded(Conflict):
    """The team would hold more GPUs or GPU memory than its quota (``field`` is ``team``)."""


class GpuCapacityUnavailable(Conflict):
    """No free device fits the request now, or none ever could (``field`` is ``gpus``)."""
