"""Service tokens are compared in constant time: hmac.compare_digest against every configured
token, with no early exit, so neither the position of a match nor a matching prefix shows in
the time a request takes. (Timing itself is too noisy to measure on a shared box; this is
checked by inspection and by counting the comparisons.)"""

from __future__ import annotations

import hmac
import inspect

import pytest

from vestnik.app import tokens
from vestnik.app.tokens import is_service_token
from vestnik.streams.config import Config, load

TOKENS = ["svc-first-" + "a" * 24, "svc-second-" + "b" * 24, "svc-third-" + "c" * 24]


def _config() -> Config:
    return load({"VESTNIK_SERVICE_TOKENS": ",".join(TOKENS)})


def test_the_comparison_is_hmac_compare_digest_with_no_early_exit():
    src = inspect.getsource(is_service_token)
    assert "hmac.compare_digest" in src
    assert "return True" not in src and "break" not in src  # no exit on the first match
    assert " == " not in src and "in config.service_tokens" not in src.split("for")[0]


@pytest.mark.parametrize("given, expected", [
    (TOKENS[0], True), (TOKENS[2], True), (TOKENS[0][:-1] + "x", False), ("", False),
    ("svc-first-", False), (TOKENS[0] + "a", False), ("é" * 10, False),
])
def test_every_configured_token_is_compared_every_time(monkeypatch, given: str, expected: bool):
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(tokens.hmac, "compare_digest", counting)
    assert is_service_token(_config(), given) is expected
    assert [b for _, b in calls] == [t.encode() for t in TOKENS]
    assert all(isinstance(a, bytes) and isinstance(b, bytes) for a, b in calls)
