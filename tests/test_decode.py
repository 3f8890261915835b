"""lte.decode's greedy loop equals greedy decoding by full forward passes, for dense and LTE
models of every family, eager and compiled, and reuses its cache across calls."""

from __future__ import annotations

import pytest
import torch
from conftest import FAMILIES

import lte
from lte.decode import GreedyDecoder, greedy_decode


def _full_forward_greedy(model, ids: torch.Tensor, n: int) -> torch.Tensor:
    """The definition: each next token from a forward over the whole sequence, no cache."""
    seq = ids.clone()
    with torch.no_grad():
        for _ in range(n):
            nxt = model(seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
    return seq


def _prompt(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 96, (1, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "lte-hard"])
def test_greedy_decoder_equals_full_forward(family, sparse):
    model = FAMILIES[family]()
    if sparse:
        model = lte.sparsify(model, lte.LTEConfig(expert_size=16), progress=False)
        lte.set_mode(model, "hard")
        model.eval()
    dec = GreedyDecoder(model, max_len=24, compile_mode=None)
    for n_prompt in (10, 6):  # the second call reuses (and must reset) the static cache
        ids = _prompt(n_prompt, seed=n_prompt)
        steps, calls = [], []
        step = dec.step
        dec.step = lambda *a, step=step, steps=steps: steps.append(1) or step(*a)
        out = dec.generate(ids, 12, on_prefill=lambda calls=calls, steps=steps: calls.append(len(steps)))
        dec.step = step
        assert torch.equal(out, _full_forward_greedy(model, ids, 12))
        assert calls == [0] and len(steps) == 11  # called once, after the prefill, before any decode step


def test_compiled_greedy_step_matches_eager():
    model = lte.sparsify(FAMILIES["llama"](), lte.LTEConfig(expert_size=16), progress=False)
    lte.set_mode(model, "hard")
    model.eval()
    ids = _prompt(7)
    assert torch.equal(greedy_decode(model, ids, 9, compile_mode="default"), _full_forward_greedy(model, ids, 9))


def test_greedy_decoder_rejects_what_it_cannot_do():
    dec = GreedyDecoder(FAMILIES["llama"](), max_len=12, compile_mode=None)
    with pytest.raises(ValueError, match="one sequence"):
        dec.generate(torch.zeros(2, 4, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="must fit the cache"):
        dec.generate(_prompt(8), 5)
    with pytest.raises(ValueError, match="new_tokens must be >= 1"):
        dec.generate(_prompt(4), 0)
