"""The machine kiln's native code is built for: the host CPU and its own features by default.

Machines differ (AVX2-only Zen 3, AVX-512 Sapphire Rapids), so code is never built for generic
x86-64 unless asked (`cpu="x86-64-v3"`), and the vector width follows the features.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import llvmlite.binding as llvm


@functools.cache
def _initialise():
    """llvmlite's binding, with the native target initialised: imported on first use, so
    that a Target (a model loaded from a library or the compile cache) needs no LLVM."""
    import llvmlite.binding as llvm

    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    llvm.initialize_native_asmparser()  # inline assembly (bf16.amx_ready: a system call)
    return llvm


@dataclass(frozen=True)
class Target:
    """A CPU name and its feature string, e.g. ("znver4", "+avx2,+avx512f,...")."""

    cpu: str
    features: str

    @property
    def feature_set(self) -> frozenset[str]:
        return frozenset(f[1:] for f in self.features.split(",") if f.startswith("+"))

    @property
    def vector_width(self) -> int:
        """f32 lanes of the widest vector register worth using."""
        fs = self.feature_set
        if "avx512f" in fs:
            return 16
        if "avx" in fs or "avx2" in fs:
            return 8
        return 4

    def machine(self, jit: bool = True) -> llvm.TargetMachine:
        llvm = _initialise()
        target = llvm.Target.from_default_triple()
        return target.create_target_machine(
            cpu=self.cpu, features=self.features, opt=3, jit=jit, reloc="pic", codemodel="default"
        )

    def missing_on(self, other: Target) -> list[str]:
        """Features this target needs that `other` (e.g. the host) lacks."""
        return sorted(self.feature_set - other.feature_set)


@functools.cache
def host() -> Target:
    """The CPU this process runs on, with every feature LLVM detects."""
    llvm = _initialise()
    return Target(llvm.get_host_cpu_name(), llvm.get_host_cpu_features().flatten())


# the x86-64 micro-architecture levels (psABI): portable targets and the features they need
_LEVELS = {
    "x86-64": "+sse,+sse2,+cx8,+cmov,+fxsr,+mmx",
    "x86-64-v2": "+sse3,+ssse3,+sse4.1,+sse4.2,+popcnt,+cx16,+sahf",
    "x86-64-v3": "+avx,+avx2,+bmi,+bmi2,+f16c,+fma,+lzcnt,+movbe,+xsave",
    "x86-64-v4": "+avx512f,+avx512bw,+avx512cd,+avx512dq,+avx512vl",
}


def named(cpu: str) -> Target:
    """A portable x86-64 level ("x86-64-v3": AVX2 and FMA; "x86-64-v4": AVX-512), with every
    feature it implies, so a library built for it records what it needs."""
    if cpu not in _LEVELS:
        from ...errors import KilnError

        raise KilnError("K0602", f"unknown CPU target {cpu!r}",
                        hint=f"targets: {', '.join(_LEVELS)} (or leave --cpu out for this CPU)")
    _initialise()
    levels = list(_LEVELS)
    features = ",".join(_LEVELS[level] for level in levels[: levels.index(cpu) + 1])
    return Target(cpu, features)
