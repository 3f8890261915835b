"""Block sparsity counts the 32-neuron blocks a block kernel can skip (``lte.ffn.KERNEL_BLOCK``),
whatever the expert size: finer experts and per-neuron methods skip fewer whole blocks."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_llama

import lte
from lte import baselines as B
from lte.evaluate import perplexity
from lte.ffn import KERNEL_BLOCK, kernel_block_active
from lte.sparsify import lte_layers

pytestmark = pytest.mark.usefixtures("one_thread")


def test_kernel_block_active_counts_touched_blocks():
    assert KERNEL_BLOCK == 32
    m = torch.zeros(2, 96, dtype=torch.bool)  # 3 blocks of 32 neurons
    m[0, 5] = True  # block 0 touched by one neuron
    m[0, 64:] = True  # block 2 fully active
    assert kernel_block_active(m).tolist() == pytest.approx([2 / 3, 0.0])
    experts = m.unflatten(-1, (12, 8)).any(-1)  # the same as 12 experts of 8 neurons
    assert kernel_block_active(experts, 8).tolist() == pytest.approx([2 / 3, 0.0])
    for unit in (32, 64):  # experts of a block or more: blocks = experts
        e = torch.tensor([[True, False, False, True]])
        assert kernel_block_active(e, unit).tolist() == pytest.approx([0.5])
    odd = torch.zeros(1, 40, dtype=torch.bool)  # 40 neurons: a full block and a partial one
    odd[0, 35] = True
    assert kernel_block_active(odd).tolist() == pytest.approx([0.5])


@pytest.mark.parametrize("expert_size,chosen,block_sparsity", [(8, [0, 4], 0.5), (8, [0, 1, 2, 3], 0.75),
                                                               (32, [1], 0.75), (4, [0, 31], 0.5)])
def test_lte_block_sparsity_with_fine_experts(expert_size, chosen, block_sparsity):
    """Routers forced to fixed experts: FFN sparsity counts experts, block sparsity 32-blocks."""
    model = tiny_llama()  # f = 128 neurons: 4 kernel blocks
    lte.sparsify(model, lte.LTEConfig(expert_size=expert_size), progress=False)
    lte.set_mode(model, "hard")
    n_exp = 128 // expert_size
    for layer in lte_layers(model):
        with torch.no_grad():
            layer.router.weight.zero_()
            layer.router.bias.fill_(-10.0)
            layer.router.bias[chosen] = 10.0
    r = perplexity(model, torch.randint(0, 96, (256,), generator=torch.Generator().manual_seed(0)), seq_len=32,
                   progress=False)
    assert r["ffn_sparsity"] == pytest.approx(1 - len(chosen) / n_exp)
    assert r["block_sparsity"] == pytest.approx(block_sparsity)


def test_block_method_on_32_experts_skips_whole_blocks():
    """A method that picks whole experts of 32 skips exactly as many kernel blocks as neurons."""
    model = tiny_llama()
    lte.sparsify(model, lte.LTEConfig(expert_size=32), progress=False)
    B.apply_random_router(model, 0.5)
    r = perplexity(model, torch.randint(0, 96, (256,), generator=torch.Generator().manual_seed(0)), seq_len=32,
                   progress=False)
    assert r["ffn_sparsity"] == pytest.approx(0.5) and r["block_sparsity"] == pytest.approx(0.5)
