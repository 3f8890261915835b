"""Configuration dataclasses: what LTE does to a model (LTEConfig) and how it trains (TrainConfig).

Both validate on construction and round-trip through plain dicts (saved as JSON beside the
weights), so a bad value fails at once with a one-line message instead of deep in training.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field
from typing import Any

GROUPINGS = ("kmeans", "random", "coactivation")
ROUTER_INITS = ("random", "calibrated", "gate")
ROUTER_FORMS = ("linear", "folded")
EFFICIENCY_LOSSES = ("mean", "square")
MODES = ("dense", "soft", "hard")


class ConfigError(ValueError):
    """A configuration value is out of range or of the wrong kind."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


class _DictMixin:
    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (JSON-serialisable)."""
        return asdict(self)  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        """Build from a dict, rejecting unknown keys with the list of valid ones."""
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} field(s) {sorted(unknown)}; valid: {sorted(names)}")
        return cls(**d)


@dataclass
class LTEConfig(_DictMixin):
    """How a model is made sparse.

    Choices the paper leaves open are fields here, with the default we chose documented:
    - ``efficiency_loss``: "mean" (mean sigmoid score, the paper's prose) or "square"
      (mean squared score, the paper's typeset Eq. 4). Default "mean": its gradient does not
      vanish as scores approach 0, so it keeps pushing unneeded experts off.
    - ``separability_eps``: Eq. 5 is ``1/(G-tau)^2``, unbounded at tau; we use
      ``1/((G-tau)^2 + eps)``.
    - ``router_bias_init``: routers start with this bias so that training begins with
      (almost) every expert on (sigmoid(3) = 0.95) instead of exactly at the threshold,
      where the separability loss is infinite and half the FFN would be cut at once.
    - ``router_init``: "random" (default: weights of std ``router_init_std / sqrt(d)``) or
      "calibrated" (each router starts as a ridge fit of its experts' importance on
      calibration data, logits of spread ``router_init_std`` across experts, see
      ``lte.router_init``; ``sparsify`` then needs ``calibration``), or "gate" (experts of
      one neuron only: each router starts as its neuron's own gate pre-activation, rescaled
      the same way, so lowering the biases switches neurons off in CATS's order; also needs
      ``calibration``).
    - ``router_form``: "linear" (default: ``sigmoid(x W^T + b)``, the paper's router) or
      "folded" (``sigmoid(|x W^T + c| + b)``: selects on both sides of a fold point, as CATS
      does around the activation's zero; see ``lte.router``).
    - ``router_init_std``: std of the random router weight init (scaled by 1/sqrt(d)), or the
      spread of the calibrated logits.
    - ``remainder``: when the FFN width is not a multiple of ``expert_size``: "error"
      (default) or "last" (the last expert is smaller; it is padded with zero neurons so
      blocks stay aligned).
    """

    expert_size: int = 32
    grouping: str = "kmeans"
    threshold: float = 0.5
    efficiency_weight: float = 0.0
    separability_weight: float = 0.5
    efficiency_loss: str = "mean"
    separability_eps: float = 1e-2
    router_bias_init: float = 3.0
    router_init: str = "random"
    router_form: str = "linear"
    router_init_std: float = 1.0
    remainder: str = "error"
    kmeans_iters: int = 30
    seed: int = 0

    def __post_init__(self) -> None:
        _check(isinstance(self.expert_size, int) and self.expert_size >= 1,
               f"expert_size must be a positive integer, got {self.expert_size!r}")
        _check(self.grouping in GROUPINGS, f"grouping must be one of {GROUPINGS}, got {self.grouping!r}")
        _check(0.0 < self.threshold < 1.0, f"threshold must be in (0, 1), got {self.threshold}")
        _check(self.efficiency_weight >= 0, f"efficiency_weight must be >= 0, got {self.efficiency_weight}")
        _check(self.separability_weight >= 0,
               f"separability_weight must be >= 0, got {self.separability_weight}")
        _check(self.efficiency_loss in EFFICIENCY_LOSSES,
               f"efficiency_loss must be one of {EFFICIENCY_LOSSES}, got {self.efficiency_loss!r}")
        _check(self.separability_eps > 0, f"separability_eps must be > 0, got {self.separability_eps}")
        _check(math.isfinite(self.router_bias_init), "router_bias_init must be finite")
        _check(self.router_init in ROUTER_INITS,
               f"router_init must be one of {ROUTER_INITS}, got {self.router_init!r}")
        _check(self.router_form in ROUTER_FORMS,
               f"router_form must be one of {ROUTER_FORMS}, got {self.router_form!r}")
        _check(self.router_init_std >= 0, f"router_init_std must be >= 0, got {self.router_init_std}")
        _check(self.router_init != "gate" or self.expert_size == 1,
               f"router_init='gate' needs expert_size=1 (a router per neuron), got expert_size={self.expert_size}")
        _check(self.remainder in ("error", "last"), f"remainder must be 'error' or 'last', got {self.remainder!r}")
        _check(self.kmeans_iters >= 1, f"kmeans_iters must be >= 1, got {self.kmeans_iters}")

    @property
    def logit_threshold(self) -> float:
        """``sigmoid(z) > threshold`` <=> ``z > logit(threshold)``."""
        return math.log(self.threshold / (1.0 - self.threshold))


@dataclass
class TrainConfig(_DictMixin):
    """How the two LTE stages train.

    Stage lengths are in optimizer steps. Router biases get their own, larger learning rate
    (``router_bias_lr``): with Adam a parameter moves about one learning rate per step, and
    a bias that starts "on" must be able to cross the threshold within stage 1.
    ``stage1_gate``: "ste" (default) gates stage 1 with the hard mask and a straight-through
    gradient; "scale" is the paper's soft scaling (see ``lte.ffn``). Measured on SmolLM2 +
    WikiText-2 (benchmarks/SMOLLM2_NOTES.md), scaling trained a model whose hard version was
    far worse than its soft one. ``stage2_bias_gain``: with a target, the router-bias loop
    keeps running in stage 2 at this gain (router weights stay frozen), because the routers'
    inputs drift as the model adapts (at gain 0.2 LTE ended 1-3 points under its target on
    the GPU frontier runs; 1.0 held it within 0.01, BENCHMARKS.md). ``target_sparsity`` (if set) replaces the fixed
    efficiency weight by a feedback controller on it (see ``lte.controller``); the target
    is approached gradually (``ramp_fraction`` of stage 1) because switching half the
    blocks off at once is what section 10 of the spec saw fail. ``layer_target_offsets``: per-layer
    targets ``target_sparsity + offset`` (offsets centred, so the mean target is unchanged), held by
    one router-bias loop per layer; a list with one offset per LTE layer, or ``"linear:A"``
    (offsets from -A at the first layer to +A at the last; see :func:`layer_offsets`). ``compile``: ``torch.compile``
    each transformer block (student and teacher) for the run (``lte.compiling``): fewer kernel
    launches where training is host-bound.
    """

    stage1_steps: int = 200
    stage2_steps: int = 100
    lr: float = 5e-5
    router_lr: float = 1e-2  # 1e-2 beat 2e-3 on SmolLM2 (BENCHMARKS.md ablations); the CLI default too
    router_bias_lr: float = 5e-2
    stage1_gate: str = "ste"
    stage2_bias_gain: float = 1.0  # 0.2 until 2026-11-28: it let stage 2 drift 1-3 points under the target
    weight_decay: float = 0.0
    warmup_ratio: float = 0.06
    schedule: str = "cosine"
    grad_clip: float = 1.0
    batch_size: int = 8
    grad_accum: int = 1
    seq_len: int = 512
    distill_weight: float = 0.0
    distill_temperature: float = 1.0
    target_sparsity: float | None = None
    layer_target_offsets: list[float] | str | None = None
    ramp_fraction: float = 0.5
    controller_gain: float = 0.5
    bias_control_gain: float = 1.0
    eta_init: float = 0.5
    eta_max: float = 1e3
    separability_ramp: bool = True
    mixed_precision: str = "auto"
    gradient_checkpointing: bool = False
    compile: bool = False
    eval_every: int = 50
    eval_batches: int = 16
    save_every: int = 100
    log_every: int = 10
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("stage1_steps", "stage2_steps"):
            _check(isinstance(getattr(self, name), int) and getattr(self, name) >= 0,
                   f"{name} must be an integer >= 0, got {getattr(self, name)!r}")
        for name in ("batch_size", "grad_accum", "seq_len", "eval_every", "save_every", "log_every",
                     "eval_batches"):
            _check(isinstance(getattr(self, name), int) and getattr(self, name) >= 1,
                   f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        _check(self.lr > 0 and self.router_lr > 0 and self.router_bias_lr > 0, "learning rates must be > 0")
        _check(self.weight_decay >= 0, "weight_decay must be >= 0")
        _check(0 <= self.warmup_ratio < 1, f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        _check(self.schedule in ("cosine", "linear", "constant"),
               f"schedule must be cosine, linear or constant, got {self.schedule!r}")
        _check(self.grad_clip >= 0, "grad_clip must be >= 0 (0 disables clipping)")
        _check(0 <= self.distill_weight <= 1, f"distill_weight must be in [0, 1], got {self.distill_weight}")
        _check(self.distill_temperature > 0, "distill_temperature must be > 0")
        if self.target_sparsity is not None:
            _check(0 < self.target_sparsity < 1, f"target_sparsity must be in (0, 1), got {self.target_sparsity}")
        _check(0 <= self.ramp_fraction <= 1, f"ramp_fraction must be in [0, 1], got {self.ramp_fraction}")
        if self.layer_target_offsets is not None:
            _check(self.target_sparsity is not None, "layer_target_offsets needs target_sparsity")
            if not isinstance(self.layer_target_offsets, str):
                self.layer_target_offsets = [float(v) for v in self.layer_target_offsets]
            check_layer_offsets(self.layer_target_offsets)  # the layer count comes with the model
        _check(self.controller_gain > 0, "controller_gain must be > 0")
        _check(self.bias_control_gain >= 0, "bias_control_gain must be >= 0 (0 disables the bias loop)")
        _check(self.stage2_bias_gain >= 0, "stage2_bias_gain must be >= 0")
        _check(self.stage1_gate in ("scale", "ste"), f"stage1_gate must be 'scale' or 'ste', got {self.stage1_gate!r}")
        _check(self.eta_init > 0 and self.eta_max >= self.eta_init, "need 0 < eta_init <= eta_max")
        _check(self.mixed_precision in ("auto", "no", "bf16", "fp16"),
               f"mixed_precision must be auto, no, bf16 or fp16, got {self.mixed_precision!r}")


def layer_offsets(spec: list[float] | str, n_layers: int, target: float | None = None) -> list[float]:
    """Per-layer target offsets, centred to mean 0, from a list (one per layer) or ``"linear:A"``
    (-A at the first layer rising evenly to +A at the last). With ``target``, checks that every
    layer's target ``target + offset`` lies in (0, 1)."""
    if isinstance(spec, str):
        kind, _, amp = spec.partition(":")
        try:
            a = float(amp)
        except ValueError:
            a = math.nan
        _check(kind == "linear" and math.isfinite(a),
               f"layer target offsets must be a list of numbers or 'linear:A', got {spec!r}")
        vals = [a * (2 * i / (n_layers - 1) - 1) if n_layers > 1 else 0.0 for i in range(n_layers)]
    else:
        vals = [float(v) for v in spec]
        _check(len(vals) == n_layers, f"layer_target_offsets has {len(vals)} values for {n_layers} LTE layers")
        _check(all(math.isfinite(v) for v in vals), "layer_target_offsets must be finite")
    mean = sum(vals) / len(vals)
    vals = [v - mean for v in vals]
    if target is not None:
        bad = [i for i, v in enumerate(vals) if not 0 < target + v < 1]
        _check(not bad, f"layer targets {target:g} + offset leave (0, 1) at layer(s) {bad}: use smaller offsets")
    return vals


def check_layer_offsets(spec: list[float] | str, target: float | None = None) -> None:
    """Check offsets before the model (and so the layer count) is known: a list as given, and
    ``"linear:A"`` at its extremes (-A, +A), the values any layer count reaches."""
    layer_offsets(spec, len(spec) if isinstance(spec, list) else 2, target)
