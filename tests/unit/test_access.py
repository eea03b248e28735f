"""Unit and property tests for headwater.core.access."""

from __future__ import annotations

import fnmatch
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.core.access import ANONYMOUS, PROTECTED_STREAMS, AccessPolicy
from headwater.core.config import TopicACL
from headwater.core.stream_rights import StreamRights
from headwater.core.topics import InvalidTopicError, filter_covers, topic_matches
from headwater.plugins.upload.plugin import DEAD_LETTER_STREAM

ACL = {
    ANONYMOUS: TopicACL(publish=("public/#",), subscribe=("public/#", "headwater/+/status")),
    "alice": TopicACL(publish=("sensors/alice/#", "headwater/#"), subscribe=("#", "$SYS/#")),
    "device": TopicACL(publish=("sensors/%u/telemetry",), subscribe=("commands/%u/#",)),
    "nobody": TopicACL(),
}


@pytest.fixture
def policy() -> AccessPolicy:
    return AccessPolicy(ACL)


def test_no_acl_allows_every_valid_topic() -> None:
    policy = AccessPolicy(None)
    assert not policy.restricted
    for username in (None, "anyone"):
        assert policy.may_publish(username, "a/b")
        assert policy.may_publish(username, "$SYS/x")
        assert policy.may_subscribe(username, "#")
        assert policy.may_receive(username, "$SYS/x")


@pytest.mark.parametrize("acl", [None, {"alice": TopicACL(publish=("#",), subscribe=("#",))}])
def test_invalid_topics_are_never_allowed(acl: dict[str, TopicACL] | None) -> None:
    policy = AccessPolicy(acl)
    assert not policy.may_publish("alice", "a/+")
    assert not policy.may_publish("alice", "")
    assert not policy.may_publish("alice", "a\x00")
    assert not policy.may_receive("alice", "a/#")
    assert not policy.may_subscribe("alice", "a/#/b")
    assert not policy.may_subscribe("alice", "")


def test_anonymous_entry_applies_to_clients_without_username(policy: AccessPolicy) -> None:
    assert policy.restricted
    assert policy.may_publish(None, "public/chat")
    assert not policy.may_publish(None, "sensors/alice/t")
    assert policy.may_subscribe(None, "public/+")
    assert policy.may_subscribe(None, "headwater/+/status")
    assert policy.may_subscribe(None, "headwater/deploy/status")
    assert not policy.may_subscribe(None, "headwater/#")
    assert policy.may_receive(None, "headwater/deploy/status")
    assert not policy.may_receive(None, "headwater/deploy/web")


def test_unknown_user_gets_nothing(policy: AccessPolicy) -> None:
    for username in ("mallory", ""):
        assert not policy.may_publish(username, "public/chat")
        assert not policy.may_subscribe(username, "public/#")
        assert not policy.may_receive(username, "public/chat")


def test_user_with_empty_entry_gets_nothing(policy: AccessPolicy) -> None:
    assert not policy.may_publish("nobody", "a")
    assert not policy.may_subscribe("nobody", "a")
    assert not policy.may_receive("nobody", "a")


def test_named_user(policy: AccessPolicy) -> None:
    assert policy.may_publish("alice", "sensors/alice")
    assert policy.may_publish("alice", "sensors/alice/t/1")
    assert not policy.may_publish("alice", "sensors/bob/t")
    assert policy.may_subscribe("alice", "#")
    assert policy.may_subscribe("alice", "+/x/#")
    assert policy.may_subscribe("alice", "$SYS/broker/+")
    assert policy.may_receive("alice", "anything/at/all")
    assert policy.may_receive("alice", "$SYS/broker/uptime")


def test_hash_grant_does_not_reach_dollar_topics() -> None:
    policy = AccessPolicy({"bob": TopicACL(publish=("#",), subscribe=("#",))})
    assert policy.may_receive("bob", "a/b")
    assert not policy.may_receive("bob", "$SYS/broker/uptime")
    assert not policy.may_subscribe("bob", "$SYS/#")
    assert not policy.may_publish("bob", "$internal")


def test_subscribe_needs_one_covering_filter() -> None:
    policy = AccessPolicy({"bob": TopicACL(subscribe=("a", "a/+/#"))})
    assert policy.may_subscribe("bob", "a")
    assert policy.may_subscribe("bob", "a/x/y")
    # 'a/#' is covered by the union of both rules, but by neither alone: refused.
    assert not policy.may_subscribe("bob", "a/#")
    assert policy.may_receive("bob", "a")
    assert policy.may_receive("bob", "a/x")


