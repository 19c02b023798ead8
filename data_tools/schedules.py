"""How often BASH puts the model's own token in the training context, as a function of the step.

`p(step)` is the probability that a response position of the global batch `step` gets the
model's token instead of the ground truth (see interleave.py). It is a pure function of the step,
so every rank, micro-batch and resumed run agrees on it without any state.

Every schedule gives p = 0 (plain SFT) for the first `warmup_steps` batches; with i = step -
warmup_steps after that:

- constant:        p = p_max
- linear:          p = p_max * min(1, i / ramp_steps), from 0 up to p_max over `ramp_steps`
- inverse_sigmoid: p = p_max * (1 - eps), eps = k / (k + exp(i / k)) (Bengio et al., 2015)
- exponential:     p = p_max * (1 - eps), eps = decay ** i (Bengio et al., 2015)

eps is Bengio et al.'s probability of the ground truth; here it only shapes the rise of p.
`inverse_sigmoid` does not start at 0: eps(0) = k / (k + 1), so p jumps to p_max / (k + 1) at
the end of the warmup (small for the usual k of tens to thousands), then rises along a sigmoid
centred at i = k ln k. `exponential` starts at 0 and reaches p_max * (1 - 1/e) after
1 / -ln(decay) steps.

p_max defaults to 0.5: beyond that most of the context would be the model's, and the targets,
which stay the ground truth, would often no longer follow from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SCHEDULE_KINDS = ("constant", "linear", "inverse_sigmoid", "exponential")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class SamplingSchedule:
    """The probability p(step) of the model's token at a response position; see the module doc.

    Only the fields of the chosen `kind` are used (`ramp_steps` by linear, `k` by inverse_sigmoid,
    `decay` by exponential); all are checked, so that a typo fails even where it has no effect.
    """

    kind: str
    p_max: float = 0.5
    warmup_steps: int = 0
    ramp_steps: int = 1000
    k: float = 100.0
    decay: float = 0.999

    @classmethod
    def from_args(cls, args) -> SamplingSchedule:
        """The schedule a run's `ss_*` options (train/args.py) describe."""
        return cls(
            args.ss_schedule,
            args.ss_p_max,
            args.ss_warmup_steps,
            args.ss_ramp_steps,
            args.ss_k,
            args.ss_decay,
        )

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULE_KINDS:
            raise ValueError(f"schedule kind must be one of {SCHEDULE_KINDS}, got {self.kind!r}")
        if not _is_number(self.p_max) or not 0 <= self.p_max <= 1:
            raise ValueError(f"p_max must be a number in [0, 1], got {self.p_max!r}")
        if not _is_int(self.warmup_steps) or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an integer >= 0, got {self.warmup_steps!r}")
        if not _is_int(self.ramp_steps) or self.ramp_steps < 1:
            raise ValueError(
                f"ramp_steps must be an integer >= 1 (use kind 'constant' for a step to p_max), "
                f"got {self.ramp_steps!r}"
            )
        if not _is_number(self.k) or self.k < 1:
            # Bengio et al. require k >= 1, so that the sigmoid starts with eps >= 1/2.
            raise ValueError(f"k must be a number >= 1, got {self.k!r}")
        if not _is_number(self.decay) or not 0 < self.decay < 1:
            raise ValueError(f"decay must be a number in (0, 1), got {self.decay!r}")

    def p(self, step: int) -> float:
        """The probability of the model's token at a response position of global batch `step`."""
        if not _is_int(step) or step < 0:
            raise ValueError(f"step must be an integer >= 0, got {step!r}")
        if step < self.warmup_steps:
            return 0.0
        i = step - self.warmup_steps
        if self.kind == "constant":
            return float(self.p_max)
        if self.kind == "linear":
            return self.p_max * min(1.0, i / self.ramp_steps)
        if self.kind == "inverse_sigmoid":
            # k / (k + e^(i/k)) = 1 / (1 + e^z) with z = i/k - ln k, written so that e^z cannot
            # overflow for large i.
            z = i / self.k - math.log(self.k)
            eps = math.exp(-z) / (1 + math.exp(-z)) if z > 0 else 1 / (1 + math.exp(z))
        else:
            eps = self.decay**i
        return self.p_max * (1 - eps)
