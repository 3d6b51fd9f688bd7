"""Lightning's NVML-based CUDA check, dropped where NVML cannot be loaded (a CPU-only host): one failed ``dlopen``
per optimizer step saved, every answer unchanged.

``import lightning`` sets ``PYTORCH_NVML_BASED_CUDA_CHECK=1`` (``lightning/fabric/__init__.py``) so that asking
whether CUDA is available does not initialize CUDA before a fork. With it, ``torch.cuda.is_available()`` asks NVML
first: ``CDLL("libnvidia-ml.so.1")`` on every call, uncached until CUDA is initialized. torch's Adam and AdamW call
it at every ``step()`` (``Optimizer._accelerator_graph_capture_health_check``). Where the library is missing, the
load fails each time (~40 us on a 2-core AMD EPYC, about 1% of an MNIST-1D CNN step) and torch falls back to
``torch._C._cuda_getDeviceCount()``: exactly what it calls without the variable. So, where NVML cannot be loaded,
removing the variable changes no answer and no fork safety, only the cost.
"""

from __future__ import annotations

import ctypes
import functools
import os

import torch

__all__ = ["NVML_CHECK_VAR", "drop_futile_nvml_check", "nvml_loadable"]

#: the variable Lightning sets at import
NVML_CHECK_VAR = "PYTORCH_NVML_BASED_CUDA_CHECK"


@functools.cache
def nvml_loadable() -> bool:
    """Whether ``libnvidia-ml.so.1`` loads in this process (what torch's NVML-based check tries at every call)."""
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return False
    return True


def drop_futile_nvml_check() -> bool:
    """Remove ``PYTORCH_NVML_BASED_CUDA_CHECK`` from the environment where it only adds a failed library load to each
    CUDA availability check: a CUDA build of torch (not ROCm) on a host whose NVML library cannot be loaded. Returns
    whether it was removed. Processes started afterwards import Lightning, which sets it again."""
    if os.environ.get(NVML_CHECK_VAR) != "1" or not torch.backends.cuda.is_built() or torch.version.hip:
        return False
    if nvml_loadable():
        return False
    del os.environ[NVML_CHECK_VAR]
    return True
