"""What every script shares at its edges: argument parsing and one-line errors."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from transformers import HfArgumentParser

from longctx.errors import first_line

USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def parse_dataclasses(dataclass_types: Sequence[type], description: str | None, argv: Sequence[str] | None = None):
    """Parse the command line into the given argument dataclasses; `--help` shows `description` verbatim.

    Upstream spellings (LongLoRA's `--evaluation_strategy`, ...) are translated first (longctx.upstream).
    """
    from longctx.upstream import known_flags, translate_flags

    parser = HfArgumentParser(
        dataclass_types, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    argv = translate_flags(sys.argv[1:] if argv is None else argv, known_flags(dataclass_types))
    _, unknown = parser.parse_known_args(argv)  # before any dataclass checks its values: the unknown flag is the news
    if unknown:
        raise ValueError(f"unrecognized arguments: {' '.join(unknown)} (see --help)")
    return parser.parse_args_into_dataclasses(args=argv)


def run_cli(main: Callable[[], object]) -> None:
    """Run a script's main; bad input ends in one `error:` line and exit code 2, not a traceback.

    Set LONGCTX_DEBUG=1 to see the full traceback instead. A process under torchrun/DeepSpeed leaves
    through `_leave_process_group` once its work is done. Freed tensors go back to the system
    (longctx.heap), so a long run holds the memory it uses, not its high-water mark.
    """
    from longctx.heap import return_freed_memory

    program = os.path.basename(sys.argv[0])
    return_freed_memory()
    try:
        main()
        _leave_process_group()
    except USER_ERRORS as error:
        if os.environ.get("LONGCTX_DEBUG"):
            raise
        message = first_line(error)
        print(f"{program}: error: {message}", file=sys.stderr)
        _destroy_process_group()  # no barrier: the other ranks may not fail, torchrun stops them
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"\n{program}: interrupted; checkpoints already written are kept", file=sys.stderr)
        sys.exit(130)


def _leave_process_group() -> None:
    """End a finished distributed process without the interpreter's teardown touching its gloo groups.

    With a live group, or a destroyed one whose C++ objects DeepSpeed or accelerate still hold, gloo's
    worker objects can be freed during interpreter finalization and abort the process after its work
    is done ("terminate called without an active exception", exit -6: pytorch/pytorch#190489, #179291);
    CI met it once in a two-process training test that 15 reruns here passed. So every rank waits for
    the others, the groups are destroyed while Python is whole, logs and streams are flushed, and the
    process exits at once.
    """
    import logging

    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    dist.barrier()
    _destroy_process_group()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
