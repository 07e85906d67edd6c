"""Data-parallel training over several processes and machines (torch.distributed).

``torchrun --nproc-per-node N -m charnn train ...`` starts N copies of charnn; torchrun sets
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (and the rendezvous address) in their environment.
:func:`from_env` reads them and :meth:`Group.init` joins the process group: NCCL when the
processes train on CUDA, gloo on the CPU. How the work is shared:

- every rank builds the same model from the same seed (DDP also broadcasts rank 0's weights),
  reads the same corpus and owns ``--batch-size`` streams of it, disjoint from the other ranks'
  (see :class:`charnn.data.StreamBatcher`); DistributedDataParallel averages the gradients, so
  N ranks with batch B train exactly like one process with batch N*B;
- the ranks agree once per step (one all-reduce of a few numbers) on the clock and on a pending
  Ctrl-C/SIGTERM, so they stop at the same step;
- rank 0 alone validates (the held-out text is small, and the result is then exactly a single
  process's) and broadcasts the result; it alone writes checkpoints, holds the run directory's
  lock and draws progress. A save gathers every rank's carried hidden state so that a checkpoint
  holds all N*B streams, in rank order, like a single process's;
- collectives time out (``CHARNN_DIST_TIMEOUT`` seconds, default 600): a rank that fails makes
  the others fail instead of waiting forever (torchrun also stops the remaining ones).

The world size is stored in checkpoints; ``--resume`` refuses another one (exit 2).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from charnn.errors import ConfigError

if TYPE_CHECKING:  # torch only where tensors move: planning a run (charnn.run_plan) imports this module
    import torch

    from charnn.model import Hidden

DEFAULT_TIMEOUT = 600.0


@dataclass(frozen=True)
class Group:
    """This process's place in the run: ``rank`` of ``world_size`` (1 = not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_writer(self) -> bool:
        """Whether this rank writes checkpoints, metrics and progress."""
        return self.rank == 0

    def device(self, name: str) -> str:
        """Each process on a machine takes its own GPU (``cuda:LOCAL_RANK``)."""
        import torch

        if self.active and name in ("auto", "cuda") and torch.cuda.is_available():
            return f"cuda:{self.local_rank}"
        return name

    def init(self, device: torch.device) -> None:
        """Join the process group (once per process): NCCL on CUDA, gloo on the CPU."""
        import torch
        import torch.distributed as dist

        if not self.active or dist.is_initialized():
            return
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_seconds()))

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """The module to train through: DistributedDataParallel when distributed."""
        if not self.active:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    # ------------------------------------------------------------------ agreement

    def agree(self, elapsed: float, signal: int) -> tuple[float, int]:
        """The slowest rank's clock and any rank's pending signal (SIGTERM wins over SIGINT),
        the same on every rank, so they all stop at the same step."""
        if not self.active:
            return elapsed, signal
        import torch
        import torch.distributed as dist

        both = torch.tensor([elapsed, float(signal)], dtype=torch.float64)
        dist.all_reduce(both, op=dist.ReduceOp.MAX)
        return float(both[0]), int(both[1])

    def broadcast_floats(self, values: list[float] | None, n: int) -> list[float] | None:
        """Rank 0's ``values`` (or its None) on every rank."""
        if not self.active:
            return values
        import torch
        import torch.distributed as dist

        buf = torch.zeros(n + 1, dtype=torch.float64)
        if self.rank == 0 and values is not None:
            buf[0], buf[1:] = 1.0, torch.tensor(values, dtype=torch.float64)
        dist.broadcast(buf, src=0)
        return buf[1:].tolist() if buf[0] == 1.0 else None

    def shared(self, compute: Callable[[], list[float] | None], n: int) -> list[float] | None:
        """``compute()`` run by rank 0 alone, its ``n`` numbers (or its None) on every rank: for
        work the other ranks would only repeat, such as validation. One process just computes."""
        if not self.active:
            return compute()
        return self.broadcast_floats(compute() if self.is_writer else None, n)

    # ------------------------------------------------------------------ hidden state

    def gather_hidden(self, hidden: Hidden) -> Hidden:
        """Every rank's hidden state joined along the batch dimension, in rank order:
        (layers, B, H) per rank -> (layers, N*B, H), as one process with N*B streams holds it."""
        if not self.active:
            return hidden
        import torch
        import torch.distributed as dist

        def gather(t: torch.Tensor) -> torch.Tensor:
            parts = [torch.empty_like(t) for _ in range(self.world_size)]
            dist.all_gather(parts, t.contiguous())
            return torch.cat(parts, dim=1)

        if isinstance(hidden, tuple):
            return (gather(hidden[0]), gather(hidden[1]))
        return gather(hidden)

    def own_hidden(self, hidden: Hidden | None, batch: int) -> Hidden | None:
        """This rank's streams of a checkpoint's hidden state (the inverse of :meth:`gather_hidden`)."""
        if hidden is None or not self.active:
            return hidden
        lo = self.rank * batch

        def part(t: torch.Tensor) -> torch.Tensor:
            return t[:, lo : lo + batch].contiguous()

        if isinstance(hidden, tuple):
            return (part(hidden[0]), part(hidden[1]))
        return part(hidden)

    def check_resume(self, saved_world_size: Any) -> None:
        saved = int(saved_world_size or 1)
        if saved != self.world_size:
            raise ConfigError(
                f"this run was trained by {saved} process(es) and is resumed by {self.world_size}: "
                f"--resume needs the same number (e.g. torchrun --nproc-per-node {saved} ... "
                "across all machines)"
                if saved > 1
                else f"this run was trained by 1 process and is resumed by {self.world_size}: "
                "--resume needs the same number (resume it without torchrun)"
            )

    def close(self) -> None:
        if not self.active:
            return  # nothing joined (and no torch import for a single process)
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


SOLO = Group()


def from_env(environ: dict[str, str] | None = None) -> Group:
    """This process's group from torchrun's variables (a single process when they are absent)."""
    env = os.environ if environ is None else environ
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", "0"))
    except ValueError:
        raise ConfigError("RANK, WORLD_SIZE and LOCAL_RANK must be whole numbers") from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ConfigError(f"RANK {rank} / WORLD_SIZE {world} / LOCAL_RANK {local} do not make sense")
    return Group(rank, world, local)


def timeout_seconds() -> float:
    text = os.environ.get("CHARNN_DIST_TIMEOUT", "")
    try:
        value = float(text) if text else DEFAULT_TIMEOUT
    except ValueError:
        raise ConfigError(f"CHARNN_DIST_TIMEOUT must be a number of seconds, got {text!r}") from None
    if not value > 0:
        raise ConfigError(f"CHARNN_DIST_TIMEOUT must be > 0, got {text!r}")
    return value
