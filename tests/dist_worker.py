"""Worker for test_dist.py: trains a tiny LTE model (run directly, or under torchrun)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from conftest import tiny_llama  # noqa: E402

import lte  # noqa: E402
from lte.dist import shutdown_distributed  # noqa: E402
from lte.train import train  # noqa: E402

out, batch, steps1, steps2, resume = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1"
torch.set_num_threads(1)
g = torch.Generator().manual_seed(0)
blocks = (torch.arange(24).repeat(32, 1) * 5 + torch.randint(0, 4, (32, 24), generator=g)) % 96
model = lte.sparsify(tiny_llama(), lte.LTEConfig(expert_size=16), progress=False)
if os.environ.get("LTE_TEST_PERTURB") == "1" and os.environ.get("RANK", "0") != "0":
    with torch.no_grad():  # a rank whose weights differ: FSDP must take rank 0's (broadcast before sharding)
        for p in model.parameters():
            p.add_(torch.randn_like(p))
cfg = lte.TrainConfig(stage1_steps=steps1, stage2_steps=steps2, batch_size=batch, seq_len=24, lr=1e-3,
                      target_sparsity=0.4, log_every=1, eval_every=1000, save_every=3, distill_weight=0.5,
                      compile=os.environ.get("LTE_TEST_COMPILE") == "1")
if os.environ.get("LTE_TEST_COUNT_COLLECTIVES") == "1":
    # record the FSDP all-gathers / reduce-scatters (and all-reduces) each training step issues
    import json

    import torch.distributed as dist

    from lte.train import Trainer
    counts, per_step = {}, []

    def counted(name):
        fn = getattr(dist, name)

        def call(*a, **k):
            counts[name] = counts.get(name, 0) + 1
            return fn(*a, **k)
        return call

    for name in ("all_gather_single", "reduce_scatter_single", "all_reduce"):
        setattr(dist, name, counted(name))
    step_fn = Trainer.train_step

    def train_step(self):
        counts.clear()
        rec = step_fn(self)
        per_step.append(dict(counts))
        return rec
    Trainer.train_step = train_step
    train(model, cfg, blocks, None, out, resume=resume, progress=False)
    if os.environ.get("RANK", "0") == "0":
        Path(out, "collectives.json").write_text(json.dumps(per_step))
else:
    train(model, cfg, blocks, None, out, resume=resume, progress=False)
shutdown_distributed()