def test_username_placeholder_is_substituted(policy: AccessPolicy) -> None:
    assert policy.may_publish("device", "sensors/device/telemetry")
    assert not policy.may_publish("device", "sensors/%u/telemetry")
    assert not policy.may_publish("device", "sensors/other/telemetry")
    assert policy.may_subscribe("device", "commands/device/#")
    assert not policy.may_subscribe("device", "commands/#")
    assert policy.may_receive("device", "commands/device/reboot")


def test_username_placeholder_inside_a_level() -> None:
    policy = AccessPolicy({"kitchen": TopicACL(publish=("rooms/%u-sensors/+",))})
    assert policy.may_publish("kitchen", "rooms/kitchen-sensors/temp")
    assert not policy.may_publish("kitchen", "rooms/hall-sensors/temp")


def test_username_placeholder_never_matches_anonymous() -> None:
    shared = TopicACL(publish=("users/%u/#", "public"), subscribe=("users/%u/#",))
    policy = AccessPolicy({ANONYMOUS: shared})
    assert policy.may_publish(None, "public")
    assert not policy.may_publish(None, "users/%u/x")
    assert not policy.may_publish(None, "users/anonymous/x")
    assert not policy.may_publish(None, "users//x")
    assert not policy.may_receive(None, "users/anonymous/x")
    assert not policy.may_subscribe(None, "users/anonymous/#")


@pytest.mark.parametrize("username", ["a/b", "a+", "a#", "a\x00"])
def test_username_placeholder_refuses_shape_changing_usernames(username: str) -> None:
    policy = AccessPolicy({username: TopicACL(publish=("users/%u/#", "public"), subscribe=("users/%u",))})
    assert policy.may_publish(username, "public")
    assert not policy.may_publish(username, "users/a/b/x")
    assert not policy.may_publish(username, "users/a")
    assert not policy.may_receive(username, "users/a/b")


def test_empty_username_placeholder_applies_to_nothing() -> None:
    policy = AccessPolicy({"": TopicACL(publish=("users/%u/#",))})
    assert not policy.may_publish("", "users//x")


@pytest.mark.parametrize(
    ("acl", "message"),
    [
        ({"alice": TopicACL(publish=("ok", "a/#/b"))}, "acl.alice.publish[1]"),
        ({"alice": TopicACL(subscribe=("a+",))}, "acl.alice.subscribe[0]"),
        ({ANONYMOUS: TopicACL(subscribe=("",))}, "acl.anonymous.subscribe[0]"),
    ],
)
def test_invalid_acl_filters_are_refused_at_construction(acl: dict[str, TopicACL], message: str) -> None:
    with pytest.raises(InvalidTopicError, match=message.replace("[", r"\[").replace("]", r"\]")):
        AccessPolicy(acl)


def test_placeholder_substitution_can_make_a_filter_too_long() -> None:
    username = "u" * 40000
    with pytest.raises(InvalidTopicError, match=r"after %u"):
        AccessPolicy({username: TopicACL(publish=("%u/%u",))})


def test_negative_cache_size_is_refused() -> None:
    with pytest.raises(ValueError, match="cache_size"):
        AccessPolicy(None, cache_size=-1)


def test_cache_counts_hits_and_stays_bounded() -> None:
    policy = AccessPolicy(ACL, cache_size=8)
    assert policy.may_publish("alice", "headwater/x")
    assert policy.may_publish("alice", "headwater/x")
    stats = policy.statistics()
    assert (stats.cache_hits, stats.cache_misses, stats.cache_entries) == (1, 1, 1)
    assert stats.users == 4
    assert stats.restricted
    for number in range(100):
        policy.may_publish("alice", f"headwater/{number}")
        policy.may_receive("alice", f"x/{number}")
    assert policy.statistics().cache_entries == 16


def test_uncached_policy_decides_the_same() -> None:
    cached, uncached = AccessPolicy(ACL), AccessPolicy(ACL, cache_size=0)
    for username in (None, "alice", "device", "mallory"):
        for topic in ("public/a", "sensors/device/telemetry", "headwater/x/status", "$SYS/x"):
            for _ in range(2):
                assert cached.may_publish(username, topic) == uncached.may_publish(username, topic)
                assert cached.may_receive(username, topic) == uncached.may_receive(username, topic)
                assert cached.may_subscribe(username, topic) == uncached.may_subscribe(username, topic)
    assert uncached.statistics().cache_entries == 0


# --- properties: the policy equals the rules applied one by one -----------------------------

LEVELS = ["a", "b", "", "$x", "alice"]
topic_names = st.lists(st.sampled_from(LEVELS), min_size=1, max_size=4).map("/".join).filter(bool)


