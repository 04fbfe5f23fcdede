"""Give freed tensor memory back to the system, so a long run's resident memory is what it uses.

PyTorch's CPU tensors come from the C library's malloc. glibc serves blocks above a threshold with
their own mmap, returned on free, but it raises that threshold (up to 32 MiB) each time such a block
is freed; from then on, activations of a few MiB come from the heap, and freed heap memory mostly stays
with the process. Measured here (bench/RESULTS.md, sequence parallelism): one LoRA+ step at 8190
tokens peaked at 8.1 GiB resident, 2.9 GiB with the threshold held at 64 KiB; step times stayed
within this machine's noise (105 against 121 s at 8k, 272 against 243 s at 16k).
`mallopt(M_MMAP_THRESHOLD, ...)` fixes the threshold (which also stops glibc's dynamic adjustment)
for every allocation after the call. Only glibc (Linux) has it; a
MALLOC_MMAP_THRESHOLD_ already in the environment, the same setting given by the user, is left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
MMAP_THRESHOLD_BYTES = 64 * 1024
ENVIRONMENT_SETTING = "MALLOC_MMAP_THRESHOLD_"


def return_freed_memory(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Serve every allocation of `threshold` bytes or more by its own mmap from now on; True if set."""
    if platform.system() != "Linux" or ENVIRONMENT_SETTING in os.environ or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))
