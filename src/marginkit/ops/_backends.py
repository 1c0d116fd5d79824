"""The N×C kernels each device runs, for the per-device kernels of the ``torch.library`` ops.

The ops register one kernel per device type and torch's dispatcher picks it:

* the default kernel (CPU and any device without its own): the chunked-torch kernels of
  :mod:`marginkit.ops._cpu` (plain torch ops, so they run anywhere);
* the CUDA kernel: the Triton kernels of :mod:`marginkit.ops._triton` when :mod:`triton` is
  installed, else chunked torch.

Both kernel modules expose ``row_statistics_excluding_target`` and ``write_row_softmax`` with the
same signatures. The ops' ``impl`` argument is a test hook that overrides the choice: ``"torch"``
forces the chunked-torch kernels on every device; ``"triton"`` forces the Triton kernels, which
on CPU tensors run only in Triton's interpreter (``TRITON_INTERPRET=1`` set before :mod:`triton`
is first imported in the process: Lightning and ``torch._dynamo`` import it too).

:mod:`triton` stays optional: it is imported on first use, never by ``import marginkit``.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from types import ModuleType

from marginkit.ops import _cpu


@functools.cache
def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def _import_triton_kernels() -> ModuleType:
    if not _triton_installed():
        raise RuntimeError(
            "`impl='triton'` needs the optional `triton` package: pip install 'marginkit[triton]'"
        )
    from marginkit.ops import _triton

    return _triton


def default_kernels(device_type: str, impl: str | None) -> ModuleType:
    """Kernels of the default (non-CUDA) registration: chunked torch, or Triton's interpreter.

    ``impl="triton"`` on CPU tensors needs Triton's interpreter (a ``ValueError`` says how to
    enable it otherwise); on other non-CUDA devices it is passed to Triton as is.
    """
    if impl != "triton":
        return _cpu
    if device_type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(
            "`impl='triton'` got CPU tensors: the Triton kernels run on the CPU only in "
            "Triton's interpreter; set TRITON_INTERPRET=1 in the environment before "
            "triton is first imported, use CUDA tensors, or pass "
            "impl=None / impl='torch'"
        )
    kernels = _import_triton_kernels()
    if device_type == "cpu" and not kernels.interpreter_enabled():
        raise RuntimeError(
            "`impl='triton'` got CPU tensors and TRITON_INTERPRET=1 is set, but "
            "triton (or marginkit.ops._triton) was imported before it was set, so the "
            "kernels were built for a GPU; set TRITON_INTERPRET=1 before triton is first "
            "imported (Lightning and torch._dynamo import it)"
        )
    return kernels


def cuda_kernels(impl: str | None) -> ModuleType:
    """Kernels of the CUDA registration: Triton when installed (or asked for), else chunked torch."""
    if impl == "torch":
        return _cpu
    if impl == "triton" or _triton_installed():
        return _import_triton_kernels()
    return _cpu


def kernels_for(device_type: str, impl: str | None) -> ModuleType:
    """The kernels the op registration of ``device_type`` picks (for ops still dispatching by hand).

    Prefer registering one kernel per device (``torch.library`` ``register_kernel("cuda")``)
    calling :func:`cuda_kernels`, with :func:`default_kernels` as the default kernel.
    """
    return cuda_kernels(impl) if device_type == "cuda" else default_kernels(device_type, impl)
