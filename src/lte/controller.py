"""Target-sparsity control: a feedback controller on the efficiency weight eta.

The paper has no sparsity target: eta is swept and sparsity is whatever comes out (and,
with the separability loss on, eta acts as a switch rather than a knob; spec section 10).
Here the target is approached along a ramp (``ramp_fraction`` of stage 1, from 0 to the
target), and eta follows an integral controller in log space,
``log eta += gain * (target(t) - measured)`` per step, on an exponential moving average of
the measured hard sparsity of the training batches. The separability weight is held at 0
during the ramp (so routers can cross the threshold freely) and then ramped up to its
configured value over the next half of what remains of stage 1, which separates the
scores while the controller holds the sparsity. The rise starts only once the measured
sparsity is within 10% of the target (or at 80% of stage 1 at the latest): separating
scores before the target is reached locks routers in place (spec section 10).
"""

from __future__ import annotations

import math


class SparsityController:
    """Integral controller on log(eta) toward a ramped sparsity target (see module docstring)."""

    def __init__(self, target: float | None, total_steps: int, ramp_fraction: float = 0.5, gain: float = 0.5,
                 eta_init: float = 0.1, eta_max: float = 1e3, ema: float = 0.8, separability: float = 0.5,
                 separability_ramp: bool = True) -> None:
        self.target = target
        self.total = max(total_steps, 1)
        self.ramp_steps = int(round(ramp_fraction * self.total))
        self.gain = gain
        self.log_eta = math.log(eta_init)
        self.eta_min, self.eta_max = 1e-4, eta_max
        self.ema_decay = ema
        self.ema: float | None = None
        self.separability = separability
        self.separability_ramp = separability_ramp
        self.sep_start: int | None = None
        self.rise = max((self.total - self.ramp_steps) // 2, 1)

    @property
    def eta(self) -> float:
        """Current efficiency weight."""
        return math.exp(self.log_eta)

    def target_at(self, step: int) -> float | None:
        """The (ramped) sparsity target at stage-1 step ``step``."""
        if self.target is None:
            return None
        if self.ramp_steps == 0:
            return self.target
        return self.target * min(1.0, (step + 1) / self.ramp_steps)

    def separability_at(self, step: int) -> float:
        """Separability weight at stage-1 step ``step`` (0 during the ramp, then rising)."""
        if not self.separability_ramp:
            return self.separability
        if self.sep_start is None:
            return 0.0
        return self.separability * min(1.0, max(0.0, (step - self.sep_start) / self.rise))

    def update(self, step: int, measured: float) -> float:
        """Feed the sparsity measured at ``step``; returns the eta for the next step."""
        self.ema = measured if self.ema is None else self.ema_decay * self.ema + (1 - self.ema_decay) * measured
        target = self.target_at(step)
        if self.sep_start is None and step + 1 >= self.ramp_steps and (
                target is None or self.ema >= 0.9 * target or step + 1 >= int(0.8 * self.total)):
            self.sep_start = step + 1
        if target is not None:
            self.log_eta += self.gain * (target - self.ema)
            self.log_eta = min(max(self.log_eta, math.log(self.eta_min)), math.log(self.eta_max))
        return self.eta

    def state_dict(self) -> dict:
        """Everything needed to resume."""
        return {"log_eta": self.log_eta, "ema": self.ema, "sep_start": self.sep_start}

    def load_state_dict(self, d: dict) -> None:
        """Restore from ``state_dict``."""
        self.log_eta, self.ema, self.sep_start = d["log_eta"], d["ema"], d["sep_start"]
