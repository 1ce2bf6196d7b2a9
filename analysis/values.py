"""A measured value as the verdict table, the reports and compare show it, in its metric's unit."""

from __future__ import annotations

import math


def format_value(value: float | None, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "no data"
    if unit == "MB":
        return f"{value:.1f} MB"
    if unit == "MB/h":
        return f"{value:.1f} MB/h"
    if unit == "ms":
        return f"{value:.1f} ms" if abs(value) < 1000 else f"{value / 1000:.2f} s"
    if unit == "ratio":
        return f"{value * 100:.2f} %"
    if unit == "req/s":
        return f"{value:.1f} req/s"
    for size, suffix in ((1e9, "GB"), (1e6, "MB"), (1e3, "KB")):
        if abs(value) >= size:
            return f"{value / size:.2f} {suffix}"
    return f"{value:.0f} B"
