"""Unit and property tests for headwater.core.topics (MQTT 3.1.1 section 4.7)."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.core.topics import (
    MAX_TOPIC_BYTES,
    InvalidTopicError,
    TopicFilterIndex,
    TopicFilterIndexStatistics,
    filter_covers,
    topic_matches,
    validate_topic_filter,
    validate_topic_name,
)

# --- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "topic",
    ["a", "/", "a/b/c", "/leading", "trailing/", "a//b", "$SYS/broker", "sp ace", "ü/日本", "x" * 65535],
)
def test_valid_topic_names(topic: str) -> None:
    validate_topic_name(topic)


@pytest.mark.parametrize(
    ("topic", "reason"),
    [
        ("", "must not be empty"),
        ("a/+/b", "wildcards"),
        ("a/#", "wildcards"),
        ("a+b", "wildcards"),
        ("a\x00b", "U+0000"),
        ("x" * 65536, "longer than 65535 UTF-8 bytes"),
        ("é" * 32768, "longer than 65535 UTF-8 bytes"),  # 32768 chars, 65536 bytes
        ("a\ud800", "lone surrogate"),
    ],
)
def test_invalid_topic_names(topic: str, reason: str) -> None:
    with pytest.raises(InvalidTopicError, match=re.escape(reason)) as info:
        validate_topic_name(topic)
    assert info.value.topic == topic
    assert isinstance(info.value, ValueError)


def test_error_message_shortens_long_topics() -> None:
    with pytest.raises(InvalidTopicError) as info:
        validate_topic_name("x" * MAX_TOPIC_BYTES + "y")
    assert len(str(info.value)) < 200
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "filter_",
    ["#", "+", "a/#", "a/+/b", "+/+", "/#", "+/", "a//+", "$SYS/#", "a/b", "+/#", "x" * 65535],
)
def test_valid_topic_filters(filter_: str) -> None:
    validate_topic_filter(filter_)


@pytest.mark.parametrize(
    ("filter_", "reason"),
    [
        ("", "must not be empty"),
        ("a/#/b", "'#' must be the last level"),
        ("#/", "'#' must be the last level"),
        ("a#", "'#' must be a whole level"),
        ("a/b#", "'#' must be a whole level"),
        ("a+", "'+' must be a whole level"),
        ("a/+b/c", "'+' must be a whole level"),
        ("++", "'+' must be a whole level"),
        ("a\x00", "U+0000"),
        ("#" * 2, "'#' must be a whole level"),
        ("a/" * 32768, "longer than 65535 UTF-8 bytes"),
    ],
)
def test_invalid_topic_filters(filter_: str, reason: str) -> None:
    with pytest.raises(InvalidTopicError, match=re.escape(reason)):
        validate_topic_filter(filter_)


# --- matching -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filter_", "topic", "expected"),
    [
        ("sport/tennis/player1/#", "sport/tennis/player1", True),
        ("sport/tennis/player1/#", "sport/tennis/player1/ranking", True),
        ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", True),
        ("sport/#", "sport", True),
        ("sport/#", "sport/", True),
        ("sport/#", "sports", False),
        ("#", "a/b/c", True),
        ("#", "/", True),
        ("sport/tennis/+", "sport/tennis/player1", True),
        ("sport/tennis/+", "sport/tennis/player1/ranking", False),
        ("sport/+", "sport", False),
        ("sport/+", "sport/", True),
        ("+", "a", True),
        ("+", "/finance", False),
        ("/+", "/finance", True),
        ("+/+", "/finance", True),
        ("+/#", "a", True),
        ("a/+/#", "a", False),
        ("a/b", "a/b", True),
        ("a/b", "a/b/", False),
        ("a//b", "a//b", True),
        ("a/+/b", "a//b", True),
        # MQTT-4.7.2-1: leading wildcards do not reach '$' topics.
        ("#", "$SYS/broker", False),
        ("+/broker", "$SYS/broker", False),
        ("+/#", "$SYS", False),
        ("$SYS/#", "$SYS/broker", True),
        ("$SYS/+", "$SYS/broker", True),
        ("$SYS/#", "$SYS", True),
        ("a/#", "a/$b", True),
        ("a/+", "a/$b", True),
    ],
)
def test_topic_matches_examples(filter_: str, topic: str, *, expected: bool) -> None:
    assert topic_matches(filter_, topic) is expected


@pytest.mark.parametrize(
    ("allowed", "requested", "expected"),
    [
        ("sensors/#", "sensors/+/telemetry", True),
        ("sensors/#", "sensors", True),
        ("sensors/#", "sensors/#", True),
        ("sensors/+", "sensors/#", False),
        ("sensors/+", "sensors/a", True),
        ("sensors/+", "sensors/+", True),
        ("sensors/a", "sensors/+", False),
        ("+/x", "a/x", True),
        ("+/x", "+/x", True),
        ("+/x", "$a/x", False),
        ("+/x", "a/y", False),
        ("#", "a/b/c", True),
        ("#", "+/#", True),
        ("#", "#", True),
        ("#", "$SYS/#", False),
        ("#", "$SYS", False),
        ("+/#", "#", True),  # a topic has at least one level, so both match everything
        ("+/+/#", "#", False),
        ("a/+/#", "a/#", False),  # 'a/#' matches 'a'
        ("a/#", "a", True),
        ("a", "a/#", False),
        ("a/b", "a/b", True),
        ("a/b", "a/b/c", False),
        ("a/b/c", "a/b", False),
        ("$SYS/#", "$SYS/broker/+", True),
        ("$SYS/#", "#", False),
        ("a/#", "+/#", False),
    ],
)
def test_filter_covers_examples(allowed: str, requested: str, *, expected: bool) -> None:
    assert filter_covers(allowed, requested) is expected


# --- properties against a reference -------------------------------------------------------

# A small alphabet makes collisions (and so matches) likely; "$x" and "" exercise the edges.
LEVELS = ["a", "b", "", "$x"]
level_names = st.sampled_from(LEVELS)
topic_names = st.lists(level_names, min_size=1, max_size=5).map("/".join).filter(bool)


@st.composite
def topic_filters(draw: st.DrawFn, max_levels: int = 5) -> str:
    levels = draw(st.lists(st.sampled_from([*LEVELS, "+"]), min_size=1, max_size=max_levels))
    if draw(st.booleans()):
        levels[-1] = "#"
    result = "/".join(levels)
    return result or "+"


def reference_matches(filter_: str, topic: str) -> bool:
    """Topic matching by a regular expression, written straight from the spec's words."""
    levels = filter_.split("/")
    if levels[-1] == "#":
        head = [("[^/]*" if level == "+" else re.escape(level)) for level in levels[:-1]]
        # '#' is the parent level and any number of children.
        pattern = "/".join(head) + "(?:/.*)?" if head else ".*"
    else:
        pattern = "/".join(("[^/]*" if level == "+" else re.escape(level)) for level in levels)
    if filter_[0] in "+#" and topic.startswith("$"):
        return False
    return re.fullmatch(pattern, topic, flags=re.DOTALL) is not None


