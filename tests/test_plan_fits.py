"""`harness.plan.fits`: the sweep's line, cap = slope × fd limit − offset."""

from __future__ import annotations

import pytest

from harness.core.fits import fit


def test_a_cap_of_limit_minus_held_fds_fits_slope_one():
    points = [{"fd_limit": limit, "cap": limit - 10} for limit in (256, 512, 1024)]
    assert fit(points) == {"slope": 1.0, "offset": 10.0}


def test_a_single_point_gives_its_offset_and_no_slope():
    assert fit([{"fd_limit": 256, "cap": 239}]) == {"slope": None, "offset": 17.0}


def test_a_cap_that_does_not_follow_the_limit_shows_in_the_slope():
    points = [{"fd_limit": 256, "cap": 246}, {"fd_limit": 1024, "cap": 1015}, {"fd_limit": 2048, "cap": 1015}]
    assert fit(points)["slope"] == pytest.approx(0.42, abs=0.05)
