"""``torch.compile`` of a model's transformer blocks for training (``TrainConfig.compile``).

Training a small model is bound by the host issuing kernels (BENCHMARKS.md, multi-GPU
profile: ~6,300 launches and ~2,200 autocast casts per SmolLM2 step for ~106 ms of GPU work),
so fusing each block's elementwise work (casts, norms, the LTE gate arithmetic) cuts the step
time where the GPU idles. Only each block's ``forward`` is compiled: module hooks (FSDP2's
all-gathers and reduce-scatters) stay eager around it, and the blocks of one model share their
compiled code (Dynamo treats parameters as inputs), so a 30-block model compiles once per mode.
"""

from __future__ import annotations

import torch
from torch import nn

_MIN_CACHE = 64  # recompiles allowed per code object: modes x grad on/off x eval shapes


def compile_blocks(model: nn.Module) -> int:
    """Compile the ``forward`` of each of ``model``'s transformer blocks in place (once);
    returns how many blocks are compiled."""
    from .dist import shard_units
    if getattr(model, "_lte_compiled", False):
        return len(shard_units(model))
    from torch import _dynamo
    _dynamo.config.cache_size_limit = max(_dynamo.config.cache_size_limit, _MIN_CACHE)
    blocks = shard_units(model)
    for block in blocks:
        block.forward = torch.compile(block.forward)
    model._lte_compiled = True
    return len(blocks)


def uncompile_blocks(model: nn.Module) -> None:
    """Undo :func:`compile_blocks` (blocks run their class ``forward`` again), e.g. before the
    model is copied or saved: a copy must not call the original's compiled bound methods."""
    if not getattr(model, "_lte_compiled", False):
        return
    from .dist import shard_units
    for block in shard_units(model):
        block.__dict__.pop("forward", None)
    model._lte_compiled = False
