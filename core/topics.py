"""MQTT 3.1.1 topic names and topic filters: validation, matching, coverage and a filter index.

Owns: the rules of MQTT 3.1.1 section 4.7 as plain functions and one data structure. It must
never do I/O, log, or know about users, streams or the broker: the ACL (``access``) and the
streams plugin build on it.

Vocabulary (the spec's): a *topic name* is what a PUBLISH carries (no wildcards); a *topic
filter* is what a SUBSCRIBE, an ACL rule or a stream's ``topics`` holds (``+`` and ``#``
allowed). Both are split into *levels* by ``/``; empty levels are legal (``a//b``, ``/a``).

Matching rules implemented here:

- ``+`` matches exactly one level, including an empty one.
- ``#`` matches the parent level and any number of child levels: ``sport/#`` matches
  ``sport``, ``sport/`` and ``sport/a/b``; a bare ``#`` matches every topic.
- A filter whose first level is ``+`` or ``#`` never matches a topic name starting with ``$``
  (MQTT-4.7.2-1); ``$SYS/#`` does.

The matching functions do not validate their arguments (they run per message): pass names
and filters that went through :func:`validate_topic_name` / :func:`validate_topic_filter`.

Exceptions::

    ValueError
     └── InvalidTopicError      a topic name or filter breaks MQTT 3.1.1 section 4.7
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = [
    "MAX_TOPIC_BYTES",
    "InvalidTopicError",
    "TopicFilterIndex",
    "TopicFilterIndexStatistics",
    "filter_covers",
    "topic_matches",
    "validate_topic_filter",
    "validate_topic_name",
]

#: The longest topic name or filter, in UTF-8 bytes (a two-byte length prefix on the wire).
MAX_TOPIC_BYTES = 65535

# Messages quote at most this many characters of an offending topic: a 64 KiB topic in an
# exception message (and every log line that prints it) helps nobody.
_QUOTE_CHARS = 80

V = TypeVar("V", bound=Hashable)


class InvalidTopicError(ValueError):
    """A topic name or topic filter that MQTT 3.1.1 forbids.

    ``topic`` holds the offending string, ``reason`` the rule it breaks; ``str(exc)`` quotes
    the topic (shortened when long) and gives the reason on one line.
    """

    def __init__(self, kind: str, topic: str, reason: str) -> None:
        self.topic = topic
        self.reason = reason
        quoted = topic if len(topic) <= _QUOTE_CHARS else topic[:_QUOTE_CHARS] + "..."
        super().__init__(f"invalid {kind} {quoted!r}: {reason}")


def _check_string(kind: str, topic: str) -> None:
    """Apply the rules names and filters share: non-empty, no NUL, UTF-8, length limit."""
    if not topic:
        raise InvalidTopicError(kind, topic, "must not be empty")
    if "\x00" in topic:
        raise InvalidTopicError(kind, topic, "must not contain U+0000")
    try:
        encoded = topic.encode("utf-8")
    except UnicodeEncodeError as exc:
        # Only lone surrogates fail here; they cannot travel in an MQTT UTF-8 string.
        raise InvalidTopicError(kind, topic, "is not valid UTF-8 (lone surrogate)") from exc
    if len(encoded) > MAX_TOPIC_BYTES:
        raise InvalidTopicError(kind, topic, f"is longer than {MAX_TOPIC_BYTES} UTF-8 bytes")


def validate_topic_name(topic: str) -> None:
    """Raise :class:`InvalidTopicError` unless ``topic`` is a valid MQTT 3.1.1 topic name.

    A valid name is non-empty, at most 65535 UTF-8 bytes, and holds neither wildcard (``+``,
    ``#``) nor U+0000. Other control characters are allowed (the spec only says "should not").
    """
    _check_string("topic name", topic)
    if "+" in topic or "#" in topic:
        raise InvalidTopicError("topic name", topic, "must not contain the wildcards '+' or '#'")


def validate_topic_filter(filter_: str) -> None:
    """Raise :class:`InvalidTopicError` unless ``filter_`` is a valid MQTT 3.1.1 topic filter.

    On top of the rules for names (minus the wildcard ban): ``+`` must be a whole level, ``#``
    must be a whole level and the last one.
    """
    _check_string("topic filter", filter_)
    if "+" not in filter_ and "#" not in filter_:
        return
    levels = filter_.split("/")
    last = len(levels) - 1
    for index, level in enumerate(levels):
        if level == "+":
            continue
        if level == "#":
            if index != last:
                raise InvalidTopicError("topic filter", filter_, "'#' must be the last level")
            continue
        if "#" in level:
            raise InvalidTopicError("topic filter", filter_, "'#' must be a whole level")
        if "+" in level:
            raise InvalidTopicError("topic filter", filter_, "'+' must be a whole level")


def topic_matches(filter_: str, topic: str) -> bool:
    """Tell whether the topic filter ``filter_`` matches the topic name ``topic``.

    Both arguments must be valid (see the module docstring); they are not checked here.
    """
    if topic.startswith("$") and filter_.startswith(("+", "#")):
        return False
    if "+" not in filter_ and "#" not in filter_:
        return filter_ == topic
    topic_levels = topic.split("/")
    depth = len(topic_levels)
    filter_levels = filter_.split("/")
    for index, level in enumerate(filter_levels):
        if level == "#":
            # Valid filters have '#' last only, and it also matches zero further levels.
            return True
        if index >= depth:
            return False
        if level != "+" and level != topic_levels[index]:
            return False
    return depth == len(filter_levels)


def filter_covers(allowed: str, requested: str) -> bool:
    """Tell whether every topic name ``requested`` can match is also matched by ``allowed``.

    Exact for one pair of valid filters (not checked here): ``sensors/#`` covers
    ``sensors/+/telemetry`` and ``sensors``; ``sensors/+`` does not cover ``sensors/#``;
    ``#`` covers every filter whose first level does not start with ``$``; ``+/#`` covers ``#``
    (a topic name has at least one level).
    """
    allowed_levels = allowed.split("/")
    requested_levels = requested.split("/")
    depth = len(requested_levels)
    for index, level in enumerate(allowed_levels):
        if level == "#":
            # A leading '#' skips '$' topics; a requested '$' first level reaches them.
            return not (index == 0 and requested_levels[0].startswith("$"))
        if index >= depth:
            # ``requested`` has no '#' (it would have returned below) and ends here, while
            # ``allowed`` still needs this level.
            return False
        wanted = requested_levels[index]
        if wanted == "#":
            # ``requested`` matches topics that end here (the parent) and any deeper ones;
            # only a '#' in ``allowed`` (handled above) matches both. At the top level there
            # is no parent topic, so '+/#' covers '#' too.
            return index == 0 and level == "+" and allowed_levels[1:] == ["#"]
        if level == "+":
            if index == 0 and wanted != "+" and wanted.startswith("$"):
                return False
            continue
        if wanted == "+" or wanted != level:
            # A literal level covers only itself.
            return False
    return len(allowed_levels) == depth


@dataclass(frozen=True, slots=True)
class TopicFilterIndexStatistics:
    """A snapshot of a :class:`TopicFilterIndex`.

    ``entries`` counts (filter, value) pairs, ``filters`` distinct filters holding at least one
    value, ``nodes`` trie nodes including the root.
    """

    entries: int
    filters: int
    nodes: int


class _Node(Generic[V]):
    """One trie level: children by level (``+``, ``#`` included), values of filters ending here."""

    __slots__ = ("children", "values")

    def __init__(self) -> None:
        self.children: dict[str, _Node[V]] = {}
        self.values: set[V] = set()


class TopicFilterIndex(Generic[V]):
    """Maps topic filters to values and answers "which values' filters match this topic?".

    A trie keyed by filter levels; :meth:`match` walks it once per topic level, following the
    literal child, the ``+`` child and collecting ``#`` children, so its cost grows with the
    topic's depth and the number of wildcard branches, not with the number of filters.

    Each (filter, value) pair is stored once: adding it again changes nothing. One value may
    sit under several filters; :meth:`match` returns it once. Not thread-safe; callers own
    the locking, if any.
    """

    __slots__ = ("_entries", "_filters", "_nodes", "_root")

    def __init__(self) -> None:
        self._root: _Node[V] = _Node()
        self._entries = 0
        self._filters = 0
        self._nodes = 1

    def __len__(self) -> int:
        """Return the number of (filter, value) pairs."""
        return self._entries

    def add(self, filter_: str, value: V) -> None:
        """Store ``value`` under ``filter_``; raise :class:`InvalidTopicError` on a bad filter."""
        validate_topic_filter(filter_)
        node = self._root
        for level in filter_.split("/"):
            child = node.children.get(level)
            if child is None:
                child = _Node()
                node.children[level] = child
                self._nodes += 1
            node = child
        if value in node.values:
            return
        if not node.values:
            self._filters += 1
        node.values.add(value)
        self._entries += 1

    def remove(self, filter_: str, value: V) -> None:
        """Remove the pair (``filter_``, ``value``); raise ``KeyError`` if it is not stored."""
        path = [self._root]
        node = self._root
        levels = filter_.split("/")
        for level in levels:
            child = node.children.get(level)
            if child is None:
                raise KeyError((filter_, value))
            path.append(child)
            node = child
        if value not in node.values:
            raise KeyError((filter_, value))
        node.values.remove(value)
        self._entries -= 1
        if node.values:
            return
        self._filters -= 1
        # Prune the nodes that now lead nowhere, deepest first, so memory follows the content.
        for depth in range(len(levels), 0, -1):
            node = path[depth]
            if node.values or node.children:
                break
            del path[depth - 1].children[levels[depth - 1]]
            self._nodes -= 1

    def match(self, topic: str) -> set[V]:
        """Return the values of every filter that matches the valid topic name ``topic``."""
        result: set[V] = set()
        for values in self._matching_value_sets(topic):
            result |= values
        return result

    def has_match(self, topic: str) -> bool:
        """Tell whether any stored filter matches the valid topic name ``topic``."""
        return any(self._matching_value_sets(topic))

    def statistics(self) -> TopicFilterIndexStatistics:
        """Return the counts of entries, filters and trie nodes."""
        return TopicFilterIndexStatistics(entries=self._entries, filters=self._filters, nodes=self._nodes)

    def _matching_value_sets(self, topic: str) -> Iterator[set[V]]:
        """Yield the value sets (possibly empty) of the nodes whose filters match ``topic``."""
        # MQTT-4.7.2-1: wildcards at the first level do not reach '$' topics.
        skip_wildcards = topic.startswith("$")
        nodes = [self._root]
        for level in topic.split("/"):
            following: list[_Node[V]] = []
            for node in nodes:
                children = node.children
                if not skip_wildcards:
                    multi = children.get("#")
                    if multi is not None:
                        yield multi.values
                    single = children.get("+")
                    if single is not None:
                        following.append(single)
                literal = children.get(level)
                if literal is not None:
                    following.append(literal)
            if not following:
                return
            nodes = following
            skip_wildcards = False
        for node in nodes:
            yield node.values
            # 'sport/#' also matches 'sport' itself.
            multi = node.children.get("#")
            if multi is not None:
                yield multi.values
