"""Multi-process training through Hugging Face accelerate (DDP), and its single-process twin.

``lte train`` runs unchanged under ``accelerate launch --num_processes N`` (or ``torchrun``):
each process takes its slice of every global batch, gradients are averaged by
DistributedDataParallel, the measured sparsity and logged losses are averaged across
processes (so every process applies the same eta and router-bias shift), and only the main
process writes logs and checkpoints. With one process nothing is wrapped and nothing changes.
"""

from __future__ import annotations

import os

import torch
from torch import nn


def is_main_process() -> bool:
    """True unless this is a non-zero rank of a multi-process launch (files are written once)."""
    return int(os.environ.get("RANK", "0")) == 0


def launched_distributed() -> bool:
    """True when started by a multi-process launcher (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


class DistEnv:
    """Rank, world size and the few collective operations the trainer needs."""

    def __init__(self) -> None:
        self.acc = None
        self.rank, self.world = 0, 1
        if launched_distributed():
            from accelerate import Accelerator
            from accelerate.utils import DistributedDataParallelKwargs
            self.acc = Accelerator(cpu=not torch.cuda.is_available(),
                                   kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)])
            self.rank, self.world = self.acc.process_index, self.acc.num_processes

    @property
    def is_main(self) -> bool:
        """Whether this process writes logs and checkpoints."""
        return self.rank == 0

    @property
    def device(self) -> torch.device | None:
        """The device accelerate assigned to this process (None when single-process)."""
        return None if self.acc is None else self.acc.device

    def wrap(self, model: nn.Module) -> nn.Module:
        """The model to run forward/backward through: DDP-wrapped when distributed."""
        if self.acc is None:
            return model
        from torch.nn.parallel import DistributedDataParallel as DDP
        ids = [self.acc.device.index] if self.acc.device.type == "cuda" else None
        return DDP(model, device_ids=ids, broadcast_buffers=False)

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Average a dict of floats over processes."""
        if self.acc is None or not values:
            return values
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self.acc.device)
        torch.distributed.all_reduce(t)
        return {k: float(v) / self.world for k, v in zip(keys, t.tolist())}

    def barrier(self) -> None:
        """Wait for every process."""
        if self.acc is not None:
            self.acc.wait_for_everyone()

    def shard(self, idx: torch.Tensor) -> torch.Tensor:
        """This process's contiguous slice of a global batch of indices."""
        if self.world == 1:
            return idx
        per = idx.numel() // self.world
        return idx[self.rank * per:(self.rank + 1) * per]
