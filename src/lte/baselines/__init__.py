"""The baselines LTE is compared with, behind LTE's own interface.

Each baseline is a selection rule plugged into the model's LTE FFN layers
(``LTEFFN.selector``), applied in place after (or instead of) ``lte.sparsify``, and
measured by the same code as LTE: ``lte.stats`` (neuron-level ``ffn_sparsity``),
``lte.evaluate.perplexity`` (also ``block_sparsity``: what a kernel reading whole
32-neuron blocks would skip) and ``lte.evaluate.gflops_per_token`` (predictors and
routers included).

```python
import lte
from lte import baselines as B
model = lte.sparsify(model, lte.LTEConfig())                 # or let a baseline do it
B.apply_teal(model, 0.5, calibration=[blocks[:8]])           # training-free
lte.stats(model)                                             # after a forward
B.remove(model)                                              # back to plain LTE layers
```

- :mod:`.teal`: TEAL, input magnitude thresholds (FFN only, or ``attention=True``).
- :mod:`.cats`: CATS, threshold on ``|act(gate(x))|`` (+ fine-tune via :func:`adapt`).
- :mod:`.dejavu`: Deja Vu, low-rank predictors trained after the fact; top-k neurons or blocks.
- :mod:`.moefication`: ReLU-fy + fine-tune, k-means experts, MLP router or oracle; top-k.
- :mod:`.topk`: noisy top-k softmax routers (trained jointly), random frozen routers.
"""

from .base import (
    Selection,
    Selector,
    adapt,
    attach,
    calibrate,
    capture_ffn_inputs,
    ensure_lte,
    keep_count,
    remove,
)
from .cats import CATSSelector, apply_cats, recalibrate
from .dejavu import DejaVuSelector, LowRankPredictor, apply_dejavu, train_predictors
from .moefication import MoERouter, MoESelector, apply_moefication, regroup, relufy, train_routers
from .teal import TEALLinear, TEALSelector, apply_teal
from .topk import NoisyTopKSelector, RandomRouterSelector, apply_noisy_topk, apply_random_router

__all__ = [
    "Selection", "Selector", "adapt", "attach", "calibrate", "capture_ffn_inputs", "ensure_lte", "keep_count",
    "remove", "CATSSelector", "apply_cats", "recalibrate", "DejaVuSelector", "LowRankPredictor", "apply_dejavu",
    "train_predictors", "MoERouter", "MoESelector", "apply_moefication", "regroup", "relufy", "train_routers",
    "TEALLinear", "TEALSelector", "apply_teal", "NoisyTopKSelector", "RandomRouterSelector", "apply_noisy_topk",
    "apply_random_router",
]
