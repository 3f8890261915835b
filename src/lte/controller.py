"""Target-sparsity control: a feedback controller on the efficiency weight eta.

The paper has no sparsity target: eta is swept and sparsity is whatever comes out (and,
with the separability loss on, eta acts as a switch rather than a knob; spec section 10).
Here the target is approached along a ramp (``ramp_fraction`` of stage 1, from 0 to the
target), and eta follows an integral controller in log space,
``log eta += gain * (target(t) - measured)`` per step, on an exponential moving average of
the measured hard sparsity of the training batches, plus a proportional term
``kp * (target(t) - measured)`` so that an overshoot is answered at once rather than only
after the integral has unwound. The separability weight is held at 0
during the ramp (so routers can cross the threshold freely) and then ramped up to its
configured value over the next half of what remains of stage 1, which separates the
scores while the controller holds the sparsity. The rise starts only once the measured
sparsity is within 0.05 of the target (or at 80% of stage 1 at the latest): separating
scores before the target is reached locks routers in place (spec section 10).

Two loops act on the same error. The slow one is eta (above): it shapes *which* experts
the routers learn to drop, and lets layers differ. The fast one shifts every router bias
by ``bias_gain * (measured - target(t))`` after each step: sparsity is monotone in a common
bias, so this loop settles where eta alone overshoots and locks in (with Adam, routers move
a learning rate per step whatever eta is, and once scores are far from the threshold the
task gradient that should pull them back is tiny). The shift is a plain change of the
router bias, so the saved model still selects experts with ``score > threshold``. With
per-layer targets (``layer_offsets``: ``target + offset_l``, offsets of mean 0) the fast loop runs
once per layer on that layer's measured sparsity, while eta still follows the mean.
"""

from __future__ import annotations

import math


class SparsityController:
    """Integral controller on log(eta) toward a ramped sparsity target (see module docstring)."""

    def __init__(self, target: float | None, total_steps: int, ramp_fraction: float = 0.5, gain: float = 0.5,
                 eta_init: float = 0.1, eta_max: float = 1e3, ema: float = 0.8, separability: float = 0.5,
                 separability_ramp: bool = True, kp: float = 2.0, bias_gain: float = 1.0,
                 layer_offsets: list[float] | None = None) -> None:
        self.target = target
        self.offsets = None if layer_offsets is None else [float(v) for v in layer_offsets]
        if self.offsets is not None and target is None:
            raise ValueError("per-layer target offsets need a target")
        self.total = max(total_steps, 1)
        self.ramp_steps = int(round(ramp_fraction * self.total))
        self.gain = gain
        self.log_eta = math.log(eta_init)  # the integral part
        self.kp = kp
        self.prop = 0.0
        self.bias_gain = bias_gain
        # accumulated shift (one per layer with per-layer targets), clamped to +-max_bias_shift (anti-windup)
        self.bias_total: float | list[float] = 0.0 if self.offsets is None else [0.0] * len(self.offsets)
        self.max_bias_shift = 3.0
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
        return min(max(math.exp(self.log_eta + self.prop), self.eta_min), self.eta_max)

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
                target is None or abs(self.ema - target) <= 0.05 or step + 1 >= int(0.8 * self.total)):
            self.sep_start = step + 1
        if target is not None:
            self.log_eta += self.gain * (target - self.ema)
            self.prop = self.kp * (target - measured)
            self.log_eta = min(max(self.log_eta, math.log(self.eta_min)), math.log(self.eta_max))
        return self.eta

    def bias_shift(self, step: int, measured: float, gain: float | None = None,
                   per_layer: list[float] | None = None) -> float | list[float]:
        """How much to add to every router bias after step ``step`` (fast loop; stage 2 passes
        a step past the ramp and its own gain). The accumulated shift is clamped. With per-layer
        targets, ``per_layer`` (each layer's measured sparsity) is needed and one shift per layer
        is returned."""
        target = self.target_at(step)
        if target is None:
            return 0.0
        g = self.bias_gain if gain is None else gain
        if self.offsets is None:
            self.bias_total, shift = self._clamped(self.bias_total, g * (measured - target))
            return shift
        if per_layer is None or len(per_layer) != len(self.offsets):
            raise ValueError(f"per-layer targets need {len(self.offsets)} measured layer sparsities")
        ramp = target / self.target  # the layers' targets ramp in together with the mean
        shifts, totals = [], []
        for total, off, m in zip(self.bias_total, self.offsets, per_layer):
            new_total, shift = self._clamped(total, g * (m - (self.target + off) * ramp))
            totals.append(new_total)
            shifts.append(shift)
        self.bias_total = totals
        return shifts

    def _clamped(self, total: float, want: float) -> tuple[float, float]:
        """``(new accumulated shift, shift applied now)`` after asking for ``want`` more."""
        new_total = min(max(total + want, -self.max_bias_shift), self.max_bias_shift)
        return new_total, new_total - total

    def state_dict(self) -> dict:
        """Everything needed to resume."""
        return {"log_eta": self.log_eta, "ema": self.ema, "sep_start": self.sep_start, "prop": self.prop,
                "bias_total": self.bias_total}

    def load_state_dict(self, d: dict) -> None:
        """Restore from ``state_dict``."""
        self.log_eta, self.ema, self.sep_start, self.prop = d["log_eta"], d["ema"], d["sep_start"], d["prop"]
        self.bias_total = d.get("bias_total", 0.0)
