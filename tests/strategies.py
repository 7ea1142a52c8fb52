"""Hypothesis strategies shared by the property tests."""

from __future__ import annotations

from hypothesis import strategies as st

from blobdl import Settings

MAX_PARTS = 4096  # keep generated plans small enough to check quickly


@st.composite
def sized_plans(draw: st.DrawFn) -> tuple[int, Settings]:
    """A blob size and plan settings whose plan has at most ``MAX_PARTS`` parts."""
    size = draw(st.integers(min_value=0, max_value=10**12))
    floor = max(1, -(-size // MAX_PARTS))
    low = draw(st.integers(min_value=1, max_value=max(1, 2 * floor)))
    high = draw(st.integers(min_value=max(low, floor), max_value=max(low, floor) * 4))
    parts = draw(st.none() | st.integers(min_value=1, max_value=256))
    target = draw(st.integers(min_value=1, max_value=64))
    return size, Settings(min_part_size=low, max_part_size=high, parts=parts, target_parts=target)


backoff_settings = st.builds(
    Settings,
    backoff_unit=st.floats(min_value=0, max_value=1, allow_nan=False),
    max_backoff=st.floats(min_value=0, max_value=60, allow_nan=False),
)
