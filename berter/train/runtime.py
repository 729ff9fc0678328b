"""Process-wide settings a training run starts from: the seeds, glibc's allocator, the device.

They act on the whole process (every later run in it shares them), so they live apart from
the run that calls them; each is idempotent.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import platform
import random

import numpy as np
import torch

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)
KEEP_FREED_BYTES = 1 << 30


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (dropout masks, SMART's noise)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@functools.cache  # once per process: libc_ver() reads the interpreter's binary
def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of handing it back to the kernel.

    A training step frees and reallocates the same large tensors every step (the word-embedding
    gradient alone is vocabulary x hidden floats, 47 MB for the packaged backbone). glibc serves
    blocks over its mmap threshold with fresh mappings and trims the heap's free top, so each
    step faults those pages in again, zero-filled by the kernel: about 5% of the training time on
    2 cores (benchmarks/freed_memory.py). Serving everything from the heap and trimming only
    above 1 GB keeps the pages mapped, at the cost of holding the peak. Process-wide and
    idempotent; False where the C library is not glibc.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, KEEP_FREED_BYTES)
    )


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when torch sees a GPU, else the CPU; any other name as torch spells it."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)