@st.composite
def topic_filters(draw: st.DrawFn) -> str:
    levels = draw(st.lists(st.sampled_from([*LEVELS, "+", "%u"]), min_size=1, max_size=4))
    if draw(st.booleans()):
        levels[-1] = "#"
    return "/".join(levels) or "+"


filter_tuples = st.lists(topic_filters(), max_size=4).map(tuple)


@given(
    publish=filter_tuples,
    subscribe=filter_tuples,
    username=st.sampled_from([None, "alice"]),
    topic=topic_names,
    requested=topic_filters().filter(lambda filter_: "%u" not in filter_),
)
@settings(max_examples=1000)
def test_policy_agrees_with_brute_force(
    publish: tuple[str, ...],
    subscribe: tuple[str, ...],
    username: str | None,
    topic: str,
    requested: str,
) -> None:
    key = ANONYMOUS if username is None else username
    policy = AccessPolicy({key: TopicACL(publish=publish, subscribe=subscribe)})

    def effective(filters: tuple[str, ...]) -> list[str]:
        if username is None:
            return [filter_ for filter_ in filters if "%u" not in filter_]
        return [filter_.replace("%u", username) for filter_ in filters]

    assert policy.may_publish(username, topic) == any(
        topic_matches(filter_, topic) for filter_ in effective(publish)
    )
    assert policy.may_receive(username, topic) == any(
        topic_matches(filter_, topic) for filter_ in effective(subscribe)
    )
    assert policy.may_subscribe(username, requested) == any(
        filter_covers(filter_, requested) for filter_ in effective(subscribe)
    )
    # Nobody else gets anything from this ACL.
    assert not policy.may_publish("mallory", topic)
    assert not policy.may_receive("mallory", topic)


# --- client ids -----------------------------------------------------------------------------


def test_client_ids_without_acl_or_without_the_key_are_free() -> None:
    assert AccessPolicy(None).may_use_client_id("anyone", "anything")
    policy = AccessPolicy({"alice": TopicACL(publish=("#",))})
    assert policy.may_use_client_id("alice", "whatever-she-likes")
    assert not policy.may_use_client_id("mallory", "whatever")
    assert not policy.may_use_client_id(None, "whatever")


def test_client_id_patterns_match_the_whole_id() -> None:
    policy = AccessPolicy({"bob": TopicACL(client_ids=("%u-*", "pump-??", "a*b*c", "exact"))})
    for client_id in ("bob-", "bob-laptop", "pump-12", "abc", "a-b-c", "abbc", "abcbc", "exact"):
        assert policy.may_use_client_id("bob", client_id), client_id
    for client_id in ("bob", "xbob-1", "pump-1", "pump-123", "ab", "acb", "abcx", "exactly", "", "%u-1"):
        assert not policy.may_use_client_id("bob", client_id), client_id


def test_empty_client_ids_list_allows_no_client_id() -> None:
    policy = AccessPolicy({"bob": TopicACL(client_ids=())})
    assert not policy.may_use_client_id("bob", "bob-1")


@pytest.mark.parametrize("username", ["a/b", "a+", "a#", "a*", "a?", "a\x00", ""])
def test_client_id_placeholder_refuses_shape_changing_usernames(username: str) -> None:
    policy = AccessPolicy({username: TopicACL(client_ids=("%u", "%u-*", "fixed"))})
    assert policy.may_use_client_id(username, "fixed")
    # Such a username never substitutes, not even as literal text (as with topic filters).
    for client_id in (username, f"{username}-1", "a-anything", "aX", "-1"):
        assert not policy.may_use_client_id(username, client_id)


def test_client_id_placeholder_never_applies_to_anonymous() -> None:
    policy = AccessPolicy({ANONYMOUS: TopicACL(client_ids=("%u-*", "guest-*"))})
    assert policy.may_use_client_id(None, "guest-1")
    assert not policy.may_use_client_id(None, "anonymous-1")
    assert not policy.may_use_client_id(None, "-1")


