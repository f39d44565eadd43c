"""Property tests of the wrapper's edges (tests/properties/test_decoders.py covers the stream
decoders and the Vestnik config): the stdout line splitter, the protocol line decoder and
the alert.toml loader. Whatever an alert prints or a config holds, the result is the right
lines / a Struct / a ConfigError naming the file — never another exception, and never more
than `max_line` bytes held for a line however long it is."""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from vestnik.streams.config import ConfigError
from vestnik.wrapper.config import AlertConfig, parse
from vestnik.wrapper.lines import SAMPLE, LineSplitter, Oversized
from vestnik.wrapper.protocol import FromAlert, decode_line

line_bytes = st.binary(max_size=80).map(lambda b: b.replace(b"\n", b"")) | st.sampled_from(
    [b"", b'{"type":"heartbeat"}', b"x" * 300])


@settings(max_examples=500, deadline=None)
@given(lines=st.lists(line_bytes, max_size=12), trailing=st.booleans(),
       max_line=st.integers(1, 120), cuts=st.lists(st.integers(0, 2000), max_size=10))
def test_splitter_yields_every_line_or_its_size_whatever_the_chunking(lines, trailing,
                                                                     max_line, cuts):
    data = b"\n".join(lines) + (b"\n" if trailing else b"")
    expected = data.split(b"\n")
    if expected and expected[-1] == b"":
        expected.pop()  # a final newline ends the last line; it starts no new one
    bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    splitter = LineSplitter(max_line)
    out = []
    for a, b in pairwise(bounds):
        out += splitter.feed(data[a:b])
        assert len(splitter._buf) <= max_line  # never holds more than one allowed line
    out += splitter.end()
    assert [n for n, _ in out] == list(range(1, len(expected) + 1))
    for (_, got), want in zip(out, expected, strict=True):
        if len(want) <= max_line:
            assert got == want
        else:
            assert isinstance(got, Oversized)
            # the sample is the line's first bytes: up to SAMPLE, or what had arrived when
            # the line went over the limit (the rest is never held)
            assert got.size == len(want) and want.startswith(got.sample)
            assert 0 < len(got.sample) <= SAMPLE


tags = st.sampled_from(["hello", "notice", "resolve", "error", "heartbeat", "settings", "x"])
values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=3),
    max_leaves=8)
fields = st.sampled_from(["title", "body", "severity", "entity", "data", "setting_id",
                          "dedup_key", "recipients", "link", "forward_after", "heartbeat",
                          "message", "protocol", "extra"])


@settings(max_examples=500, deadline=None)
@given(tag=tags, obj=st.dictionaries(fields, values, max_size=5))
def test_protocol_line_is_a_message_or_a_named_error(tag, obj):
    line = msgspec.json.encode({"type": tag, **obj})
    try:
        msg = decode_line(line)
    except msgspec.ValidationError as e:
        assert "$" in str(e) or "type" in str(e) or "field" in str(e), e
    else:
        assert isinstance(msg, FromAlert)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_decode_or_fail_as_msgspec_errors(raw):
    try:
        decode_line(raw)
    except (msgspec.ValidationError, msgspec.DecodeError):
        pass


keys = st.sampled_from(["name", "command", "topics", "cwd", "env", "redis_url", "prefix",
                        "admins", "grace", "max_line", "queue_size", "unknown"])
toml_values = st.one_of(st.text(max_size=12), st.integers(-5, 10**7), st.booleans(),
                        st.lists(st.text(max_size=6), max_size=3), st.floats(-1, 100))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(keys, toml_values, max_size=6),
       st.sampled_from(["", "[restart]\npolicy = \"always\"\n", "[restart]\nbackoff_min = -1\n",
                        "[restart]\nnope = 1\n", "= broken\n"]))
def test_alert_toml_loads_or_names_the_file(tmp_path_factory, table, tail):
    base: Path = tmp_path_factory.getbasetemp()
    text = "".join(f"{k} = {json.dumps(v)}\n" for k, v in table.items()) + tail
    try:
        cfg = parse(text, source="alert.toml", env={"VESTNIK_REDIS_URL": "redis://127.0.0.1:1"},
                    base=base)
    except ConfigError as e:
        assert str(e).startswith("alert.toml: "), e
    else:
        assert isinstance(cfg, AlertConfig) and cfg.name and cfg.command
