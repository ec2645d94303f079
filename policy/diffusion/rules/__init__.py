"""The registry of update rules: one module per rule in this package, each defining ``RULE``.

Every module here whose name does not start with ``_`` is imported and its ``RULE`` (an `UpdateRule`)
registered under ``RULE.kind``; `SAMPLER_KINDS` and the `StepTable` columns derive from the registry, so
adding a rule is adding one module. Torch-free at import time (the rule modules only annotate tensors),
so `parapolicy.policy.config` can read `SAMPLER_KINDS` without loading torch (`tests/test_layout.py`).
"""

from __future__ import annotations

import importlib
import pkgutil

from parapolicy.policy.diffusion.rules._base import Coef, Levels, RuleCoefficients, UpdateRule

__all__ = [
    "RULES",
    "SAMPLER_KINDS",
    "Coef",
    "Levels",
    "RuleCoefficients",
    "UpdateRule",
    "get_rule",
    "register_rule",
]

RULES: dict[str, UpdateRule] = {}
"""kind -> rule: the modules of this package by module name, then any rule registered later."""


def register_rule(rule: UpdateRule) -> UpdateRule:
    """Add ``rule`` to the registry (a kind may be registered once); returns it."""
    if not isinstance(rule, UpdateRule):
        raise TypeError(f"expected an UpdateRule, got {type(rule).__name__}")
    if rule.kind in RULES and RULES[rule.kind] is not rule:
        raise ValueError(f"update rule {rule.kind!r} is already registered")
    RULES[rule.kind] = rule
    return rule


def get_rule(kind: str) -> UpdateRule:
    """The registered rule named ``kind``; a clear ValueError names the known kinds otherwise."""
    rule = RULES.get(kind)
    if rule is None:
        raise ValueError(f"unknown sampler kind {kind!r}; registered: {tuple(RULES)}")
    return rule


def _discover() -> None:
    for name in sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")):
        register_rule(importlib.import_module(f"{__name__}.{name}").RULE)


_discover()

SAMPLER_KINDS: tuple[str, ...] = tuple(RULES)
"""The kinds of the rule modules shipped in this package (a rule registered later is not listed)."""
