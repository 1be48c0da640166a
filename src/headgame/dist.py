"""Several processes for analyze, fep and eval (``torchrun``, ``accelerate launch``).

A launcher sets RANK / WORLD_SIZE / MASTER_ADDR; :func:`world` joins the process group from them
when the launcher has not (gloo on CPU, NCCL where CUDA is present). Every process loads the same
data and works on its shard (:func:`shard`); the accumulators are gathered with
:func:`all_gather` and folded in rank order, and only rank 0 writes (:func:`is_main`). Without a
launcher every function is the one-process identity. torch is imported only when needed.
"""

from __future__ import annotations

import os
from typing import Any


_JOINED: list[bool] = []  # non-empty once world() joined the group itself (finish() then leaves it)
_LEFT: list[bool] = []  # non-empty once finish() left a group world() joined


def _env_world() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def _initialised() -> bool:
    import sys

    if "torch" not in sys.modules:
        return False
    import torch.distributed as td

    return td.is_available() and td.is_initialized()


def world() -> tuple[int, int]:
    """(rank, number of processes); joins the process group from the environment when a launcher
    asked for more than one process and nobody has joined it yet."""
    if not _initialised():
        if _env_world() <= 1:
            return 0, 1
        import torch
        import torch.distributed as td

        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            td.init_process_group("nccl")
        else:
            td.init_process_group("gloo")
        _JOINED.append(True)
    import torch.distributed as td

    return td.get_rank(), td.get_world_size()


def rank() -> int:
    """This process's rank: 0 on one process; read from the environment before the group is joined."""
    if _initialised():
        import torch.distributed as td

        return td.get_rank()
    try:
        return int(os.environ.get("RANK", "0")) if _env_world() > 1 else 0
    except ValueError:
        return 0


def is_main() -> bool:
    """Whether this process writes the outputs (rank 0)."""
    return rank() == 0


def shard(n: int, rank: int, world: int) -> range:
    """The contiguous block of ``range(n)`` that process ``rank`` of ``world`` works on; the blocks
    cover ``range(n)`` in order, the first ``n % world`` one item longer."""
    size, extra = divmod(n, world)
    start = rank * size + min(rank, extra)
    return range(start, start + size + (1 if rank < extra else 0))


def all_gather(obj: Any) -> list[Any]:
    """Every process's ``obj`` (picklable; tensors on CPU), in rank order; ``[obj]`` on one process."""
    if not _initialised():
        return [obj]
    import torch.distributed as td

    out: list[Any] = [None] * td.get_world_size()
    td.all_gather_object(out, obj)
    return out


def my_share(n: int) -> range:
    """This process's contiguous block of ``range(n)`` (all of it on one process)."""
    return shard(n, *world())


def merge_indexed(local: dict[Any, Any]) -> dict[Any, Any]:
    """Every process's ``{index: value}`` in one dict, on every process (``local`` on one process)."""
    parts = all_gather(local)
    if len(parts) == 1:
        return local
    out: dict[Any, Any] = {}
    for part in parts:
        out.update(part)
    return out


def barrier() -> None:
    """Wait for every process (nothing on one process)."""
    if _initialised():
        import torch.distributed as td

        td.barrier()


def finish() -> None:
    """End a command that ran to completion: wait for every process, then leave the group :func:`world`
    joined, so no
    process exits while another still talks to it. A failed process skips this and exits; the
    launcher then stops the others."""
    if _initialised():
        import torch.distributed as td

        td.barrier()
        if _JOINED:  # a group the caller joined stays theirs
            td.destroy_process_group()
            _JOINED.clear()
            _LEFT.append(True)


def exit_after_group(code: int) -> None:
    """End the process with ``code`` at once when it left a process group of its own: the
    interpreter's teardown of the collective library's threads can abort a process whose peer
    has already gone, and everything the command had to do is done and flushed."""
    if _LEFT:
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
