"""One default per option: wherever two tools take an option of the same name, its default is
the same (the component that reads it owns it; the others refer to it)."""

from __future__ import annotations

import dataclasses
import importlib
from collections import defaultdict

from methods.dpo import DPO
from methods.scheduled_sampling import SamplingSchedule
from tests.models import REPO
from tests.test_layering import BELOW

# Options spelled with a prefix where several components meet: the pipeline's rac_variant is
# the correction builder's variant, train's ss_p_max the schedule's p_max, dpo_beta DPO's beta.
PREFIXES = {"rac_", "ss_", "dpo_"}
ALIASES = {"ss_schedule": "kind"}


def option_classes() -> list[type]:
    """Every dataclass of command-line options (`*Args`) in the packages, the schedule and DPO's
    options. The benchmarks are left out: their defaults are the measured protocol, not a tool's
    option."""
    classes = {SamplingSchedule, DPO}
    for package in set(BELOW) - {"bench"}:
        for path in sorted((REPO / package).glob("*.py")):
            if path.stem == "__main__":
                continue
            module = importlib.import_module(f"{package}.{path.stem}")
            classes |= {
                value
                for name, value in vars(module).items()
                if name.endswith("Args") and dataclasses.is_dataclass(value)
            }
    return sorted(classes, key=lambda c: c.__qualname__)


def canonical(name: str) -> str:
    name = ALIASES.get(name, name)
    for prefix in PREFIXES:
        name = name.removeprefix(prefix)
    return name


def test_an_option_has_one_default_everywhere() -> None:
    defaults: dict[str, dict[str, object]] = defaultdict(dict)
    for cls in option_classes():
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                defaults[canonical(f.name)][f"{cls.__module__}.{cls.__qualname__}.{f.name}"] = (
                    f.default
                )
    differing = {
        name: owners
        for name, owners in defaults.items()
        if len(set(map(repr, owners.values()))) > 1
    }
    assert not differing, "\n".join(f"{n}: {o}" for n, o in differing.items())


def test_the_classes_are_found() -> None:
    names = {c.__name__ for c in option_classes()}
    assert {
        "TrainArgs",
        "DataArgs",
        "GenerateArgs",
        "PipelineArgs",
        "SamplingSchedule",
        "DPO",
    } <= names