@given(filter_=topic_filters(), topic=topic_names)
@settings(max_examples=2000)
def test_topic_matches_agrees_with_reference(filter_: str, topic: str) -> None:
    validate_topic_filter(filter_)
    validate_topic_name(topic)
    assert topic_matches(filter_, topic) == reference_matches(filter_, topic)


@given(allowed=topic_filters(), requested=topic_filters(), topic=topic_names)
@settings(max_examples=2000)
def test_filter_covers_is_sound(allowed: str, requested: str, topic: str) -> None:
    if filter_covers(allowed, requested) and topic_matches(requested, topic):
        assert topic_matches(allowed, topic)


def witness_topics(*filters: str) -> list[str]:
    """Every topic that can tell two of ``filters`` apart.

    Matching depends on each level only through "equals this literal", "starts with '$'" and
    the number of levels, so the filters' literals plus one fresh plain and one fresh '$'
    level, at every length up to one more than the longest filter, are enough.
    """
    literals = {level for filter_ in filters for level in filter_.split("/") if level not in {"+", "#"}}
    alphabet = sorted(literals | {"fresh", "$fresh"})
    longest = max(len(filter_.split("/")) for filter_ in filters) + 1
    return [
        "/".join(levels)
        for length in range(1, longest + 1)
        for levels in itertools.product(alphabet, repeat=length)
    ]


@given(allowed=topic_filters(max_levels=3), requested=topic_filters(max_levels=3))
@settings(max_examples=500)
def test_filter_covers_is_exact(allowed: str, requested: str) -> None:
    expected = all(
        topic_matches(allowed, topic)
        for topic in witness_topics(allowed, requested)
        if topic_matches(requested, topic)
    )
    assert filter_covers(allowed, requested) == expected


