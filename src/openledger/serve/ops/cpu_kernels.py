"""openledger's compiled CPU kernels: built on first use, cached, loaded with :mod:`ctypes`.

The C sources (``csrc/``, one file per kernel family: ``lora.c``, ``linear.c``,
``attention.c``, ``rowwise.c``, sharing ``common.h``) hold the kernels where plain torch
spends its time at decode, in many small ops or in GEMM routines tuned for large
matrices: the projections of a few token rows over a packed weight, the LoRA updates of a
step's adapters, paged decode attention, a residual add with RMSNorm, the rotary
embedding, the gated MLP activation and the greedy pick over a step's logits. Callers
never touch this module's entry points: every kernel is a registered torch op
(:mod:`.cpu_ops`, ``torch.ops.openledger.*``) that checks its tensors and calls them.

The library is compiled with the system's C compiler (``$CC``, else ``cc``, ``gcc`` or
``clang``; ``-O3 -fopenmp`` and the target of :func:`kernel_target`; one compiler process
per source file, in parallel, then one link) into ``$OPENLEDGER_HOME/kernels``. The
target follows the vector instructions torch itself uses
(``torch.backends.cpu.get_cpu_capability()``, which ``ATEN_CPU_CAPABILITY`` lowers), so
one switch runs a whole process on the AVX2 or baseline paths of an AVX-512 CPU. The file
name carries a hash of the sources, the flags and the CPU, so a changed source or another
machine compiles again; a build is linked under a scratch name and renamed, so concurrent
processes never load half a file. The library links the OpenMP runtime torch has already
loaded, so the kernels share torch's threads. Without a compiler (logged once) or on
Windows, :func:`cpu_kernels` returns None and the torch paths run instead (the same
results up to rounding: the kernels sum in other orders and may fuse multiply-adds); an
engine turns them off with ``EngineConfig.cpu_kernels``.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

__all__ = [
    "CpuKernels",
    "c_compiler",
    "compile_cpu_kernels",
    "cpu_float32",
    "cpu_kernels",
    "kernel_target",
]

logger = logging.getLogger(__name__)

SOURCES = Path(__file__).with_name("csrc")
"""The kernels' C sources (``*.c``) and their shared header (``common.h``)."""
# NOTE: -fno-trapping-math only gives up floating-point exception flags (never read here),
# which lets comparisons and selects vectorise; values are unchanged by it.
_OPTIMISE = ("-O3", "-fno-trapping-math")
# NOTE: torch's x86 capabilities and the GCC/Clang micro-architecture levels that hold the
# same instructions (x86-64-v3: AVX2 + FMA; x86-64: SSE2, as torch's DEFAULT kernels).
_X86_TARGETS = {
    "AVX512": ("-march=native",),
    "AVX2": ("-march=x86-64-v3", "-mtune=native"),
    "DEFAULT": ("-march=x86-64", "-mtune=native"),
}


def kernel_target() -> tuple[str, ...]:
    """The compiler's target flags for the kernels: the instruction set torch's own CPU
    kernels use in this process (on x86, ``AVX512`` builds for this CPU, ``AVX2`` for
    ``x86-64-v3``, ``DEFAULT`` for baseline ``x86-64``); ``-march=native`` elsewhere.

    Set ``ATEN_CPU_CAPABILITY=avx2`` (or ``default``) before torch loads to run torch and
    these kernels on the lower paths, e.g. to test results on another machine's paths.
    """
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return ("-march=native",)
    capability = torch.backends.cpu.get_cpu_capability()
    return _X86_TARGETS.get(capability, _X86_TARGETS["DEFAULT"])


def _flag_sets() -> tuple[tuple[str, ...], ...]:
    """Flags to try in order: the target with OpenMP, without it, then a plain build."""
    target = kernel_target()
    return (
        (*_OPTIMISE, *target, "-fopenmp"),
        (*_OPTIMISE, *target),
        _OPTIMISE,
    )


