"""Which kernels each device's registration of the ``torch.library`` ops runs.

Every op registers one kernel per device type and torch's dispatcher picks it:

* the default kernel (CPU and any device without its own) calls :func:`default_backend`: the
  chunked-torch kernels of :mod:`marginkit.ops._cpu` / :mod:`marginkit.ops._linear_cpu` (plain
  torch ops, so they run anywhere);
* the CUDA kernel calls :func:`cuda_backend`: the Triton kernels of
  :mod:`marginkit.ops._triton` / :mod:`marginkit.ops._linear_triton` when :mod:`triton` is
  installed, else chunked torch.

A :class:`Backend` holds one module of each family; the modules of a family implement the same
interface (:mod:`marginkit.ops._kernels`). The ops' ``impl`` argument is a test hook that
overrides the choice: ``"torch"`` forces the chunked-torch kernels on every device; ``"triton"``
forces the Triton kernels, which on CPU tensors run only in Triton's interpreter
(``TRITON_INTERPRET=1`` set before :mod:`triton` is first imported in the process: Lightning
and ``torch._dynamo`` import it too).

:mod:`triton` stays optional: it is imported on first use, never by ``import marginkit``.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Callable
from typing import NamedTuple

import torch

from marginkit.ops import _cpu, _linear_cpu
from marginkit.ops._kernels import CosineKernels, LinearKernels


class Backend(NamedTuple):
    """The kernels of one registration: the N×C cosine passes and the normalised-linear ones."""

    cosine: CosineKernels
    linear: LinearKernels


TORCH = Backend(_cpu, _linear_cpu)


@functools.cache
def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def _triton_backend() -> Backend:
    if not _triton_installed():
        raise RuntimeError(
            "`impl='triton'` needs the optional `triton` package: pip install 'marginkit[triton]'"
        )
    from marginkit.ops import _linear_triton, _triton

    return Backend(_triton, _linear_triton)


def default_backend(device_type: str, impl: str | None) -> Backend:
    """Kernels of the default (non-CUDA) registration: chunked torch, or Triton's interpreter.

    ``impl="triton"`` on CPU tensors needs Triton's interpreter (a ``ValueError`` says how to
    enable it otherwise); on other non-CUDA devices it is passed to Triton as is.

    Example:
        >>> default_backend("cpu", None) is TORCH
        True
    """
    if impl != "triton":
        return TORCH
    if device_type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(
            "`impl='triton'` got CPU tensors: the Triton kernels run on the CPU only in "
            "Triton's interpreter; set TRITON_INTERPRET=1 in the environment before "
            "triton is first imported, use CUDA tensors, or pass "
            "impl=None / impl='torch'"
        )
    backend = _triton_backend()
    if device_type == "cpu" and not backend.cosine.interpreter_enabled():
        raise RuntimeError(
            "`impl='triton'` got CPU tensors and TRITON_INTERPRET=1 is set, but "
            "triton (or marginkit.ops._triton) was imported before it was set, so the "
            "kernels were built for a GPU; set TRITON_INTERPRET=1 before triton is first "
            "imported (Lightning and torch._dynamo import it)"
        )
    return backend


def cuda_backend(_device_type: str, impl: str | None) -> Backend:
    """Kernels of the CUDA registration: Triton when installed (or asked for), else chunked torch.

    Takes the device type like :func:`default_backend`, so both fit one kernel factory.
    """
    if impl == "torch":
        return TORCH
    if impl == "triton" or _triton_installed():
        return _triton_backend()
    return TORCH


BackendPicker = Callable[[str, str | None], Backend]


def custom_op_per_device(
    name: str, kernel_for: Callable[[BackendPicker], Callable]
) -> torch.library.CustomOpDef:
    """``torch.library.custom_op(name)`` with a default and a CUDA kernel, the one pattern of every op.

    ``kernel_for(pick_backend)`` builds the op's kernel around a backend picker: the default
    kernel (CPU and any device without its own) gets :func:`default_backend`, the CUDA kernel
    :func:`cuda_backend`; the dispatcher chooses by the inputs' device.
    """
    op = torch.library.custom_op(name, kernel_for(default_backend), mutates_args=())
    op.register_kernel("cuda")(kernel_for(cuda_backend))
    return op
