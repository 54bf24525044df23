"""The result types shared by health checks and next-step rules (docs/model.md §8)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"
_RANK = {PASS: 0, WARN: 1, FAIL: 2}


@dataclass(frozen=True)
class Check:
    """One health check: its verdict, a one-line ``detail`` with the observed values that
    decided it, those values (``observed``) for run_report.json, and a short ``reason``
    for the Health status line (defaults to ``detail``)."""

    name: str
    verdict: str
    detail: str
    observed: dict[str, Any] = field(default_factory=dict)
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "verdict": self.verdict,
            "detail": self.detail,
            "observed": self.observed,
            "reason": self.reason or self.detail,
        }


@dataclass(frozen=True)
class NextStep:
    """A fired next-step rule: the metric values that fired it and a concrete action."""

    rule: str
    message: str
    values: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "message": self.message, "values": self.values}


def worst(verdicts: list[str]) -> str:
    """FAIL if any FAIL, else WARN if any WARN, else PASS (also for no verdicts)."""
    return max(verdicts, key=_RANK.__getitem__, default=PASS)


def overall_status(checks: list[Check]) -> tuple[str, list[str]]:
    """The Health status line: the worst verdict, and a reason per FAIL then per WARN.

    The ``complete`` check's reason reads as the seed's ``incomplete run`` plus why the
    run stopped; the others read ``<check>: <detail>``.
    """
    status = worst([c.verdict for c in checks])
    reasons: list[str] = []
    for level in (FAIL, WARN):
        for c in checks:
            if c.verdict != level:
                continue
            prefix = "" if c.name == "complete" else f"{c.name}{' WARN' if level == WARN else ''}: "
            reasons.append(prefix + (c.reason or c.detail))
    return status, reasons
