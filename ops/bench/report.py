"""One row per figure (smsq, baseline, target, ratio, verdict) and the table they print as.

A ratio is always "how far past the target": 1.0 or more is a PASS, whichever way the
target points, so a reader never has to work out whether bigger is better.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

PASS, MISS, ERROR, UNJUDGED = "PASS", "MISS", "ERROR", "-"


@dataclass
class Row:
    scenario: str
    figure: str
    unit: str
    smsq: float | None
    baseline: float | None = None
    # The target as a number, compared with `smsq` in the direction `better`.
    target: float | None = None
    better: Literal["higher", "lower"] = "higher"
    # Shown instead of the baseline's number when it was not measured (and why).
    baseline_text: str = ""
    # What the run saw that explains a MISS (printed under the table when the row misses).
    why: str = ""

    @property
    def ratio(self) -> float | None:
        if self.smsq is None or self.target is None:
            return None
        if self.better == "higher":
            return self.smsq / self.target if self.target else None
        # Nothing (or less than nothing: an urgent message in before the call returned) beats
        # any upper bound.
        return self.target / self.smsq if self.smsq > 0 else float("inf")

    @property
    def verdict(self) -> str:
        ratio = self.ratio
        if ratio is None:
            return UNJUDGED
        return PASS if ratio >= 1.0 else MISS

    @property
    def target_text(self) -> str:
        if self.target is None:
            return ""
        sign = ">=" if self.better == "higher" else "<="
        return f"{sign} {fmt(self.target)}"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio, "verdict": self.verdict}


@dataclass
class ScenarioResult:
    name: str
    rows: list[Row] = field(default_factory=list)
    # Settings and observations a reader needs to judge the figures.
    notes: list[str] = field(default_factory=list)
    # Lines printed as they are under the notes (a scenario's own table, a profile).
    details: list[str] = field(default_factory=list)
    # Measurements kept in the --json document beside the rows (per-run figures).
    data: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    elapsed_s: float = 0.0


def fmt(value: float | None) -> str:
    """A number as a person reads it: thousands separated, at most three significant decimals."""
    if value is None:
        return "n/a"
    if value == float("inf"):
        return "inf"
    if abs(value) >= 100 or float(value).is_integer():
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:,.1f}"
    return f"{value:,.2f}"


def table(results: list[ScenarioResult], judged: bool = True) -> str:
    """The results as a Markdown table (readable as plain text too), then the notes."""
    header = ["scenario", "figure", "smsq", "baseline", "target", "ratio", "verdict"]
    lines: list[list[str]] = []
    for result in results:
        if result.error is not None:
            lines.append([result.name, "did not run", "", "", "", "", ERROR])
            continue
        for row in result.rows:
            baseline = row.baseline_text or (fmt(row.baseline) if row.baseline is not None else "")
            lines.append(
                [
                    row.scenario,
                    f"{row.figure} ({row.unit})" if row.unit else row.figure,
                    fmt(row.smsq),
                    baseline,
                    row.target_text,
                    fmt(row.ratio) if row.ratio is not None else "",
                    row.verdict if judged else UNJUDGED,
                ]
            )
    out = grid(header, lines)
    misses = [row for r in results if r.error is None for row in r.rows if row.verdict == MISS]
    if judged and misses:
        out.append("\nwhy each MISS missed:")
        out += [
            f"- {row.scenario}, {row.figure}: {row.why or 'no explanation recorded'}"
            for row in misses
        ]
    for result in results:
        if result.error is not None:
            out.append(f"\n{result.name}: ERROR: {result.error}")
        elif result.notes or result.details:
            out.append(f"\n{result.name} ({result.elapsed_s:.0f} s):")
            out += [f"- {note}" for note in result.notes]
            out += result.details
    return "\n".join(out)


def grid(header: list[str], lines: list[list[str]]) -> list[str]:
    """A Markdown table (readable as plain text too), as lines."""
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]

    def render(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    out = [render(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    return out + [render(line) for line in lines]
