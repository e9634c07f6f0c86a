"""One timer for every latency this project measures: evaluation, sweeps and the server's profiles.

A GPU runs its kernels after the Python call that queued them returns, so a wall clock read around
a forward on CUDA measures the launches, not the work. :func:`time_ms` waits for the device before
it starts the clock and before it stops it; on the CPU that wait is nothing.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from layerdrop.errors import InputError

__all__ = ["device_of", "median_ms", "synchronize", "time_ms"]


def device_of(on: nn.Module | torch.device | str | None) -> torch.device:
    """The device a model's parameters live on (the first one's), or ``on`` itself; the CPU for ``None``
    or a model without parameters."""
    if isinstance(on, nn.Module):
        first = next(on.parameters(), None)
        return first.device if first is not None else torch.device("cpu")
    return torch.device(on if on is not None else "cpu")


def synchronize(device: torch.device) -> None:
    """Wait until ``device`` has run everything queued on it (CUDA, XPU, MPS); nothing on the CPU."""
    if device.type == "cpu":
        return
    backend = getattr(torch, device.type, None)
    sync = getattr(backend, "synchronize", None)
    if sync is None:
        return
    if device.type == "mps":
        sync()  # torch.mps.synchronize takes no device
    else:
        sync(device)


def time_ms(fn: Callable[[], Any], on: nn.Module | torch.device | str | None = None) -> float:
    """Wall milliseconds of one call of ``fn``, the device of ``on`` synchronised before and after."""
    device = device_of(on)
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return (time.perf_counter() - start) * 1000


def median_ms(fn: Callable[[], Any], on: nn.Module | torch.device | str | None = None, *, reps: int = 10,
              warmup: int = 0) -> float:
    """The median of ``reps`` timed calls of ``fn`` (:func:`time_ms`), after ``warmup`` untimed ones."""
    if reps < 1:
        raise InputError(f"reps must be at least 1, got {reps}")
    for _ in range(warmup):
        fn()
    return statistics.median(time_ms(fn, on) for _ in range(reps))
