"""Chooses the TFLite interpreter: ai-edge-litert first, tflite-runtime second, never TensorFlow.

- ``ai-edge-litert`` (``ai_edge_litert.interpreter``) is Google's maintained runtime: CPython
  3.11-3.13 wheels for x86_64 and aarch64 (64-bit Raspberry Pi OS), XNNPACK for float and int8.
- ``tflite-runtime`` 2.14 (``tflite_runtime.interpreter``) is the last release of the old
  package: CPython 3.11 only, but also armv7l (32-bit Raspberry Pi OS); it needs numpy<2.

``TFSEG_LITE_RUNTIME`` (``auto``, ``litert`` or ``tflite-runtime``) or the ``name`` argument forces
one, so both can be tested on a machine that has both.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass

ENV_VAR = "TFSEG_LITE_RUNTIME"
RUNTIMES = ("litert", "tflite-runtime")
_MODULES = {"litert": "ai_edge_litert.interpreter", "tflite-runtime": "tflite_runtime.interpreter"}
_DISTRIBUTIONS = {"litert": "ai-edge-litert", "tflite-runtime": "tflite-runtime"}
INSTALL = {
    "litert": "pip install ai-edge-litert",
    "tflite-runtime": 'pip install tflite-runtime "numpy<2"',
}


@dataclass(frozen=True)
class Runtime:
    """A TFLite runtime that imported.

    Attributes:
      name: ``litert`` or ``tflite-runtime``.
      version: its distribution's version (``unknown`` if it cannot be told).
      interpreter_class: the ``Interpreter`` class (``model_path=``, ``num_threads=`` keywords).
      op_resolver_type: its ``OpResolverType`` enum (``BUILTIN_REF`` selects the reference kernels).
    """

    name: str
    version: str
    interpreter_class: type
    op_resolver_type: type

    @property
    def label(self) -> str:
        """``ai-edge-litert 2.3.0``-style name for reports."""
        return f"{_DISTRIBUTIONS[self.name]} {self.version}"


def _version(name: str, module) -> str:
    try:
        from importlib import metadata

        return metadata.version(_DISTRIBUTIONS[name])
    except Exception:  # noqa: BLE001 - installed without dist-info (e.g. copied in): fall back
        return str(getattr(module, "__version__", "unknown"))


def _import(name: str) -> Runtime:
    module = importlib.import_module(_MODULES[name])
    return Runtime(name, _version(name, module), module.Interpreter, module.OpResolverType)


def _numpy_hint() -> str:
    try:
        import numpy

        if int(numpy.__version__.split(".")[0]) >= 2:
            return f" (tflite-runtime 2.14 does not work with numpy {numpy.__version__}: install numpy<2)"
    except Exception:  # noqa: BLE001 - only a hint
        pass
    return ""


def load(name: str | None = None) -> Runtime:
    """Imports a TFLite runtime.

    Args:
      name: ``litert``, ``tflite-runtime``, ``auto`` or None. None reads ``TFSEG_LITE_RUNTIME``
        (default ``auto``: ai-edge-litert if importable, else tflite-runtime).

    Returns:
      A Runtime.

    Raises:
      ValueError: an unknown runtime name.
      ImportError: the requested runtime (or, for ``auto``, either one) cannot be imported; the
        message gives the pip command(s) that install it.
    """
    name = (name or os.environ.get(ENV_VAR) or "auto").strip().lower()
    name = {"ai-edge-litert": "litert", "tflite_runtime": "tflite-runtime"}.get(name, name)
    if name not in RUNTIMES + ("auto",):
        raise ValueError(f"unknown TFLite runtime {name!r}: use one of auto, {', '.join(RUNTIMES)}")
    candidates = RUNTIMES if name == "auto" else (name,)
    errors = []
    for candidate in candidates:
        try:
            return _import(candidate)
        except (ImportError, AttributeError) as err:  # tflite-runtime under numpy 2 fails with either
            hint = _numpy_hint() if candidate == "tflite-runtime" else ""
            errors.append(f"{_DISTRIBUTIONS[candidate]}: {err}{hint}")
    if name == "auto":
        message = (
            "no TFLite runtime found. Install one of:\n"
            f"  {INSTALL['litert']}            (recommended: Python 3.11-3.13, 64-bit Raspberry Pi OS)\n"
            f"  {INSTALL['tflite-runtime']}  (Python 3.11 only; also 32-bit Raspberry Pi OS)"
        )
    else:
        message = f"the TFLite runtime {_DISTRIBUTIONS[name]} is not usable; install it with: {INSTALL[name]}"
    raise ImportError(message + "\n(import errors: " + "; ".join(errors) + ")")


__all__ = ["ENV_VAR", "INSTALL", "RUNTIMES", "Runtime", "load"]