class CpuKernels:
    """The compiled library's entry points, typed for :mod:`ctypes`.

    Args:
        path: The shared library.

    Raises:
        OSError: It cannot be loaded.
        AttributeError: It lacks a kernel (built from another source).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._library = ctypes.CDLL(str(path))
        i64, ptr, f32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_float
        self.lora_apply = self._bind(
            "openledger_lora_apply",
            [ptr, i64, ptr, i64, i64, i64, ptr, ptr, i64, i64, ptr, ptr, ctypes.c_int],
        )
        """``openledger_lora_apply`` (``openledger::lora_apply``, :mod:`.lora_cpu_op`)."""
        self.paged_decode = self._bind(
            "openledger_paged_decode",
            [ptr, i64, ptr, ptr, ptr, i64, i64, i64, ptr, i64, i64, i64, i64, i64, f32, i64,
             ptr, ctypes.c_int],
        )  # fmt: skip
        """``openledger_paged_decode`` (``openledger::paged_decode``, :mod:`.attention_cpu`)."""
        self.add_rms_norm = self._bind(
            "openledger_add_rms_norm",
            [ptr, i64, ptr, i64, ptr, f32, i64, i64, ptr, i64, ctypes.c_int],
            restype=None,
        )
        """``openledger_add_rms_norm`` (``openledger::rms_norm``, ``add_rms_norm``)."""
        self.silu_mul = self._bind(
            "openledger_silu_mul", [ptr, i64, i64, i64, ptr, ctypes.c_int], restype=None
        )
        """``openledger_silu_mul`` (``openledger::silu_mul``, :mod:`.rowwise_cpu`)."""
        self.rotary = self._bind(
            "openledger_rotary",
            [ptr, i64, i64, i64, i64, ptr, i64, ptr, ptr, ctypes.c_int],
        )
        """``openledger_rotary`` (``openledger::rotary``, :mod:`.rowwise_cpu`)."""
        self.argmax_rows = self._bind(
            "openledger_argmax_rows", [ptr, i64, i64, i64, ptr, ctypes.c_int], restype=None
        )
        """``openledger_argmax_rows`` (``openledger::argmax_rows``, :mod:`.rowwise_cpu`)."""
        self.packed_linear_size = self._bind(
            "openledger_packed_linear_size", [i64, i64], restype=ctypes.c_int64
        )
        """``openledger_packed_linear_size``: floats of a weight packed for the kernel."""
        self.pack_linear = self._bind(
            "openledger_pack_linear", [ptr, i64, i64, i64, ptr, ctypes.c_int], restype=None
        )
        """``openledger_pack_linear`` (``openledger::pack_linear``, :mod:`.linear_cpu`)."""
        self.linear = self._bind(
            "openledger_linear",
            [ptr, i64, i64, ptr, i64, i64, ptr, ptr, i64, ctypes.c_int],
            restype=None,
        )
        """``openledger_linear`` (``openledger::linear``, :mod:`.linear_cpu`)."""
        self.pack_linear_int8 = self._bind(
            "openledger_pack_linear_int8", [ptr, i64, i64, i64, ptr, ctypes.c_int], restype=None
        )
        """``openledger_pack_linear_int8`` (``openledger::pack_linear_int8``)."""
        self.linear_int8 = self._bind(
            "openledger_linear_int8",
            [ptr, i64, i64, ptr, ptr, i64, i64, ptr, ptr, i64, ctypes.c_int],
            restype=None,
        )
        """``openledger_linear_int8`` (``openledger::linear_int8``, :mod:`.linear_cpu`)."""
        self.has_bf16_dot = self._bind("openledger_has_bf16_dot", [], restype=ctypes.c_int64)
        """``openledger_has_bf16_dot``: 1 where the build has AVX512-BF16 dot products."""
        self.pack_linear_int8_bf16 = self._bind(
            "openledger_pack_linear_int8_bf16",
            [ptr, i64, i64, i64, ptr, ctypes.c_int],
            restype=None,
        )
        """``openledger_pack_linear_int8_bf16`` (``openledger::pack_linear_int8_bf16``)."""
        self.linear_int8_bf16 = self._bind(
            "openledger_linear_int8_bf16",
            [ptr, i64, i64, ptr, ptr, i64, i64, ptr, ptr, i64, ptr, ctypes.c_int],
        )
        """``openledger_linear_int8_bf16`` (``openledger::linear_int8_bf16``)."""

    def _bind(
        self, name: str, argtypes: list[type], restype: type | None = ctypes.c_int
    ) -> Callable[..., int]:
        fn = getattr(self._library, name)
        fn.argtypes = argtypes
        fn.restype = restype
        bound: Callable[..., int] = fn
        return bound


@functools.cache
def cpu_kernels() -> CpuKernels | None:
    """The kernels, compiled on first use and cached for the process; None where they
    cannot be had (no C compiler, Windows); the reason is logged once."""
    path = compile_cpu_kernels()
    if path is None:
        return None
    try:
        return CpuKernels(path)
    except (OSError, AttributeError) as error:
        logger.warning("CPU kernels %s could not be loaded (%s): using torch", path, error)
        return None


def cpu_float32(*tensors: torch.Tensor) -> bool:
    """Whether every tensor is float32 on the CPU with unit stride along its last dimension
    (rows the kernels can read), and the kernels are built."""
    for t in tensors:
        if not (t.dtype is torch.float32 and t.is_cpu and t.stride(-1) == 1):
            return False
    return cpu_kernels() is not None


def compile_cpu_kernels(folder: Path | None = None) -> Path | None:
    """Compile the sources into ``folder`` (default ``$OPENLEDGER_HOME/kernels``) unless a
    library built from the same sources, flags and CPU is already there.

    Returns:
        The shared library's path, or None when no compiler could build it (logged).
    """
    if os.name == "nt":
        logger.info("CPU kernels: not built on Windows; using torch")
        return None
    compiler = c_compiler()
    if compiler is None:
        logger.warning("CPU kernels: no C compiler ($CC, cc, gcc, clang); using torch")
        return None
    if folder is None:
        from openledger.models.cache import openledger_home

        folder = openledger_home() / "kernels"
    source = _source_digest()
    errors: list[str] = []
    for flags in _flag_sets():
        digest = hashlib.sha256(
            b"\0".join([source, compiler.encode(), " ".join(flags).encode(), _cpu_identity()])
        ).hexdigest()[:16]
        target = folder / f"cpu_kernels-{digest}.so"
        if target.exists():
            return target
        error = _build(compiler, flags, target)
        if error is None:
            return target
        errors.append(f"{' '.join(flags)}: {error}")
    logger.warning("CPU kernels: %s failed to build them (%s); using torch", compiler, errors)
    return None


def c_compiler() -> str | None:
    """The C compiler the kernels are built with: ``$CC``, else ``cc``, ``gcc`` or
    ``clang`` on the PATH; None when there is none."""
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and (found := shutil.which(name)):
            return found
    return None


def _cpu_identity() -> bytes:
    # NOTE: -march=native code must not be loaded on another CPU (a shared home folder):
    # the model name and feature flags of this one go into the file name.
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return f"{platform.machine()} {platform.processor()}".encode()
    wanted = [line for line in text.splitlines() if line.startswith(("model name", "flags"))]
    return "\n".join(sorted(set(wanted))).encode()


def _source_digest() -> bytes:
    files = sorted(p for p in SOURCES.iterdir() if p.suffix in (".c", ".h"))
    return b"\0".join(p.name.encode() + b"\0" + p.read_bytes() for p in files)


def _build(compiler: str, flags: Sequence[str], target: Path) -> str | None:
    target.parent.mkdir(parents=True, exist_ok=True)
    sources = sorted(SOURCES.glob("*.c"))
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as scratch:
        objects = [Path(scratch) / f"{source.stem}.o" for source in sources]
        compiles = [
            [compiler, *flags, "-fPIC", "-c", str(source), "-o", str(obj)]
            for source, obj in zip(sources, objects, strict=True)
        ]
        library = Path(scratch) / target.name
        link = [compiler, *flags, "-shared", *map(str, objects), "-o", str(library), "-lm"]
        try:
            error = _run_all(compiles) or _run_all([link])
            if error is None:
                # NOTE: atomic: a concurrent build never sees half a file
                os.replace(library, target)
            return error
        except (OSError, subprocess.SubprocessError) as error:
            return str(error)


def _run_all(commands: Sequence[Sequence[str]]) -> str | None:
    """Run ``commands`` side by side; the first failure's message, or None."""
    running: list[subprocess.Popen[str]] = []
    try:
        for command in commands:
            running.append(
                subprocess.Popen(
                    command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
                )
            )
        errors = []
        for process in running:
            _, stderr = process.communicate(timeout=120)
            if process.returncode != 0:
                errors.append(stderr.strip()[-500:] or f"exit status {process.returncode}")
        return errors[0] if errors else None
    finally:
        for process in running:
            if process.poll() is None:
                process.kill()
                process.wait()
