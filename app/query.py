"""Query strings decoded once at the edge: a route declares its query as a msgspec Struct,
the router decodes every request's query through it (400 naming the parameter) and
/openapi.json describes the same Struct, so the document and the validation cannot drift.

A field's description is its `msgspec.Meta(description=...)`; an empty value (`?limit=`)
counts as absent, so the field's default applies; unknown parameters are ignored (a cache
buster or a tracking parameter must not break a link).
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec
from starlette.requests import Request

from vestnik.streams.errors import BadRequest

S = TypeVar("S", bound=msgspec.Struct)

_AT = re.compile(r" - at `\$\.([^`]+)`$")


def decode_query(request: Request, typ: type[S]) -> S:
    """The request's query as `typ`; BadRequest naming the first bad parameter."""
    given = {k: v for k, v in request.query_params.items() if v != ""}
    try:
        return msgspec.convert(given, typ, strict=False)
    except msgspec.ValidationError as e:
        text = str(e)
        m = _AT.search(text)
        name = m.group(1) if m else "query"
        detail = text[: m.start()] if m else text
        raise BadRequest(f"query parameter `{name}`: {detail[:1].lower()}{detail[1:]}",
                         field=name) from None


def query_of(request: Request, typ: type[S]) -> S:
    """The query the router decoded for this route (declared with `query=typ`)."""
    query = getattr(request.state, "query", None)
    if not isinstance(query, typ):  # the handler asks for another Struct than it declared
        raise TypeError(f"{request.url.path}: its route declares query={type(query).__name__}, "
                        f"the handler reads {typ.__name__}")
    return query


def query_parameters(typ: type[msgspec.Struct], schema_hook: Any = None) -> list[dict[str, Any]]:
    """OpenAPI `in: query` parameters of a query Struct, each with its field's own schema."""
    (ref,), defs = msgspec.json.schema_components([typ], schema_hook=schema_hook)
    struct = defs[ref["$ref"].rsplit("/", 1)[1]]
    required = set(struct.get("required", ()))
    params = []
    for name, prop in struct["properties"].items():
        schema = _without_null(prop)
        description = schema.pop("description", "")
        if schema.get("default", 0) is None:
            del schema["default"]
        params.append({"name": name, "in": "query", "required": name in required,
                       "description": description, "schema": schema})
    return params


def _without_null(prop: dict[str, Any]) -> dict[str, Any]:
    """`X | None = None` is an absent parameter, never a JSON null: describe it as X."""
    options = [s for s in prop.get("anyOf", ()) if s != {"type": "null"}]
    if "anyOf" not in prop or len(options) != 1:
        return dict(prop)
    return {**options[0], **{k: v for k, v in prop.items() if k != "anyOf"}}
