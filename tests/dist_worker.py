"""Worker for test_dist.py: trains a tiny LTE model (run directly, or under torchrun)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from conftest import tiny_llama  # noqa: E402

import lte  # noqa: E402
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
                      target_sparsity=0.4, log_every=1, eval_every=1000, save_every=3, distill_weight=0.5)
train(model, cfg, blocks, None, out, resume=resume, progress=False)
