"""The line through a sweep's points: cap = slope × fd limit − offset, by least squares (numpy).
A slope of 1.00 says every extra fd is one more connection; the offset is the fds a process holds."""

from __future__ import annotations

import numpy as np


def fit(points: list[dict]) -> dict:
    """cap = slope × limit − offset, by least squares; a single point gives slope 1 by assumption."""
    limits = np.array([p["fd_limit"] for p in points], dtype=float)
    caps = np.array([p["cap"] for p in points], dtype=float)
    if len(points) < 2:
        return {"slope": None, "offset": float(limits[0] - caps[0]) if len(points) else None}
    slope, intercept = np.polyfit(limits, caps, 1)
    return {"slope": round(float(slope), 4), "offset": round(float(-intercept), 2)}
