"""JIT-compiled code in a process whose address space is crowded (a Ray driver or worker,
after Arrow's and the object store's mappings): every section of the code must stay within
reach of the 32-bit PC-relative references between them. With MCJIT's default memory manager
the sections were mapped one by one, wherever the kernel found room: here the constants land
in a page above an 8 GiB reservation and the code below it, and LLVM aborted the process
(resolveX86_64Relocation: isInt<32>(RealOffset)); runtime/native.py maps them as one block."""

from __future__ import annotations

from pathlib import Path

from _hostile import run_child

MLP = Path(__file__).resolve().parents[2] / "examples" / "mlp.kiln"

CROWDED = r"""
import ctypes, mmap
import numpy as np
import kiln

SRC = {mlp!r}
kiln.compile(SRC, args={"hidden": 16})  # its code in the compile cache: few mappings later
X = np.random.default_rng(0).standard_normal((2, 784)).astype(np.float32)
WANT = kiln.compile(SRC, args={"hidden": 16}, target="reference")(X)  # the same initial values
libc = ctypes.CDLL(None)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
PAGE, GiB, FAILED = mmap.PAGESIZE, 1 << 30, ctypes.c_void_p(-1).value
FLAGS = 0x02 | 0x20 | 0x4000  # MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE


def reserve(size):
    return libc.mmap(None, size, 0, FLAGS, -1, 0)  # PROT_NONE: address space, no memory


wall = reserve(8 * GiB)  # below everything mapped so far
assert wall not in (None, FAILED)
fillers = []
size = GiB
while size >= PAGE:  # fill every gap above the wall, largest pieces first
    while True:
        at = reserve(size)
        if at in (None, FAILED) or at < wall:
            if at not in (None, FAILED):
                libc.munmap(at, size)
            break
        fillers.append((at, size))
    size //= 2
page = next(at for at, size in fillers if size == PAGE)
libc.munmap(page, PAGE)  # one page of room above the wall: a small section fits, code does not
model = kiln.compile(SRC, args={"hidden": 16})
print("difference", float(np.abs(model(X) - WANT).max()), "scale", float(np.abs(WANT).max()))
"""


def test_jit_code_runs_in_a_crowded_address_space():
    outcome = run_child(CROWDED.replace("{mlp!r}", repr(str(MLP))), timeout=120)
    assert not outcome.timed_out and not outcome.crashed, outcome.stderr[-2000:]
    assert outcome.returncode == 0, outcome.stderr[-2000:]
    words = outcome.stdout.split()
    difference, scale = float(words[-3]), float(words[-1])
    assert scale > 0.01 and difference <= 1e-5 * scale  # the reference's outputs, to rounding
