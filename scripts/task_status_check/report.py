"""The report: what each check found, kept apart from how it was found, so that the text
tables and the JSON document (which tests and clients read) come from the same items."""

from __future__ import annotations

import textwrap
from dataclasses import asdict, dataclass, field
from typing import Any

PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"


@dataclass
class Item:
    item: str
    status: str
    result: str = ""
    target: str = ""
    reason: str = ""


@dataclass
class Group:
    step: int
    name: str
    items: list[Item] = field(default_factory=list)

    @property
    def title(self) -> str:
        return f"{self.step}. {self.name}"


@dataclass
class Report:
    base_url: str
    run_id: str
    started_at: str
    groups: list[Group] = field(default_factory=list)
    duration_s: float = 0.0
    interrupted: bool = False

    def counts(self) -> dict[str, int]:
        counts = {PASSED: 0, FAILED: 0, SKIPPED: 0}
        for group in self.groups:
            for item in group.items:
                counts[item.status] += 1
        return counts

    @property
    def ok(self) -> bool:
        return self.counts()[FAILED] == 0 and not self.interrupted

    def to_json(self) -> dict[str, Any]:
        return {
            "base_url": self.base_url,
            "run_id": self.run_id,
            "started_at": self.started_at,
            "duration_s": round(self.duration_s, 2),
            "passed": self.ok,
            "interrupted": self.interrupted,
            "summary": self.counts(),
            "groups": [
                {"step": g.step, "name": g.name, "items": [asdict(i) for i in g.items]}
                for g in self.groups
            ],
        }


COLUMNS = (("item", 34), ("status", 7), ("result", 56), ("target", 26))


def wrap_reason(text: str) -> list[str]:
    return textwrap.wrap(text, width=110, initial_indent="      ", subsequent_indent="        ")


def render(report: Report) -> str:
    """The report as text: a table per group (item, status, result, target), reasons for
    anything failed or skipped under its row, and a summary line."""
    out = [f"syncq task check against {report.base_url} (run {report.run_id})", ""]
    every = [[i.item, i.status.upper(), i.result, i.target] for g in report.groups for i in g.items]
    widths = [  # one set of widths for every table, so they line up
        min(cap, max([len(name), *(len(r[c]) for r in every)]))
        for c, (name, cap) in enumerate(COLUMNS)
    ]
    header = "  " + "  ".join(n.ljust(w) for (n, _), w in zip(COLUMNS, widths, strict=True))
    for group in report.groups:
        rows = [[i.item, i.status.upper(), i.result, i.target] for i in group.items]
        out.append(group.title)
        out.append(header.rstrip())
        out.append("  " + "  ".join("-" * w for w in widths))
        reasons = {i.reason for i in group.items}
        shared = len(group.items) > 1 and len(reasons) == 1 and "" not in reasons
        for item, row in zip(group.items, rows, strict=True):
            cells = [textwrap.wrap(text, w) or [""] for text, w in zip(row, widths, strict=True)]
            for n in range(max(len(c) for c in cells)):
                parts = [
                    (c[n] if n < len(c) else "").ljust(w)
                    for c, w in zip(cells, widths, strict=True)
                ]
                out.append(("  " + "  ".join(parts)).rstrip())
            if item.reason and not shared:
                out.extend(wrap_reason(f"reason: {item.reason}"))
        if shared:
            out.extend(wrap_reason(f"reason (all of them): {group.items[0].reason}"))
        out.append("")
    counts = report.counts()
    verdict = "PASSED" if report.ok else "FAILED"
    if report.interrupted:
        verdict += " (interrupted)"
    out.append(
        f"{verdict}: {counts[PASSED]} passed, {counts[FAILED]} failed, "
        f"{counts[SKIPPED]} skipped in {report.duration_s:.1f} s"
    )
    return "\n".join(out) + "\n"