@given(filter_=topic_filters())
def test_every_filter_covers_itself(filter_: str) -> None:
    assert filter_covers(filter_, filter_)


# --- TopicFilterIndex ---------------------------------------------------------------------


def test_index_matches_streams_example() -> None:
    index: TopicFilterIndex[str] = TopicFilterIndex()
    index.add("sensors/+/telemetry", "telemetry")
    index.add("sensors/#", "everything")
    index.add("sensors/kitchen/telemetry", "kitchen")
    index.add("#", "all")
    index.add("$SYS/#", "sys")
    assert index.match("sensors/kitchen/telemetry") == {"telemetry", "everything", "kitchen", "all"}
    assert index.match("sensors/hall/telemetry") == {"telemetry", "everything", "all"}
    assert index.match("sensors") == {"everything", "all"}
    assert index.match("other") == {"all"}
    assert index.match("$SYS/uptime") == {"sys"}
    assert index.has_match("$SYS")
    assert not TopicFilterIndex[str]().has_match("a")


def test_index_returns_a_value_once_across_filters() -> None:
    index: TopicFilterIndex[str] = TopicFilterIndex()
    index.add("a/#", "s")
    index.add("a/b", "s")
    assert index.match("a/b") == {"s"}
    index.remove("a/#", "s")
    assert index.match("a/b") == {"s"}
    assert index.match("a/c") == set()


def test_index_add_is_idempotent_and_counts() -> None:
    index: TopicFilterIndex[int] = TopicFilterIndex()
    assert index.statistics() == TopicFilterIndexStatistics(entries=0, filters=0, nodes=1)
    index.add("a/b", 1)
    index.add("a/b", 1)
    index.add("a/b", 2)
    index.add("a/+", 1)
    assert len(index) == 3
    assert index.statistics() == TopicFilterIndexStatistics(entries=3, filters=2, nodes=4)


def test_index_remove_prunes_nodes() -> None:
    index: TopicFilterIndex[int] = TopicFilterIndex()
    index.add("a/b/c", 1)
    index.add("a", 2)
    index.remove("a/b/c", 1)
    assert index.statistics() == TopicFilterIndexStatistics(entries=1, filters=1, nodes=2)
    index.remove("a", 2)
    assert index.statistics() == TopicFilterIndexStatistics(entries=0, filters=0, nodes=1)
    assert index.match("a") == set()


def test_index_remove_missing_raises_key_error() -> None:
    index: TopicFilterIndex[int] = TopicFilterIndex()
    index.add("a/b", 1)
    with pytest.raises(KeyError):
        index.remove("a/b", 2)
    with pytest.raises(KeyError):
        index.remove("a/c", 1)
    with pytest.raises(KeyError):
        index.remove("a", 1)
    assert len(index) == 1


def test_index_refuses_invalid_filters() -> None:
    index: TopicFilterIndex[int] = TopicFilterIndex()
    with pytest.raises(InvalidTopicError):
        index.add("a/#/b", 1)
    assert index.statistics().nodes == 1


@given(
    operations=st.lists(
        st.tuples(st.booleans(), topic_filters(), st.integers(min_value=0, max_value=3)),
        max_size=40,
    ),
    topics=st.lists(topic_names, min_size=1, max_size=10),
)
@settings(max_examples=500)
def test_index_match_equals_brute_force(operations: list[tuple[bool, str, int]], topics: list[str]) -> None:
    index: TopicFilterIndex[int] = TopicFilterIndex()
    entries: set[tuple[str, int]] = set()
    for is_add, filter_, value in operations:
        if is_add:
            index.add(filter_, value)
            entries.add((filter_, value))
        elif (filter_, value) in entries:
            index.remove(filter_, value)
            entries.discard((filter_, value))
    assert len(index) == len(entries)
    assert index.statistics().filters == len({filter_ for filter_, _ in entries})
    for topic in topics:
        expected = {value for filter_, value in entries if topic_matches(filter_, topic)}
        assert index.match(topic) == expected
        assert index.has_match(topic) == bool(expected)
    for filter_, value in list(entries):
        index.remove(filter_, value)
    assert index.statistics() == TopicFilterIndexStatistics(entries=0, filters=0, nodes=1)
