"""Multi-process training through Hugging Face accelerate (DDP), and its single-process twin.

``lte train`` runs unchanged under ``accelerate launch --num_processes N`` (or ``torchrun``):
each process takes its slice of every global batch, gradients are averaged by
DistributedDataParallel, the measured sparsity and logged losses are averaged across
processes (so every process applies the same eta and router-bias shift), and only the main
process writes logs and checkpoints. With one process nothing is wrapped and nothing changes.

FSDP (full sharding, PyTorch's ``fully_shard``) replaces DDP when the launch asks for it:
``accelerate launch --use_fsdp ...`` (or an accelerate config with ``distributed_type: FSDP``,
which sets ``ACCELERATE_USE_FSDP=true``), or ``LTE_FSDP=1`` under torchrun. Every
transformer block holding an LTE FFN (its router included) is one FSDP unit (for a plain
model, e.g. the distillation teacher: each block named in ``_no_split_modules``), then the
root. Before sharding, rank 0's parameters and buffers are broadcast to every rank (FSDP2,
unlike DDP, does not synchronise them), so ranks can never shard different groupings.
Mixed precision on GPU is bf16 autocast, as on one GPU; parameters are gathered in fp32 by
default so the routers' logits stay fp32 (``Router`` casts to fp32, which cannot undo a
bf16 gather); ``LTE_FSDP_PARAM_DTYPE=bfloat16`` gathers in bf16 instead (half the
all-gather traffic; routers then see bf16-rounded weights and biases); ``LTE_FSDP_RESHARD=0``
keeps each block's gathered parameters from forward to backward (one all-gather per block
and step fewer, more memory); ``LTE_FSDP_BLOCKS_PER_UNIT=N`` groups N consecutive blocks into
one unit (0: all of them), for fewer per-unit hooks and collectives. Gradients are reduced in
fp32. Models and checkpoints are gathered to full tensors on save, so a checkpoint resumes on
any number of processes with or without sharding.

Per-step cost under FSDP (issue #5): every sharded unit costs an all-gather plus Python hook
work per forward (and per backward), so the frozen distillation teacher is NOT sharded by
default: each rank keeps a full replica (rank 0's weights, broadcast once; a 135M teacher is
~0.5 GB in fp32), which removes one all-gather per block and step and the teacher's hooks, and
computes exactly what one process computes. ``LTE_FSDP_SHARD_TEACHER=1`` shards it like the
student (for a teacher too large to replicate). Each block also prefetches the next block's
all-gather during its own forward (``set_modules_to_forward_prefetch``), so gathers overlap
compute even where the host does not run ahead of the GPU; ``LTE_FSDP_PREFETCH=0`` turns that
off (FSDP's implicit order only). The root unit (embeddings, final norm, head) is never
resharded between forward and backward.
"""

from __future__ import annotations

import os

import torch
from torch import nn


def is_main_process() -> bool:
    """True unless this is a non-zero rank of a multi-process launch (files are written once)."""
    return int(os.environ.get("RANK", "0")) == 0


def fsdp_requested() -> bool:
    """Whether the launcher asked for FSDP (accelerate's --use_fsdp / FSDP config, or LTE_FSDP=1)."""
    return (os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true")
            or os.environ.get("LTE_FSDP", "0").lower() in ("1", "true"))


