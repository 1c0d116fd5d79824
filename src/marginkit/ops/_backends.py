"""Which N×C kernels (chunked torch or Triton) an op call runs on.

Both backends expose ``row_logsumexp_excluding_target`` and ``write_row_softmax`` with the same
signatures (:mod:`marginkit.ops._cpu`, :mod:`marginkit.ops._triton`). ``impl``:

* ``None``: chunked torch on the CPU; Triton on CUDA when :mod:`triton` is installed (else
  chunked torch, which runs on any device);
* ``"torch"``: chunked torch on every device;
* ``"triton"``: the Triton kernels. On CPU tensors only under Triton's interpreter
  (``TRITON_INTERPRET=1`` set before :mod:`triton` is first imported in the process:
  Lightning and ``torch._dynamo`` import it too), which is
  how they are tested without a GPU.

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


def kernels_for(device_type: str, impl: str | None) -> ModuleType:
    """Return the kernel module for tensors on ``device_type`` and the requested ``impl``."""
    if impl == "torch":
        return _cpu
    if device_type == "cpu":
        if impl is None:
            return _cpu
        if os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError(
                "`impl='triton'` got CPU tensors: the Triton kernels run on the CPU only in "
                "Triton's interpreter; set TRITON_INTERPRET=1 in the environment before "
                "triton is first imported, use CUDA tensors, or pass "
                "impl=None / impl='torch'"
            )
        kernels = _import_triton_kernels()
        if not kernels.interpreter_enabled():
            raise RuntimeError(
                "`impl='triton'` got CPU tensors and TRITON_INTERPRET=1 is set, but "
                "triton (or marginkit.ops._triton) was imported before it was set, so the "
                "kernels were built for a GPU; set TRITON_INTERPRET=1 before triton is first "
                "imported (Lightning and torch._dynamo import it)"
            )
        return kernels
    if impl == "triton":
        return _import_triton_kernels()
    return _import_triton_kernels() if _triton_installed() else _cpu
