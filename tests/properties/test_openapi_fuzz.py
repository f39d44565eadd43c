"""schemathesis against /openapi.json of a real `vestnik api`: generated requests (valid and
invalid: both generation modes) to every operation, with a service token on service routes
and a user token on /me routes. No answer is a 5xx; every answer matches the status codes,
content types, headers and JSON schemas the document declares. SSE streams are left out
(they never end); their auth and resume are tested in tests/test_auth.py and tests/faults.

Bounded for CI: MAX_EXAMPLES generated cases per operation (VESTNIK_FUZZ_EXAMPLES raises it).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from itertools import product
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from support import SERVICE_TOKEN, Api, Proc, base_env, vestnik_argv, wait_http
from vestnik.app.tokens import issue_token
from vestnik.streams.config import load
from vestnik.streams.redis_server import RedisServer, free_port

MAX_EXAMPLES = int(os.environ.get("VESTNIK_FUZZ_EXAMPLES", "15"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def fuzz_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """One api for the module, on its own Redis (whatever the fuzzer writes stays there)."""
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    server = RedisServer(tmp / "redis", appendonly=False).start()
    env = base_env(server.url, VESTNIK_MAX_BODY="65536")
    port = free_port()
    proc = Proc(vestnik_argv("api", "--port", str(port)), env, tmp / "api.log").start()
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", proc=proc, timeout=30)
        yield Api(f"http://127.0.0.1:{port}", proc, SERVICE_TOKEN, env)
    finally:
        proc.stop()
        server.stop()
    assert "Traceback" not in proc.output(), proc.output()[-3000:]


def test_no_5xx_and_responses_match_the_document(fuzz_api: Api):
    schema = schemathesis.openapi.from_url(f"{fuzz_api.base}/openapi.json")
    user = issue_token(load(fuzz_api.env), "1", 3600)
    tried: list[str] = []
    for result, mode in product(schema.get_all_operations(), GenerationMode):
        op = result.ok()
        if op.path.endswith("/stream"):
            continue  # SSE never ends; covered by the auth and fault tests
        auth = {"Authorization": "Bearer " + (
            user if op.path.startswith("/api/v1/me/") else fuzz_api.service_token)}

        @given(case=op.as_strategy(generation_mode=mode))
        @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case) -> None:
            headers = {**auth, **(case.headers or {})}  # noqa: B023 (run right below)
            case.call_and_validate(base_url=fuzz_api.base, headers=headers, checks=CHECKS,
                                   timeout=10)

        try:
            check()
        except Unsatisfiable:  # nothing to make invalid (no parameters, no body)
            assert mode is GenerationMode.NEGATIVE, op.path
            continue
        tried.append(f"{op.method.upper()} {op.path} {mode.value}")
    assert len(tried) >= 30, tried
