"""`harness.core.fits`: the sweep's line, cap = slope × fd limit − offset; and `harness.core.costs`: when the
ramp's samples are ready to predict from."""

from __future__ import annotations

import pytest

from harness.core import costs
from harness.core.fits import fit


def test_a_cap_of_limit_minus_held_fds_fits_slope_one():
    points = [{"fd_limit": limit, "cap": limit - 10} for limit in (256, 512, 1024)]
    assert fit(points) == {"slope": 1.0, "offset": 10.0}


def test_a_single_point_gives_its_offset_and_no_slope():
    assert fit([{"fd_limit": 256, "cap": 239}]) == {"slope": None, "offset": 17.0}


def test_a_cap_that_does_not_follow_the_limit_shows_in_the_slope():
    points = [{"fd_limit": 256, "cap": 246}, {"fd_limit": 1024, "cap": 1015}, {"fd_limit": 2048, "cap": 1015}]
    assert fit(points)["slope"] == pytest.approx(0.42, abs=0.05)


def _ramp(fds_per: list[float]) -> list[dict]:
    """Samples 100 connections apart whose fds grew by each of `fds_per` per connection."""
    points, fds = [], 10.0
    for i, per in enumerate(fds_per):
        fds += 100 * per
        points.append({"held": 100 * (i + 1), "fds": fds})
    return points


def test_a_prediction_waits_for_fds_per_connection_to_settle_on_a_whole_number():
    lagging = _ramp([2, 0.2, 0.3, 2.1])  # a proxy's backend sockets behind its accepts at two samples
    assert not costs.ready_to_predict(lagging, 700, costs.fit(lagging))
    starved = _ramp([0.4, 0.3, 0.35, 0.3])  # the server starved of CPU: its fds far behind the kernel's count
    assert not costs.ready_to_predict(starved, 700, costs.fit(starved))
    assert not costs.ready_to_predict(_ramp([0.4] * 20), 700, costs.fit(_ramp([0.4] * 20)))  # never, however many
    settled = _ramp([2, 2, 1.9, 2.1])
    assert costs.whole(costs.fit(settled).fds) == 2.0 and costs.ready_to_predict(settled, 700, costs.fit(settled))
    assert not costs.ready_to_predict(settled[:3], 700, costs.fit(settled[:3]))  # too few samples yet
    # it does not wait for ever: after three times the samples it needs, the slope stands as it is
    unsettled = _ramp([2, 0.2] * 6)
    assert costs.ready_to_predict(unsettled, 700, costs.fit(unsettled))
    assert costs.predict(costs.fit(settled), {"fd_room": 590}, {}, 0, 400, 1.0).caps["fd limit"] == 295