def is_sharded(model: nn.Module) -> bool:
    """True when ``fully_shard`` has been applied to the model (its parameters may be
    gathered, not DTensors, between a forward and a backward without resharding)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - old torch
        return False
    return isinstance(model, FSDPModule)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Full (unsharded, CPU) state dict of a sharded model. Collective: every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def launched_distributed() -> bool:
    """True when started by a multi-process launcher (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def shutdown_distributed() -> None:
    """End a multi-process run cleanly: wait for every rank, then destroy the process group
    (a group left to interpreter exit can abort a rank whose gloo threads are still running)."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def local_device(device: str) -> str:
    """``device`` for this process: plain "cuda" becomes "cuda:LOCAL_RANK" under a
    multi-process launch (and is made current), so each rank loads its model on its own GPU
    instead of every rank loading onto GPU 0 first."""
    if device != "cuda" or not launched_distributed() or "LOCAL_RANK" not in os.environ:
        return device
    idx = int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available() and idx < torch.cuda.device_count():
        torch.cuda.set_device(idx)
        return f"cuda:{idx}"
    return device


# The LTE_FSDP_* knobs and their defaults, read by the functions below (benchmarks label runs by them).
FSDP_ENV_DEFAULTS = {"LTE_FSDP_PARAM_DTYPE": "", "LTE_FSDP_RESHARD": "1", "LTE_FSDP_SHARD_TEACHER": "0",
                     "LTE_FSDP_PREFETCH": "1", "LTE_FSDP_BLOCKS_PER_UNIT": "1"}


def _env(name: str) -> str:
    return os.environ.get(name, FSDP_ENV_DEFAULTS[name]).strip().lower()


def fsdp_param_dtype() -> torch.dtype | None:
    """The dtype FSDP gathers parameters in on GPU: None (fp32, the default) or the value of
    ``LTE_FSDP_PARAM_DTYPE`` (bfloat16 / float16)."""
    name = _env("LTE_FSDP_PARAM_DTYPE")
    if name in ("", "none", "float32", "fp32"):
        return None
    table = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if name not in table:
        raise ValueError(f"LTE_FSDP_PARAM_DTYPE={name!r}: expected float32, bfloat16 or float16")
    return table[name]


def fsdp_reshard_after_forward() -> bool:
    """Whether FSDP frees gathered parameters after each block's forward (the default, least
    memory) or keeps them until backward (``LTE_FSDP_RESHARD=0``: one all-gather per block
    and step fewer, ZeRO-2-like memory)."""
    return _env_flag("LTE_FSDP_RESHARD")


def _env_flag(name: str) -> bool:
    value = _env(name)
    if value not in ("0", "1", "false", "true"):
        raise ValueError(f"{name}={value!r}: expected 0 or 1")
    return value in ("1", "true")


def fsdp_blocks_per_unit() -> int:
    """Consecutive blocks grouped into one FSDP unit (``LTE_FSDP_BLOCKS_PER_UNIT``; default 1,
    0 = all blocks in one unit). FSDP2's hooks cost CPU time per unit and per step, which a
    small model whose training is already CPU-bound pays in full; larger units mean fewer
    hooks and collectives at the cost of more gathered memory at once."""
    value = _env("LTE_FSDP_BLOCKS_PER_UNIT")
    if not value.isdigit():
        raise ValueError(f"LTE_FSDP_BLOCKS_PER_UNIT={value!r}: expected an integer >= 0")
    return int(value)


def fsdp_shard_teacher() -> bool:
    """Whether FSDP shards the frozen distillation teacher too (``LTE_FSDP_SHARD_TEACHER=1``)
    instead of keeping a full replica on every rank (the default: no per-step gathers)."""
    return _env_flag("LTE_FSDP_SHARD_TEACHER")


def fsdp_forward_prefetch() -> bool:
    """Whether each FSDP block prefetches the next block's all-gather in forward (default;
    ``LTE_FSDP_PREFETCH=0`` leaves FSDP's implicit prefetching only)."""
    return _env_flag("LTE_FSDP_PREFETCH")


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The modules FSDP shards one by one: blocks holding an LTE FFN, else the blocks named in
    the model's ``_no_split_modules`` (a plain model such as the distillation teacher)."""
    from .ffn import LTEFFN
    blocks = [m for m in model.modules() if any(isinstance(c, LTEFFN) for c in m.children())]
    if blocks:
        return blocks
    names = set(getattr(model, "_no_split_modules", None) or [])
    return [m for m in model.modules() if type(m).__name__ in names and m is not model]


def broadcast_from_main(model: nn.Module) -> None:
    """Copy rank 0's parameters and buffers into every other rank's model (collective)."""
    import torch.distributed as dist
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            dist.broadcast(t.data, src=0)


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
        self.fsdp = self.acc is not None and fsdp_requested()

    def shard(self, model: nn.Module, param_dtype: torch.dtype | None = None) -> nn.Module:
        """Apply FSDP to ``model`` in place (once; no-op without FSDP): rank 0's weights are
        broadcast, then each of ``shard_units`` is a unit, then the root. ``param_dtype``
        (GPU only; None = fp32) is the dtype parameters are gathered in; gradients are
        reduced in fp32."""
        if not self.fsdp or is_sharded(model):
            return model
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
        kw = {"reshard_after_forward": fsdp_reshard_after_forward()}
        if param_dtype is not None and self.acc.device.type == "cuda":
            kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
        broadcast_from_main(model)
        units = shard_units(model)
        per = fsdp_blocks_per_unit() or max(len(units), 1)
        groups = [units[i:i + per] for i in range(0, len(units), per)]
        for group in groups:  # a list of modules is one FSDP unit: one all-gather and one set of hooks
            fully_shard(group if len(group) > 1 else group[0], **kw)
        # root (embeddings, final norm, head): None lets FSDP keep it gathered from forward to
        # backward (its parameters are needed again at once), which an explicit True would not
        fully_shard(model, **{**kw, "reshard_after_forward": None if kw["reshard_after_forward"] else False})
        if fsdp_forward_prefetch() and per == 1:  # grouped units: FSDP's implicit prefetching only
            for block, nxt in zip(units, units[1:]):
                block.set_modules_to_forward_prefetch([nxt])
        return model

    def prepare_teacher(self, teacher: nn.Module, param_dtype: torch.dtype | None = None) -> nn.Module:
        """Make the frozen teacher the same on every rank (once): sharded like the student when
        FSDP and ``LTE_FSDP_SHARD_TEACHER=1``, else a full replica holding rank 0's weights."""
        if self.acc is None or getattr(teacher, "_lte_prepared", False):
            return teacher
        if self.fsdp and fsdp_shard_teacher():
            self.shard(teacher, param_dtype)
        else:
            broadcast_from_main(teacher)
        teacher._lte_prepared = True
        return teacher

    @property
    def is_main(self) -> bool:
        """Whether this process writes logs and checkpoints."""
        return self.rank == 0

    @property
    def device(self) -> torch.device | None:
        """The device accelerate assigned to this process (None when single-process)."""
        return None if self.acc is None else self.acc.device

    def wrap(self, model: nn.Module) -> nn.Module:
        """The model to run forward/backward through: DDP-wrapped when distributed (FSDP models
        are sharded in place by ``shard`` and returned as they are)."""
        if self.acc is None or self.fsdp:
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

    def slice_batch(self, idx: torch.Tensor) -> torch.Tensor:
        """This process's contiguous slice of a global batch of indices."""
        if self.world == 1:
            return idx
        per = idx.numel() // self.world
        return idx[self.rank * per:(self.rank + 1) * per]