def test_client_id_matching_does_not_backtrack() -> None:
    # Many stars against a long id that almost matches: polynomial for a backtracking regex.
    policy = AccessPolicy({"bob": TopicACL(client_ids=("*a*a*a*a*a*a*a*a*b",))})
    assert not policy.may_use_client_id("bob", "a" * 60_000)
    assert policy.may_use_client_id("bob", "a" * 60_000 + "b")


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (TopicACL(client_ids=("ok", "")), "acl.bob.client_ids[1]: a name pattern must not be empty"),
        (TopicACL(client_ids=("%c-1",)), "acl.bob.client_ids[0]: '%' must be followed by 'u'"),
        (TopicACL(stream_admin=("a%",)), "acl.bob.streams.admin[0]: '%' must be followed by 'u'"),
    ],
)
def test_invalid_name_patterns_are_refused_at_construction(entry: TopicACL, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        AccessPolicy({"bob": entry})


def test_client_id_decisions_are_cached() -> None:
    policy = AccessPolicy({"bob": TopicACL(client_ids=("%u-*",))}, cache_size=4)
    assert policy.may_use_client_id("bob", "bob-1")
    assert policy.may_use_client_id("bob", "bob-1")
    stats = policy.statistics()
    assert (stats.cache_hits, stats.cache_misses) == (1, 1)


@given(
    pattern=st.text(alphabet="ab*?", max_size=8).filter(bool),
    client_id=st.text(alphabet="ab", max_size=10),
)
@settings(max_examples=1000)
def test_client_id_patterns_agree_with_fnmatch(pattern: str, client_id: str) -> None:
    policy = AccessPolicy({"bob": TopicACL(client_ids=(pattern,))})
    assert policy.may_use_client_id("bob", client_id) == fnmatch.fnmatchcase(client_id, pattern)


# --- stream rights --------------------------------------------------------------------------

STREAMS_ACL = {
    "ops": TopicACL(
        publish=("headwater/streams/#",),
        subscribe=("headwater/streams/#",),
        stream_read=("*",),
        stream_append=("aggregates",),
        stream_admin=("aggregates", "tmp-*", "%u-?"),
    ),
    # No streams key: read and append follow the topic rules, admin is none.
    "topical": TopicACL(
        publish=("headwater/streams/#",),
        subscribe=("headwater/streams/telemetry/records", "headwater/streams/+/status"),
    ),
    "auditor": TopicACL(stream_read=("dead-letter",), stream_admin=("dead-*",)),
    "dead": TopicACL(stream_read=("%u-letter",), stream_admin=("dead-lette?",)),
}


@pytest.fixture
def rights() -> StreamRights:
    return StreamRights(AccessPolicy(STREAMS_ACL), topic_prefix="headwater")


def test_protected_streams_hold_the_upload_plugins_dead_letter_stream() -> None:
    assert DEAD_LETTER_STREAM in PROTECTED_STREAMS


def test_listed_rights(rights: StreamRights) -> None:
    assert rights.may("ops", "read", "telemetry")
    assert rights.may("ops", "describe", "telemetry")
    assert rights.may("ops", "append", "aggregates")
    assert not rights.may("ops", "append", "telemetry")
    assert rights.may("ops", "admin", "tmp-1")
    assert rights.may("ops", "admin", "ops-1")
    assert not rights.may("ops", "admin", "ops-12")
    assert not rights.may("ops", "admin", "telemetry")
    assert rights.refusal("ops", "admin", "telemetry") == (
        "may not administer stream 'telemetry' (not in its streams.admin)"
    )
    assert rights.refusal("ops", "append", "telemetry") == (
        "may not append to stream 'telemetry' (not in its streams.append)"
    )


def test_rights_derived_from_topic_rules(rights: StreamRights) -> None:
    assert rights.may("topical", "read", "telemetry")
    assert (
        rights.refusal("topical", "read", "audit") == "may not subscribe to headwater/streams/audit/records"
    )
    assert rights.may("topical", "describe", "audit")
    assert rights.may("topical", "append", "audit")
    # Admin is never derived, not even from publish rights on every request topic.
    assert rights.refusal("topical", "admin", "audit") == (
        "may not administer stream 'audit' (not in its streams.admin)"
    )


def test_a_topic_prefix_of_its_own() -> None:
    access = AccessPolicy({"bob": TopicACL(subscribe=("hub/streams/+/records",))})
    assert StreamRights(access, topic_prefix="hub").may("bob", "read", "x")
    assert not StreamRights(access, topic_prefix="headwater").may("bob", "read", "x")


def test_dead_letter_needs_a_pattern_spelling_it_out(rights: StreamRights) -> None:
    for action in ("read", "describe", "append", "admin"):
        for user in ("ops", "topical", "dead"):
            assert not rights.may(user, action, "dead-letter"), (user, action)
    assert rights.refusal("ops", "read", "dead-letter") == (
        "may not read stream 'dead-letter' "
        "(only 'dead-letter' itself in its streams.read grants it, no wildcard)"
    )
    assert rights.may("auditor", "read", "dead-letter")
    assert rights.may("auditor", "describe", "dead-letter")
    assert not rights.may("auditor", "admin", "dead-letter")  # dead-* is a wildcard
    assert rights.may("auditor", "admin", "dead-letters")  # which still matches other names


def test_without_acl_every_right_is_granted_dead_letter_included() -> None:
    rights = StreamRights(AccessPolicy(None), topic_prefix="headwater")
    for action in ("read", "describe", "append", "admin"):
        assert rights.may(None, action, "dead-letter")
        assert rights.may("anyone", action, "x")


def test_users_without_entry_get_no_stream_rights(rights: StreamRights) -> None:
    for action in ("read", "describe", "append", "admin"):
        assert not rights.may("mallory", action, "telemetry")
        assert not rights.may(None, action, "telemetry")


def test_stream_rights_placeholder_follows_the_topic_rules() -> None:
    acl = {
        ANONYMOUS: TopicACL(stream_admin=("%u-*",), stream_read=()),
        "a*": TopicACL(stream_admin=("%u",)),
    }
    rights = StreamRights(AccessPolicy(acl), topic_prefix="headwater")
    assert not rights.may(None, "admin", "anonymous-1")
    assert not rights.may("a*", "admin", "ab")
    assert not rights.may("a*", "admin", "a*")


def test_stream_rights_are_cached(rights: StreamRights) -> None:
    assert rights.may("ops", "admin", "tmp-1")
    assert rights.may("ops", "admin", "tmp-1")
    stats = rights.statistics()
    assert (stats.cache_hits, stats.cache_misses, stats.cache_entries) == (1, 1, 1)
    uncached = StreamRights(AccessPolicy(STREAMS_ACL), topic_prefix="headwater", cache_size=0)
    assert uncached.may("ops", "admin", "tmp-1")
    assert uncached.statistics().cache_entries == 0
    with pytest.raises(ValueError, match="cache_size"):
        StreamRights(AccessPolicy(None), topic_prefix="headwater", cache_size=-1)


# --- deny rules ---------------------------------------------------------------------------------


DENY_ACL = {
    "dev": TopicACL(
        publish=("#",),
        subscribe=("+/+", "sensors/#"),
        deny_publish=("headwater/#",),
        deny_subscribe=("test/nosubscribe", "sensors/secret/#"),
    ),
    ANONYMOUS: TopicACL(publish=("users/#",), subscribe=("users/#",), deny_subscribe=("users/%u/inbox",)),
    "eve": TopicACL(subscribe=("users/#",), deny_subscribe=("users/%u/#",)),
}


def test_a_deny_wins_over_an_allow_for_publish_and_receive() -> None:
    policy = AccessPolicy(DENY_ACL)
    assert policy.may_publish("dev", "sensors/dev/t")
    assert not policy.may_publish("dev", "headwater/deploy/x")
    assert policy.may_receive("dev", "test/other")
    assert not policy.may_receive("dev", "test/nosubscribe")
    assert not policy.may_receive("dev", "sensors/secret/key")
    assert policy.may_receive("dev", "sensors/public/t")


def test_a_subscribe_is_refused_only_when_a_deny_covers_the_whole_filter() -> None:
    policy = AccessPolicy(DENY_ACL)
    assert not policy.may_subscribe("dev", "test/nosubscribe")
    assert not policy.may_subscribe("dev", "sensors/secret/+")
    assert not policy.may_subscribe("dev", "sensors/secret/#")
    # Overlapping only: granted, and the receive check drops the denied topics.
    assert policy.may_subscribe("dev", "test/other")
    assert policy.may_subscribe("dev", "+/+")
    assert policy.may_subscribe("dev", "sensors/#")


def test_a_deny_with_an_inapplicable_username_fails_closed() -> None:
    policy = AccessPolicy(DENY_ACL)
    # Anonymous has no username: its deny covers every user's inbox instead of none.
    assert not policy.may_receive(None, "users/alice/inbox")
    assert policy.may_receive(None, "users/alice/outbox")
    assert not policy.may_subscribe(None, "users/+/inbox")
    # eve's own tree is denied, other users' are not.
    assert not policy.may_receive("eve", "users/eve/x")
    assert policy.may_receive("eve", "users/bob/x")
    unsafe = AccessPolicy({"a/b": TopicACL(subscribe=("#",), deny_subscribe=("users/%u/#",))})
    assert not unsafe.may_receive("a/b", "users/anyone/x")


def test_an_invalid_deny_filter_names_its_entry() -> None:
    with pytest.raises(InvalidTopicError, match=r"acl\.dev\.deny\.subscribe\[1\]"):
        AccessPolicy({"dev": TopicACL(deny_subscribe=("ok", "a/#/b"))})
