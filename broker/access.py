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

:meth:`AccessPolicy.may_receive` is the check for every delivery, retained-message replay
included: a granted subscription such as ``#`` does not grant the ``$SYS`` topics, and the
broker must still check each delivered topic.

Exceptions::

    ValueError
     └── InvalidTopicError      (headwater.broker.topics) an ACL filter is invalid
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

from headwater.broker.config import TopicACL
from headwater.broker.topics import (
    InvalidTopicError,
    TopicFilterIndex,
    filter_covers,
    validate_topic_filter,
    validate_topic_name,
)

__all__ = [
    "ANONYMOUS",
    "AccessPolicy",
    "AccessPolicyStatistics",
]

#: The ACL key for clients that connected without a username.
ANONYMOUS = "anonymous"

_USERNAME_PLACEHOLDER = "%u"
# A username holding one of these would change the shape of a %u filter.
_UNSAFE_IN_PLACEHOLDER = frozenset("/+#\x00")


@dataclass(frozen=True, slots=True)
class AccessPolicyStatistics:
    """Decision-cache counters, summed over publish, subscribe and receive.

    ``cache_entries`` is at most three times ``cache_size`` (one cache per kind of decision).
    """

    restricted: bool
    users: int
    cache_size: int
    cache_entries: int
    cache_hits: int
    cache_misses: int


@dataclass(frozen=True, slots=True)
class _UserRules:
    """One ACL entry, compiled: ``%u`` substituted, filters validated and indexed."""

    publish: TopicFilterIndex[str]
    subscribe: TopicFilterIndex[str]
    subscribe_filters: tuple[str, ...]


def _substitute(filter_: str, username: str | None) -> str | None:
    """``filter_`` with ``%u`` replaced, or ``None`` when the filter cannot apply to the user."""
    if _USERNAME_PLACEHOLDER not in filter_:
        return filter_
    if not username or not _UNSAFE_IN_PLACEHOLDER.isdisjoint(username):
        return None
    return filter_.replace(_USERNAME_PLACEHOLDER, username)


def _compile_filters(key: str, kind: str, filters: tuple[str, ...]) -> tuple[str, ...]:
    """Substitute and validate one list of an entry; errors name the entry and the index."""
    username = None if key == ANONYMOUS else key
    compiled: list[str] = []
    for position, raw in enumerate(filters):
        try:
            validate_topic_filter(raw)
        except InvalidTopicError as exc:
            raise InvalidTopicError(f"topic filter in acl.{key}.{kind}[{position}]", raw, exc.reason) from exc
        filter_ = _substitute(raw, username)
        if filter_ is None:
            continue
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
    return _UserRules(publish=publish, subscribe=subscribe, subscribe_filters=subscribe_filters)


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
    entry (``acl.alice.publish[2]``) when a filter is invalid. Immutable afterwards. Decisions
    are cached per kind in an LRU of ``cache_size`` entries (``0`` disables caching); the cache
    is thread-safe, and a decision never depends on earlier ones.
    """

    __slots__ = (
        "_cache_size",
        "_may_publish",
        "_may_receive",
        "_may_subscribe",
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

    def statistics(self) -> AccessPolicyStatistics:
        """Return the number of ACL entries and the decision caches' counters."""
        infos = [
            decide.cache_info() for decide in (self._may_publish, self._may_subscribe, self._may_receive)
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
        return rules is not None and rules.publish.has_match(topic)

    def _decide_subscribe(self, username: str | None, filter_: str) -> bool:
        if not _is_topic_filter(filter_):
            return False
        if self._rules is None:
            return True
        rules = self._rules.get(ANONYMOUS if username is None else username)
        return rules is not None and any(
            filter_covers(allowed, filter_) for allowed in rules.subscribe_filters
        )

    def _decide_receive(self, username: str | None, topic: str) -> bool:
        if not _is_topic_name(topic):
            return False
        if self._rules is None:
            return True
        rules = self._rules.get(ANONYMOUS if username is None else username)
        return rules is not None and rules.subscribe.has_match(topic)

    def may_use_client_id(self, username: str | None, client_id: str) -> bool:
        """Placeholder until the ACL's client_ids land: every client id is allowed."""
        del username, client_id
        return True
