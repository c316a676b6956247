"""Data-parallel training under torchrun (``torchrun --nproc_per_node=N -m e2vpt train``).

Every rank draws the same global batch from the same seeded generator (and augments it
the same way), then keeps every ``world_size``-th image of it; the loss is the sum over
the local images divided by the global batch size, times the world size, so DDP's
gradient average is exactly the gradient of the global batch mean. A run on N
processes therefore follows the single-process run with the same ``--batch-size``
(the global batch) and seed, up to float reduction order — and up to dropout, whose
masks are drawn per process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this run started the process group, so it ends it

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only rank 0 writes files, prints tables and shows progress."""
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str) -> Distributed:
        """torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR …), if any."""
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls()
        owns = False
        if not dist.is_initialized():
            cuda = torch.cuda.is_available() and not device.startswith("cpu")
            dist.init_process_group("nccl" if cuda else "gloo")
            owns = True
        return cls(
            rank=dist.get_rank(),
            world_size=dist.get_world_size(),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
            owns_group=owns,
        )

    def device(self, requested: torch.device) -> torch.device:
        """One GPU per process: ``cuda:LOCAL_RANK``."""
        if self.enabled and requested.type == "cuda":
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return requested

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's part of a global batch (or of an evaluation set): a strided view."""
        return batch[self.rank :: self.world_size] if self.enabled else batch

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """Sums over ranks (float64, so counts stay exact)."""
        if not self.enabled:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
