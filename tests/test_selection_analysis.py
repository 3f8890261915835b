"""``benchmarks/cats_selection_analysis.py``: the kept-share comparison of per-neuron rules."""

import sys
from pathlib import Path

import torch
from conftest import FAMILIES

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import cats_selection_analysis as csa  # noqa: E402


def test_no_rule_keeps_more_than_the_oracle(family):
    blocks = torch.randint(0, 96, (2, 32), generator=torch.Generator().manual_seed(0))
    res = csa.analyse(FAMILIES[family](), blocks)
    assert set(res) == {str(s) for s in csa.SPARSITIES}
    for s, r in res.items():
        for rule in ("cats", "gate_linear", "gate_folded"):
            assert 0.0 < r[rule] <= r["oracle"] + 1e-6, (s, rule, r)
        assert 0.0 <= r["cats_negative_share"] <= 1.0
    # keeping more neurons keeps more of the FFN
    assert res["0.5"]["oracle"] > res["0.75"]["oracle"] > res["0.9"]["oracle"]
