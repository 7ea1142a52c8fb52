"""The scenarios: nginx cases (HTTP/HTTPS, ``limit_rate``) and fault-server cases.

A scenario is a server profile: which server (a real nginx, or the scriptable fault server
``faultserver/server.py`` where a case needs scripted faults), plain HTTP or HTTPS, a per-connection
cap, an optional total link cap, a time-to-first-byte, and at most one kind of heterogeneity
(a slow lane, a lane that goes silent, or a few seeded random resets). The fault server applies
only the first matching rule to a request, so every lane is its own ``times: 1`` rule, in
request order, ahead of one catch-all rule.
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
LANE_BPS = 8 * MiB  # issue #12's silent-lane case: 16 × 8 MiB/s
SILENT_AT = 0.25  # ... and the lane goes silent after a quarter of its part
NGINX_CAP = 20 * MiB  # issue #12's capped case: nginx `limit_rate 20m`


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
    #: "fault" (tests/server.py, scriptable) or "nginx" (a real nginx the harness starts).
    server: str = "fault"
    https: bool = False
    #: A blob size of the scenario's own (issue #12's silent-lane cases); None: --size.
    size: int | None = None
    #: A stalled lane goes silent after this fraction of its part.
    stall_at: float = STALL_AT
    #: What is swept besides the focus configuration: "parts" (at the focus connection
    #: count) and/or "connections" (at as many parts as connections).
    axes: tuple[str, ...] = ("parts",)
    #: Run the baseline tools here too (not where a lane hangs: they would wait it out).
    baselines: bool = True

    @property
    def proto(self) -> str:
        return "https" if self.https else "http"

    @property
    def faults(self) -> bool:
        """Scripted faults (stalls, resets): issue #14's "no faults" goal does not apply."""
        return self.lanes in ("stall", "resets")

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

    def configs(self, parts: list[int], connections: list[int]) -> list[tuple[int, int]]:
        """blobdl's (parts, connections) pairs: the focus (widest connection count, one part
        per connection), plus the swept axes through it. Not the whole grid: with work
        stealing the part count barely matters, so it is swept at one connection count."""
        focus = max(connections)
        pairs = [(focus, focus)]
        if not self.wide_only and "parts" in self.axes:
            pairs += [(p, focus) for p in parts]
        if not self.wide_only and "connections" in self.axes:
            pairs += [(c, c) for c in connections]
        return sorted(set(pairs), key=lambda pc: (pc[1], pc[0]))


def _lane_pair(name: str, size: int) -> tuple[Scenario, Scenario]:
    """Issue #12's silent lane: plain 16 × 8 MiB/s, and the same with one lane going silent
    after 25 % of its part (blobdl's own stall timeout; no baselines: they would wait it out).
    """
    common: dict[str, Any] = {"conn_bps": LANE_BPS, "size": size, "axes": (), "baselines": False}
    label = f"{size / MiB:g} MiB, 16 × 8 MiB/s"
    return (
        Scenario(name, f"fault server, {label}", **common),
        Scenario(
            f"{name}-silent",
            f"fault server, {label}, one lane silent after 25 % of its part",
            lanes="stall",
            stall_at=SILENT_AT,
            wide_only=True,
            reference=name,
            **common,
        ),
    )


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
            baselines=False,
            **_CDN,
        ),
        Scenario(
            "cdn-resets",
            "CDN, 1 in 4 first-wave requests reset at a random byte",
            lanes="resets",
            wide_only=True,
            reference="cdn",
            baselines=False,
            **_CDN,
        ),
        Scenario(
            "cdn-link",
            "CDN behind a 160 MiB/s link shared by all connections",
            link_bps=LINK_BPS,
            wide_only=True,
            **_CDN,
        ),
        Scenario("loopback", "loopback, no cap", axes=("parts", "connections")),
        Scenario(
            "https-open",
            "nginx, HTTPS, loopback, no cap",
            server="nginx",
            https=True,
            axes=("parts", "connections"),
        ),
        Scenario(
            "http-open",
            "nginx, plain HTTP, loopback, no cap",
            server="nginx",
            axes=("connections",),
        ),
        Scenario(
            "https-capped",
            "nginx, HTTPS, limit_rate 20 MiB/s per connection",
            server="nginx",
            https=True,
            conn_bps=NGINX_CAP,
            axes=(),
        ),
        *_lane_pair("lane8", 256 * MiB),
        *_lane_pair("lane8-2g", 2 * GiB),
    )
}
DEFAULT_SCENARIOS = list(SCENARIOS)
#: The key goals in about a minute (the engine's before/after check).
QUICK_SCENARIOS = ["https-open", "https-capped", "loopback", "lane8", "lane8-silent"]


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
    if scenario.lanes in ("stall", "slow"):  # a lane's trouble, however it cuts its requests
        out.append(_lane_trouble(scenario, path, part_size))
    out += [lane | {"times": 1} | extra for extra in _lane_faults(scenario, part_size, requests)]
    out.append(lane | {"times": None})
    return out


def _lane_trouble(scenario: Scenario, path: str, part_size: int) -> dict[str, Any]:
    """A slow or silent lane, pinned to the first part's bytes and connection rather than to
    the first request: a client that asks for a part in several requests must meet it too.
    The silent lane stops at a byte offset whichever request reaches it; the slow one is its
    connection's path, slow for every later request on that connection."""
    if scenario.lanes == "slow":
        return {"path": path, "action": "slow_conn", "bps": SLOW_BPS, "times": 1}
    offset = max(1, int(part_size * scenario.stall_at))
    rule = {"path": path, "action": "stall_at", "offset": offset, "hold": STALL_HOLD}
    return rule | ({"bps": scenario.conn_bps} if scenario.conn_bps else {})


def _lane_faults(scenario: Scenario, part_size: int, requests: int) -> list[dict[str, Any]]:
    """What each of the first requests gets on top of the plain lane ({} = nothing)."""
    if scenario.lanes == "resets":
        rng = random.Random(SEED)  # the same resets in every repeat
        hit = set(rng.sample(range(requests), max(1, round(requests * RESET_SHARE))))
        return [
            {"reset_after": rng.randrange(1, max(2, part_size))} if i in hit else {}
            for i in range(requests)
        ]
    return []
