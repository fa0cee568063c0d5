"""A worker's place among the ranks torch's launcher started for one mode (--nproc-per-node N).

Rank 0 alone talks with the parent (progress on stdout, commands on stdin) and passes each command on,
so that every rank runs the same generate calls; a barrier after each call keeps their clocks in step.
At the end rank 0 gathers what every rank saw. One process without the launcher is rank 0 of 1, and
all of this reduces to the single-process bench.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import timedelta


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    size: int = 1
    # Commands and results travel in a Gloo group of their own, without the collective timeout: between
    # interleaved runs a rank may wait for the parent as long as the other modes take to compile.
    messages: object = None

    @property
    def first(self) -> bool:
        return self.rank == 0

    def next_command(self) -> str:
        """The parent's next command ("measure", "run", "finish"), read by rank 0 and passed to the others;
        "finish" when the parent has closed stdin."""
        command = (sys.stdin.readline().strip() or "finish") if self.first else None
        if self.size == 1:
            return command
        import torch.distributed as dist

        message = [command]
        dist.broadcast_object_list(message, src=0, group=self.messages)
        return message[0]

    def barrier(self) -> None:
        """Wait for every rank (under the collective timeout)."""
        if self.size > 1:
            import torch.distributed as dist

            dist.barrier()

    def gather(self, value) -> list | None:
        """Every rank's `value`, in rank order, on rank 0; None on the others."""
        if self.size == 1:
            return [value]
        import torch.distributed as dist

        values = [None] * self.size if self.first else None
        dist.gather_object(value, values, dst=0, group=self.messages)
        return values

    def leave(self) -> None:
        if self.size > 1:
            import torch.distributed as dist

            dist.destroy_process_group()


def join(device_type: str, timeout_s: float) -> Ranks:
    """Join the process group the launcher set up (rendezvous from the WORLD_SIZE, RANK, MASTER_ADDR it sets),
    with a timeout on every collective of the generation, so that a rank that stops answering ends the run
    instead of hanging it. Rank 0 of 1 without the launcher."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
        return Ranks()
    import torch.distributed as dist

    from patcher.bench.sharding import BACKENDS

    if device_type == "npu":
        import torch_npu  # noqa: F401  (registers the hccl backend)
    dist.init_process_group(BACKENDS[device_type], timeout=timedelta(seconds=timeout_s))
    messages = dist.new_group(backend="gloo", timeout=timedelta(days=7))
    return Ranks(dist.get_rank(), dist.get_world_size(), messages)


def rank_path(path: str, ranks: Ranks) -> str:
    """This rank's own file next to `path`: NAME.rankR.EXT; `path` itself in a single process."""
    if ranks.size == 1:
        return path
    stem, dot, extension = path.rpartition(".")
    return f"{stem}.rank{ranks.rank}.{extension}" if dot else f"{path}.rank{ranks.rank}"
