"""The simulated-CDN scenarios and the fault rules that make ``faultserver/server.py`` play them.

A scenario is a server profile: a per-connection cap, an optional total link cap, a
time-to-first-byte, and at most one kind of heterogeneity (a slow lane, a stalled lane or a
few seeded random resets). The server applies only the first matching rule to a request, so
every lane is its own ``times: 1`` rule, in request order, ahead of one catch-all rule.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

CONN_BPS = 20 * MiB  # what one connection gets from the CDN
SLOW_BPS = 2 * MiB  # the one slow lane
LINK_BPS = 160 * MiB  # the shared link in the `cdn-link` case (8 lanes' worth)
TTFB = 0.05  # seconds before the status line, per request
STALL_AT = 0.05  # the stalled lane goes silent after this fraction of its part
STALL_HOLD = 3600.0  # "forever": the server gives up when the client hangs up
RESET_SHARE = 0.25  # share of the first-wave requests that get reset
SEED = 20240601


@dataclass(frozen=True)
class Scenario:
    """One server profile. ``None`` caps mean "as fast as loopback goes"."""

    name: str
    title: str
    conn_bps: float | None = None
    link_bps: float | None = None
    ttfb: float = 0.0
    #: None, "slow", "stall" or "resets": what the heterogeneous lanes do.
    lanes: str | None = None
    #: Run only at part counts >= connections: heterogeneity matters once every lane is busy.
    wide_only: bool = False
    #: The scenario this one's wall time is compared with, at the same part count.
    reference: str | None = None

    @property
    def shaped(self) -> bool:
        return self.conn_bps is not None or self.ttfb > 0 or self.lanes is not None

    def ideal_bps(self, connections: int) -> float | None:
        """The best aggregate rate the profile allows a client with this many connections.

        Connections, not parts: with work stealing, idle connections split the parts of
        busy ones, so even ``--parts 1`` may use them all (None: unbounded).
        """
        caps = []
        if self.conn_bps is not None:
            caps.append(connections * self.conn_bps)
        if self.link_bps is not None:
            caps.append(self.link_bps)
        return min(caps) if caps else None

    def part_counts(self, sweep: list[int], connections: int) -> list[int]:
        if not self.wide_only:
            return sweep
        wide = [p for p in sweep if p >= connections]
        return wide or [max(sweep)]


_CDN: dict[str, Any] = {"conn_bps": CONN_BPS, "ttfb": TTFB}
SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("cdn", "CDN: 20 MiB/s per connection, 50 ms TTFB", **_CDN),
        Scenario(
            "cdn-slow-lane",
            "CDN, one connection at 2 MiB/s",
            lanes="slow",
            wide_only=True,
            reference="cdn",
            **_CDN,
        ),
        Scenario(
            "cdn-stall",
            "CDN, one connection stalls forever after 5 % of its part",
            lanes="stall",
            wide_only=True,
            reference="cdn",
            **_CDN,
        ),
        Scenario(
            "cdn-resets",
            "CDN, 1 in 4 first-wave requests reset at a random byte",
            lanes="resets",
            wide_only=True,
            reference="cdn",
            **_CDN,
        ),
        Scenario(
            "cdn-link",
            "CDN behind a 160 MiB/s link shared by all connections",
            link_bps=LINK_BPS,
            wide_only=True,
            **_CDN,
        ),
        Scenario("loopback", "loopback, no cap"),
    )
}
DEFAULT_SCENARIOS = list(SCENARIOS)


def rules(
    scenario: Scenario, path: str, part_size: int, requests: int, *, probe: bool
) -> list[dict[str, Any]]:
    """Fault rules for one run.

    ``requests`` is how many data requests the client sends in its first wave (one per part
    for blobdl); ``probe`` says the client sends one probe request before them, which gets the
    TTFB but no lane of its own.
    """
    if not scenario.shaped:
        return []  # plain sendfile: the fastest path the server has
    base: dict[str, Any] = {"path": path, "action": "shape"}
    if scenario.ttfb:
        base["ttfb"] = scenario.ttfb
    lane = base | ({"bps": scenario.conn_bps} if scenario.conn_bps else {})
    out = [base | {"times": 1}] if probe else []
    out += [lane | {"times": 1} | extra for extra in _lane_faults(scenario, part_size, requests)]
    out.append(lane | {"times": None})
    return out


def _lane_faults(scenario: Scenario, part_size: int, requests: int) -> list[dict[str, Any]]:
    """What each of the first requests gets on top of the plain lane ({} = nothing)."""
    if scenario.lanes == "slow":
        return [{"bps": SLOW_BPS}]
    if scenario.lanes == "stall":
        return [{"stall_after": max(1, int(part_size * STALL_AT)), "hold": STALL_HOLD}]
    if scenario.lanes == "resets":
        rng = random.Random(SEED)  # the same resets in every repeat
        hit = set(rng.sample(range(requests), max(1, round(requests * RESET_SHARE))))
        return [
            {"reset_after": rng.randrange(1, max(2, part_size))} if i in hit else {}
            for i in range(requests)
        ]
    return []
