"""Property tests of the edge decoders: whatever bytes arrive in a stream entry or a config,
the result is a valid Struct or a BadInput/ConfigError naming a field — never another
exception, never a silent half-value."""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from vestnik.streams.config import Config, ConfigError, load
from vestnik.streams.errors import BadInput
from vestnik.streams.schemas import (
    NoticeIn,
    TopicEvent,
    decode_notice_entry,
    decode_topic_entry,
    notice_fields,
    topic_fields,
)

field_names = st.sampled_from(["op", "id", "data", "ts", "src", "alert", "title", "severity",
                               "recipients", "metric", "body", "x"])
raw_fields = st.dictionaries(
    st.one_of(field_names.map(str.encode), st.binary(max_size=8)),
    st.one_of(st.binary(max_size=64), st.sampled_from([b"create", b"update", b"delete",
                                                       b"{}", b'{"a":1}', b"[1,2]", b"1,2",
                                                       b"info", b"warning", b"12"])),
    max_size=8,
)


@settings(max_examples=400, deadline=None)
@given(raw_fields)
def test_topic_entry_decodes_or_names_a_field(fields):
    try:
        ev = decode_topic_entry(fields)
    except BadInput as e:
        assert e.field and e.field.startswith("$")
    else:
        assert ev.op in ("create", "update", "delete") and ev.id
        assert ev.data is None or isinstance(ev.data, dict)


@settings(max_examples=400, deadline=None)
@given(raw_fields)
def test_notice_entry_decodes_or_names_a_field(fields):
    try:
        n = decode_notice_entry(fields)
    except BadInput as e:
        assert e.field and e.field.startswith("$")
    else:
        assert n.title and n.alert and n.severity in ("info", "warning", "critical")
        assert all(isinstance(r, str) for r in n.recipients or [])


def _wire(fields):
    return {k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in fields.items()}


text = st.text(min_size=1, max_size=30).filter(lambda s: s.strip() == s and "," not in s)
# ids never hold a control character (CR, LF, NUL...): they may become header lines
ids = text.filter(lambda s: not any(ord(c) < 32 or ord(c) == 127 for c in s))


@settings(max_examples=200, deadline=None)
@given(alert=ids, title=text, severity=st.sampled_from(["info", "warning", "critical"]),
       recipients=st.lists(ids, max_size=4), data=st.dictionaries(text, st.integers()))
def test_notice_round_trips_through_stream_fields(alert, title, severity, recipients, data):
    n = NoticeIn(alert=alert, title=title, severity=severity, recipients=recipients or None,
                 data=data)
    assert decode_notice_entry(_wire(notice_fields(n))) == n


@settings(max_examples=200, deadline=None)
@given(op=st.sampled_from(["create", "update", "delete"]), id=ids,
       data=st.none() | st.dictionaries(text, st.integers() | st.text(max_size=5)))
def test_topic_event_round_trips(op, id, data):
    ev = TopicEvent(op=op, id=id, data=data, ts=1, src="t")
    assert decode_topic_entry(_wire(topic_fields(ev))) == ev


env_keys = st.sampled_from([f"VESTNIK_{f.name.upper()}" for f in msgspec.structs.fields(Config)])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(env_keys, st.text(max_size=20), max_size=4))
def test_config_loads_or_names_the_key(env):
    try:
        s = load(env)
    except ConfigError as e:
        assert any(k in str(e) for k in env) or "environment" in str(e)
    else:
        assert isinstance(s, Config)


def test_deeply_nested_json_is_bad_input_not_a_crash():
    deep = b"[" * 100_000 + b"]" * 100_000
    for decode, fields in ((decode_topic_entry, {b"op": b"update", b"id": b"1", b"data": deep}),
                           (decode_notice_entry, {b"alert": b"a", b"title": b"t",
                                                  b"data": deep})):
        try:
            decode(fields)
        except BadInput as e:
            assert e.field == "$.data"
        else:
            raise AssertionError("accepted a 100,000-level document")


@settings(max_examples=200, deadline=None)
@given(good=st.lists(ids, max_size=3), bad=ids, control=st.sampled_from("\r\n\x00\x1b\x7f"),
       at=st.integers(0, 30))
def test_a_recipient_id_with_a_control_character_is_refused_by_index(good, bad, control, at):
    hostile = bad[:at] + control + bad[at:]
    fields = {b"alert": b"a", b"title": b"t",
              b"recipients": msgspec.json.encode([*good, hostile])}
    try:
        decode_notice_entry(fields)
    except BadInput as e:
        assert e.field == f"$.recipients[{len(good)}]"
    else:
        raise AssertionError(f"accepted {hostile!r}")
