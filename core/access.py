"""Topic authorization: who may publish to, subscribe to and receive which topics.

Owns: turning the config's ACL (``broker.acl``: user -> :class:`TopicACL`) into fast, pure,
synchronous decisions. It runs for every message, so everything that can be computed once is
computed in the constructor, and decisions are kept in a bounded LRU cache. It must never do
I/O, await, log, or decide who a client *is*: the caller passes the username that
authentication established (``None`` for a client without one).

Rules:

- No ACL at all (``acl=None``): every valid topic and filter is allowed.
- The entry ``"anonymous"`` applies to clients whose username is ``None``. A client that
  really sends the username ``"anonymous"`` lands on the same entry (``headwater passwd``
  refuses to create that user, so the config cannot tell them apart anyway).
- A username without an entry gets nothing.
- ``%u`` in a filter is replaced by the username, as mosquitto's ``pattern`` lines do. A
  filter holding ``%u`` never applies to the anonymous entry, nor to a username that is empty
  or contains ``/``, ``+``, ``#`` or U+0000 (it would change the filter's shape, e.g.
  ``users/%u/#`` for the user ``a/b`` reaching into user ``a``'s tree). Since entries are per
  user, the substitution happens once, here; it lets a YAML anchor share one rule set.
- Invalid topic names and filters are never allowed, with or without an ACL.
- Publish and receive check the topic name against the user's ``publish`` / ``subscribe``
  filters with MQTT matching. Subscribe grants a filter only if *one* of the user's
  ``subscribe`` filters covers it entirely (:func:`filter_covers`); a filter that only the
  union of several rules covers is refused, which errs on the safe side.
- ``deny.publish`` / ``deny.subscribe`` take topics out of those rules, and a deny wins over
  an allow: a topic matching a deny filter is never published to, resp. received. A SUBSCRIBE
  is refused only when one deny filter covers the requested filter entirely (every topic it
  could match is denied); a filter that merely overlaps a deny (``#`` with
  ``deny.subscribe: [secrets/#]``) is granted and the receive check drops each denied topic,
  retained messages included: "everything except X". A deny filter holding ``%u`` that cannot
  apply to the user (anonymous, or an unsafe username) denies for *every* username, its ``%u``
  levels read as ``+``: a deny rule fails closed where an allow rule fails open.

:meth:`AccessPolicy.may_receive` is the check for every delivery, retained-message replay
included: a granted subscription such as ``#`` does not grant the ``$SYS`` topics, and the
broker must still check each delivered topic.

Name patterns (``client_ids`` and the stream API rights, ``streams: {read, append, admin}``)
match a whole name: ``*`` matches any run of characters (none included), ``?`` exactly one,
``%u`` the username, every other character itself. ``%u`` follows the rules of topic filters
(never the anonymous entry, nor an empty username), and a username holding ``/``, ``+``,
``#``, ``*``, ``?`` or U+0000 never substitutes. Matching takes time linear in the name's
length times the pattern's (no backtracking regex: client ids come from the network).

- :meth:`AccessPolicy.may_use_client_id`: true without an ACL or when the user's entry has no
  ``client_ids``; false for a user without an entry; otherwise one pattern must match.
- :meth:`AccessPolicy.stream_grant`: the user's *listed* stream API right, the building block of
  :class:`headwater.core.stream_rights.StreamRights` (which adds the defaults derived from
  topic rules). A name in :data:`PROTECTED_STREAMS` (the upload plugin's ``dead-letter``
  stream, which holds records of every stream) is granted only by a pattern that is exactly that
  name: never by a wildcard or ``%u``.

Exceptions::

    ValueError                  an ACL name pattern is invalid (the message names the entry)
     └── InvalidTopicError      (headwater.core.topics) an ACL filter is invalid
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

from headwater.core.config import TopicACL
from headwater.core.topics import (
    InvalidTopicError,
    TopicFilterIndex,
    filter_covers,
    validate_topic_filter,
    validate_topic_name,
)

__all__ = [
    "ANONYMOUS",
    "PROTECTED_STREAMS",
    "AccessPolicy",
    "AccessPolicyStatistics",
    "StreamRight",
]

#: The ACL key for clients that connected without a username.
ANONYMOUS = "anonymous"

#: The stream API rights an ACL entry lists under ``streams``.
StreamRight: TypeAlias = Literal["read", "append", "admin"]

#: Streams that only a pattern spelling out their name grants: ``dead-letter`` (the name the
#: upload plugin gives the stream of records AWS refused; it holds records of every stream).
PROTECTED_STREAMS: Final = frozenset({"dead-letter"})

_USERNAME_PLACEHOLDER = "%u"
# A username holding one of these would change the shape of a %u filter.
_UNSAFE_IN_PLACEHOLDER = frozenset("/+#\x00")
# ... or of a %u name pattern.
_UNSAFE_IN_NAME_PLACEHOLDER = frozenset("/+#*?\x00")
_NAME_PATTERN_PIECE: Final = re.compile(r"%u|%|\*|\?|[^%*?]+")


@dataclass(frozen=True, slots=True)
class AccessPolicyStatistics:
    """Decision-cache counters, summed over publish, subscribe, receive and client ids.

    ``cache_entries`` is at most four times ``cache_size`` (one cache per kind of decision).
    """

    restricted: bool
    users: int
    cache_size: int
    cache_entries: int
    cache_hits: int
    cache_misses: int


@dataclass(frozen=True, slots=True)
class _NamePattern:
    """One name pattern with ``%u`` substituted: fixed-length segments between the ``*``s.

    Each segment is a regex of literal characters and ``.`` (for ``?``) that can only match
    its own length, so finding the segments left to right (the first one at the start, the
    last one at the end) decides a match without backtracking.
    """

    segments: tuple[re.Pattern[str], ...]
    lengths: tuple[int, ...]
    # The pattern when it has no wildcard (only such a pattern grants a protected stream).
    literal: str | None

    def matches(self, name: str) -> bool:
        segments, lengths = self.segments, self.lengths
        if len(segments) == 1:
            return segments[0].fullmatch(name) is not None
        start, end = lengths[0], len(name) - lengths[-1]
        if end < start or segments[0].match(name) is None or segments[-1].fullmatch(name, end) is None:
            return False
        for segment, length in zip(segments[1:-1], lengths[1:-1], strict=True):
            found = segment.search(name, start, end)
            if found is None:
                return False
            start = found.start() + length
        return True


def _compile_name_pattern(raw: str, username: str | None, where: str) -> _NamePattern | None:
    """``raw`` compiled, or ``None`` when its ``%u`` cannot apply to ``username``.

    Raises :class:`ValueError` naming ``where`` when ``raw`` is empty or holds another ``%``.
    """
    if not raw:
        msg = f"{where}: a name pattern must not be empty"
        raise ValueError(msg)
    # Per segment: its regex parts and the length of the text it matches.
    parts: list[list[str]] = [[]]
    lengths = [0]
    spelled_out = True  # no wildcard, no %u
    for piece in _NAME_PATTERN_PIECE.findall(raw):
        if piece == _USERNAME_PLACEHOLDER:
            if not username or not _UNSAFE_IN_NAME_PLACEHOLDER.isdisjoint(username):
                return None
            spelled_out = False
            parts[-1].append(re.escape(username))
            lengths[-1] += len(username)
        elif piece == "%":
            msg = f"{where}: '%' must be followed by 'u' (%u is the username), got {raw!r}"
            raise ValueError(msg)
        elif piece == "*":
            spelled_out = False
            parts.append([])
            lengths.append(0)
        elif piece == "?":
            spelled_out = False
            parts[-1].append(".")
            lengths[-1] += 1
        else:
            parts[-1].append(re.escape(piece))
            lengths[-1] += len(piece)
    return _NamePattern(
        segments=tuple(re.compile("".join(segment), re.DOTALL) for segment in parts),
        lengths=tuple(lengths),
        literal=raw if spelled_out else None,
    )


@dataclass(frozen=True, slots=True)
class _UserRules:
    """One ACL entry, compiled: ``%u`` substituted, filters validated and indexed."""

    publish: TopicFilterIndex[str]
    subscribe: TopicFilterIndex[str]
    subscribe_filters: tuple[str, ...]
    deny_publish: TopicFilterIndex[str]
    deny_subscribe: TopicFilterIndex[str]
    deny_subscribe_filters: tuple[str, ...]
    client_ids: tuple[_NamePattern, ...] | None
    # Per right: the compiled patterns, or None for "not listed" (StreamRights derives it).
    streams: Mapping[StreamRight, tuple[_NamePattern, ...] | None]


def _substitute(filter_: str, username: str | None) -> str | None:
    """``filter_`` with ``%u`` replaced, or ``None`` when the filter cannot apply to the user."""
    if _USERNAME_PLACEHOLDER not in filter_:
        return filter_
    if not username or not _UNSAFE_IN_PLACEHOLDER.isdisjoint(username):
        return None
    return filter_.replace(_USERNAME_PLACEHOLDER, username)


def _any_user(filter_: str) -> str:
    """``filter_`` with every level holding ``%u`` replaced by ``+`` (any username)."""
    return "/".join("+" if _USERNAME_PLACEHOLDER in level else level for level in filter_.split("/"))


def _compile_filters(key: str, kind: str, filters: tuple[str, ...], *, deny: bool = False) -> tuple[str, ...]:
    """Substitute and validate one list of an entry; errors name the entry and the index.

    ``deny``: a filter whose ``%u`` cannot apply to the user covers every username instead of
    nothing (see the module docstring).
    """
    username = None if key == ANONYMOUS else key
    compiled: list[str] = []
    for position, raw in enumerate(filters):
        try:
            validate_topic_filter(raw)
        except InvalidTopicError as exc:
            raise InvalidTopicError(f"topic filter in acl.{key}.{kind}[{position}]", raw, exc.reason) from exc
        filter_ = _substitute(raw, username)
        if filter_ is None:
            if not deny:
                continue
            filter_ = _any_user(raw)
        try:
            validate_topic_filter(filter_)
        except InvalidTopicError as exc:
            # The substituted username made the filter too long; nothing else can fail here.
            raise InvalidTopicError(
                f"topic filter in acl.{key}.{kind}[{position}] after %u", filter_, exc.reason
            ) from exc
        compiled.append(filter_)
    # Keep the first occurrence of each filter, in config order.
    return tuple(dict.fromkeys(compiled))


def _compile_entry(key: str, entry: TopicACL) -> _UserRules:
    publish: TopicFilterIndex[str] = TopicFilterIndex()
    for filter_ in _compile_filters(key, "publish", entry.publish):
        publish.add(filter_, filter_)
    subscribe_filters = _compile_filters(key, "subscribe", entry.subscribe)
    subscribe: TopicFilterIndex[str] = TopicFilterIndex()
    for filter_ in subscribe_filters:
        subscribe.add(filter_, filter_)
    deny_publish: TopicFilterIndex[str] = TopicFilterIndex()
    for filter_ in _compile_filters(key, "deny.publish", entry.deny_publish, deny=True):
        deny_publish.add(filter_, filter_)
    deny_subscribe_filters = _compile_filters(key, "deny.subscribe", entry.deny_subscribe, deny=True)
    deny_subscribe: TopicFilterIndex[str] = TopicFilterIndex()
    for filter_ in deny_subscribe_filters:
        deny_subscribe.add(filter_, filter_)
    username = None if key == ANONYMOUS else key
    return _UserRules(
        publish=publish,
        subscribe=subscribe,
        subscribe_filters=subscribe_filters,
        deny_publish=deny_publish,
        deny_subscribe=deny_subscribe,
        deny_subscribe_filters=deny_subscribe_filters,
        client_ids=_compile_patterns(f"acl.{key}.client_ids", entry.client_ids, username),
        streams={
            "read": _compile_patterns(f"acl.{key}.streams.read", entry.stream_read, username),
            "append": _compile_patterns(f"acl.{key}.streams.append", entry.stream_append, username),
            "admin": _compile_patterns(f"acl.{key}.streams.admin", entry.stream_admin, username),
        },
    )


def _compile_patterns(
    where: str, patterns: tuple[str, ...] | None, username: str | None
) -> tuple[_NamePattern, ...] | None:
    """Compile one list of name patterns; ``None`` (the key absent) stays ``None``."""
    if patterns is None:
        return None
    compiled = (
        _compile_name_pattern(raw, username, f"{where}[{position}]") for position, raw in enumerate(patterns)
    )
    return tuple(pattern for pattern in compiled if pattern is not None)


def _is_topic_name(topic: str) -> bool:
    try:
        validate_topic_name(topic)
    except InvalidTopicError:
        return False
    return True


def _is_topic_filter(filter_: str) -> bool:
    try:
        validate_topic_filter(filter_)
    except InvalidTopicError:
        return False
    return True


class AccessPolicy:
    """Answers the three ACL questions for a (username, topic) pair; see the module docstring.

    Built once from the config's ``broker.acl``; raises :class:`InvalidTopicError` naming the
    entry (``acl.alice.publish[2]``) when a filter is invalid, :class:`ValueError` naming it
    (``acl.alice.client_ids[0]``) when a name pattern is. Immutable afterwards. Decisions
    are cached per kind in an LRU of ``cache_size`` entries (``0`` disables caching); the cache
    is thread-safe, and a decision never depends on earlier ones.
    """

    __slots__ = (
        "_cache_size",
        "_may_publish",
        "_may_receive",
        "_may_subscribe",
        "_may_use_client_id",
        "_rules",
    )

    def __init__(self, acl: Mapping[str, TopicACL] | None, *, cache_size: int = 4096) -> None:
        if cache_size < 0:
            msg = f"cache_size must be at least 0, not {cache_size}"
            raise ValueError(msg)
        self._rules: dict[str, _UserRules] | None = (
            None if acl is None else {key: _compile_entry(key, entry) for key, entry in acl.items()}
        )
        self._cache_size = cache_size
        cache = functools.lru_cache(maxsize=cache_size)
        self._may_publish = cache(self._decide_publish)
        self._may_subscribe = cache(self._decide_subscribe)
        self._may_receive = cache(self._decide_receive)
        self._may_use_client_id = cache(self._decide_client_id)

    @property
    def restricted(self) -> bool:
        """False when there is no ACL (every valid topic and filter allowed)."""
        return self._rules is not None

    def may_publish(self, username: str | None, topic: str) -> bool:
        """Tell whether the client ``username`` may publish to the topic name ``topic``."""
        return self._may_publish(username, topic)

    def may_subscribe(self, username: str | None, filter_: str) -> bool:
        """Tell whether the client ``username`` may subscribe with the topic filter ``filter_``."""
        return self._may_subscribe(username, filter_)

    def may_receive(self, username: str | None, topic: str) -> bool:
        """Tell whether a message on the topic name ``topic`` may be delivered to ``username``.

        Guards every delivery, retained-message replay included.
        """
        return self._may_receive(username, topic)

    def may_use_client_id(self, username: str | None, client_id: str) -> bool:
        """Tell whether the client ``username`` may connect with the client id ``client_id``.

        True without an ACL, or when the user's entry has no ``client_ids``; false for a user
        without an entry; otherwise true iff one of the entry's patterns matches all of
        ``client_id``.
        """
        return self._may_use_client_id(username, client_id)

    def stream_grant(self, username: str | None, right: StreamRight, stream: str) -> bool | None:
        """The stream API right ``right`` on ``stream`` as the user's entry *lists* it.

        True without an ACL; false for a user without an entry; ``None`` when the entry does not
        list ``right`` (``streams.read`` / ``streams.append`` absent: the caller derives the right
        from the topic rules, see :class:`headwater.core.stream_rights.StreamRights`); else
        whether a listed pattern matches ``stream``. A stream in :data:`PROTECTED_STREAMS` is
        matched only by a pattern that spells out its name. Not cached (its caller caches).
        """
        if self._rules is None:
            return True
        rules = self._rules.get(ANONYMOUS if username is None else username)
        if rules is None:
            return False
        patterns = rules.streams[right]
        if patterns is None:
            return None
        if stream in PROTECTED_STREAMS:
            return any(pattern.literal == stream for pattern in patterns)
        return any(pattern.matches(stream) for pattern in patterns)

    def statistics(self) -> AccessPolicyStatistics:
        """Return the number of ACL entries and the decision caches' counters."""
        infos = [
            decide.cache_info()
            for decide in (self._may_publish, self._may_subscribe, self._may_receive, self._may_use_client_id)
        ]
        return AccessPolicyStatistics(
            restricted=self._rules is not None,
            users=0 if self._rules is None else len(self._rules),
            cache_size=self._cache_size,
            cache_entries=sum(info.currsize for info in infos),
            cache_hits=sum(info.hits for info in infos),
            cache_misses=sum(info.misses for info in infos),
        )

    def _decide_publish(self, username: str | None, topic: str) -> bool:
        if not _is_topic_name(topic):
            return False
        if self._rules is None:
            return True
        rules = self._rules.get(ANONYMOUS if username is None else username)
        return (
            rules is not None and rules.publish.has_match(topic) and not rules.deny_publish.has_match(topic)
        )

    def _decide_subscribe(self, username: str | None, filter_: str) -> bool:
        if not _is_topic_filter(filter_):
            return False
        if self._rules is None:
            return True
        rules = self._rules.get(ANONYMOUS if username is None else username)
        return (
            rules is not None
            and any(filter_covers(allowed, filter_) for allowed in rules.subscribe_filters)
            and not any(filter_covers(denied, filter_) for denied in rules.deny_subscribe_filters)
        )

    def _decide_receive(self, username: str | None, topic: str) -> bool:
        if not _is_topic_name(topic):
            return False
        if self._rules is None:
            return True
        rules = self._rules.get(ANONYMOUS if username is None else username)
        return (
            rules is not None
            and rules.subscribe.has_match(topic)
            and not rules.deny_subscribe.has_match(topic)
        )

    def _decide_client_id(self, username: str | None, client_id: str) -> bool:
        if self._rules is None:
            return True
        rules = self._rules.get(ANONYMOUS if username is None else username)
        if rules is None:
            return False
        return rules.client_ids is None or any(pattern.matches(client_id) for pattern in rules.client_ids)
