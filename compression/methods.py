"""The registry of compression methods: what a variant's ``method:`` names, and all the pipeline knows of it.

A method is one function that compresses a part of a pipeline in place (``apply(job)``), registered with
``@register_method(...)`` beside it, with the variant settings it reads (defaults and checks), the ones a
variant must give, and how it is run and counted. What it keeps per layer is a ``LayerState``
(compression/state.py); that is how checkpoints store it and finetuning keeps it true.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from helper import Check, InputError

from .tensors import resolve_levels


@dataclass
class Job:
    """One variant's compression of one part of a pipeline, as a method sees it."""

    matcher: nn.Module  # the pipeline (detector + matching network); a method may replace it (``job.matcher = …``)
    part: str  # 'matcher' (the matching network) or 'detector'
    spec: dict[str, Any]  # the variant's settings, defaults filled in
    levels: dict[str, float] | None = None  # per-weight levels a sensitivity scan chose (the spec said 'auto')
    base_bits: int = 4  # bit width of the weights a mixed-precision choice left out
    calibrate: Callable[[nn.Module], None] | None = None  # runs a pipeline over the calibration pairs
    calibration_images: Callable[[], list[torch.Tensor]] | None = None  # those pairs' images, as the detector reads
    bits: float | None = None  # bits per weight of the result, when the method computes it (mixed precision)

    @property
    def net(self) -> nn.Module:
        return getattr(self.matcher, self.part)


@dataclass(frozen=True)
class Method:
    """A compression method as the experiment engine, finetuning and the report use it."""

    name: str
    apply: Callable[[Job], None]
    settings: dict[str, Any] = field(default_factory=dict)  # variant settings it reads, with their defaults
    checks: dict[str, Check] = field(default_factory=dict)  # what those settings accept
    needs: tuple[str, ...] = ()  # settings a variant of this method must give
    calibrated: bool = False  # reads the calibration pairs (their config is part of the variant's identity)
    final: bool = False  # moves the part into another runtime: the last step, never finetuned or compressed further
    bits: Callable[[dict[str, Any]], float] | None = None  # bits per weight it leaves, from the settings
    execution: Callable[[nn.Module], str | None] | None = None  # prepares a loaded model for timing; its label
    check: Callable[[dict[str, Any], nn.Module], None] | None = None  # a variant's settings against the dense
    # pipeline it starts from, before any work (an InputError naming the setting)


METHODS: dict[str, Method] = {}


def pattern_check(key: str) -> Callable[[dict[str, Any], nn.Module], None]:
    """A ``Method.check`` for a setting given per weight (a dict of names or glob patterns to levels, as
    ``resolve_levels`` reads it): each pattern must name a weight of the part."""

    def check(spec: dict[str, Any], matcher: nn.Module) -> None:
        if isinstance(spec.get(key), dict):
            try:
                resolve_levels(
                    getattr(matcher, spec.get("part", "matcher")), spec[key], f"variant {spec['name']}: {key}"
                )
            except ValueError as e:
                raise InputError(str(e)) from None

    return check


def register_method(name: str, **properties: Any) -> Callable[[Callable[[Job], None]], Callable[[Job], None]]:
    """Decorator: register ``apply(job)`` as the compression method ``name`` (properties: see ``Method``)."""

    def decorate(apply: Callable[[Job], None]) -> Callable[[Job], None]:
        if name in METHODS and METHODS[name].apply is not apply:
            raise ValueError(f"two compression methods are named {name!r}")
        METHODS[name] = Method(name, apply, **properties)
        return apply

    return decorate


def method(name: str) -> Method:
    """The registered method ``name`` (an InputError naming the known ones if there is none)."""
    if name not in METHODS:
        raise InputError(f"unknown method {name!r} (choose from {', '.join(METHODS)})")
    return METHODS[name]


def steps(spec: dict[str, Any]) -> list[Method]:
    """The methods of a variant's ``method:`` ('fine-grained+kmeans' is two steps, applied in order)."""
    return [method(s) for s in spec["method"].split("+")]


def variant_settings() -> tuple[dict[str, Any], dict[str, Check]]:
    """(defaults, checks) of every setting some registered method reads."""
    settings: dict[str, Any] = {}
    checks: dict[str, Check] = {}
    for m in METHODS.values():
        settings.update(m.settings)
        checks.update(m.checks)
    return settings, checks


def variant_bits(spec: dict[str, Any]) -> float | str:
    """Bits per weight as configured: the last step that sets them ('auto' until a scan chooses), else 32."""
    bits: float | str = 32.0
    for m in steps(spec):
        if m.bits is not None:
            bits = m.bits(spec)
    return bits if bits == "auto" else float(bits)


def execution(model: nn.Module, spec: dict[str, Any] | None) -> str:
    """How a loaded variant runs when profiled (a method may first strip what only simulates it)."""
    if spec is None:
        return "fp32"
    label = "fp32 kernels, decoded weights"
    for m in steps(spec):
        found = m.execution(model) if m.execution is not None else None
        label = found or label
    return label
