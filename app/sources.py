"""Sources: alerts of other systems into the ingest stream (`vn:notices`).

`POST /api/v1/sources/alertmanager` (service token) takes Prometheus Alertmanager's webhook
(payload version 4). A firing alert becomes a notice of the alert `labels.alertname`, its
incident key (`dedup_key`) the alert's fingerprint, its recipients those of the settings
named like the alert (the center's rule for a notice without recipients). A resolved alert
becomes an `op resolve` entry for that incident.

Alertmanager sends a group's alerts again and again (every `group_interval` while the group
changes, every `repeat_interval`), and again after a failed send (any non-2xx). So:
- a notice's id derives from the alert (fingerprint, startsAt, content): a re-send adds the
  same notice again, which the center stores once; changed annotations make a repeat, which
  folds into the incident's notice;
- an alert that can never be taken (a bad alertname, a wrong type) is skipped and named in
  the reply (`skipped: [{path, detail}]`) and the log, while the payload's other alerts go
  on: refusing the payload would have Alertmanager send it, and fail, forever. Only a payload
  that is wrong as a whole (not JSON, `version` other than "4", more than MAX_ALERTS alerts,
  larger than VESTNIK_MAX_BODY) is refused (422 / 413, naming the field).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from vestnik.app.context import Ctx
from vestnik.app.http import Router, json_response, read_body
from vestnik.app.tokens import Principal
from vestnik.streams.errors import BadInput
from vestnik.streams.ids import encode_ulid
from vestnik.streams.keys import Keys
from vestnik.streams.metrics import NOTICES_INGESTED
from vestnik.streams.schemas import (
    ALERTMANAGER_VERSION,
    AlertmanagerAlert,
    AlertmanagerPayload,
    AlertName,
    NoticeIn,
    ResolveIn,
    Severity,
    SkippedAlert,
    SourceAccepted,
    decode_json,
    json_encode,
    notice_fields,
    resolve_fields,
)

router = Router("sources")
log = logging.getLogger("vestnik.sources")

# `labels.severity` as Vestnik's severity; any other value (or none) is a warning
SEVERITIES: dict[str, Severity] = {"info": "info", "warning": "warning",
                                   "critical": "critical", "error": "critical"}
DEFAULT_SEVERITY: Severity = "warning"
TITLE_MAX = 1000  # schemas.Title
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_ULID_MS = 1 << 48  # a ULID holds 48 bits of milliseconds
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]")
_SPACES = re.compile(r"[\s\x00-\x1f\x7f]+")  # on one line: controls and runs of space
_BODY_CONTROL = re.compile(r"\r\n?|[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # keeps \t and \n


class Entries(msgspec.Struct):
    """A payload mapped: the entries for `vn:notices`, firing ones first, and the skipped."""

    notices: list[NoticeIn]
    resolves: list[ResolveIn]
    skipped: list[SkippedAlert]

    def fields(self) -> list[dict[str, str | bytes]]:
        """Their flat stream fields, in the order they are added."""
        return [*map(notice_fields, self.notices), *map(resolve_fields, self.resolves)]

    def streams(self, keys: Keys) -> list[str]:
        """The ingest stream of each of `fields`: its dedup key's partition (an alert's
        fingerprint), so an alert's firing and resolved entries stay in order."""
        return [keys.ingest_stream(keys.ingest_partition(e.alert, e.dedup_key))
                for e in (*self.notices, *self.resolves)]


def map_payload(payload: AlertmanagerPayload) -> Entries:
    """Each alert of a decoded payload as an entry, or skipped with its path. Raises
    BadInput (`$.version`) for a payload of another version."""
    if payload.version != ALERTMANAGER_VERSION:
        raise BadInput(f"Alertmanager webhook payload version {payload.version[:20]!r} is "
                       f"not supported (only \"{ALERTMANAGER_VERSION}\")", field="$.version")
    out = Entries([], [], [])
    for i, raw in enumerate(payload.alerts):
        try:
            entry = alert_entry(decode_json(raw, AlertmanagerAlert))
        except BadInput as e:
            inner = e.field or "$"
            path = f"$.alerts[{i}]{inner[1:]}"
            out.skipped.append(SkippedAlert(path, e.detail.replace(f"(at {inner})",
                                                                   f"(at {path})")))
            continue
        if isinstance(entry, NoticeIn):
            out.notices.append(entry)
        else:
            out.resolves.append(entry)
    return out


def alert_entry(alert: AlertmanagerAlert) -> NoticeIn | ResolveIn:
    """A firing alert's notice, a resolved alert's resolve. Raises BadInput naming the
    alert's field (`$.labels.alertname`) when it cannot be one."""
    name = alert_name(alert)
    starts = _ms(alert.starts_at)
    if not 0 < starts < _ULID_MS:
        raise BadInput("startsAt must be a time after 1970", field="$.startsAt")
    if alert.status == "resolved":
        ends = _ms(alert.ends_at) if alert.ends_at is not None else 0
        # no usable endsAt: the center's time of reading it
        return ResolveIn(alert=name, dedup_key=alert.fingerprint,
                         at=ends if 0 < ends < _ULID_MS else None)
    return firing_notice(alert, name, starts)


def alert_name(alert: AlertmanagerAlert) -> str:
    """`labels.alertname`, which must be a valid alert name (it names settings and keys)."""
    name = alert.labels.get("alertname")
    if name is None:
        raise BadInput("missing label `alertname`", field="$.labels.alertname")
    try:
        return msgspec.convert(name, AlertName)
    except msgspec.ValidationError:
        raise BadInput("alertname must be 1-200 letters, digits, `_`, `.`, `:` or `-`",
                       field="$.labels.alertname") from None


def firing_notice(alert: AlertmanagerAlert, name: str, starts: int) -> NoticeIn:
    """The notice of a firing alert, with an id that only this alert's content gives."""
    link = http_link(alert.generator_url)
    data: dict[str, object] = {"labels": alert.labels, "annotations": alert.annotations,
                               "startsAt": alert.starts_at.isoformat(timespec="milliseconds")}
    if link is not None:
        data["generatorURL"] = link
    notice = NoticeIn(
        alert=name, title=title_of(alert, name),
        severity=SEVERITIES.get(alert.labels.get("severity", "").strip().lower(),
                                DEFAULT_SEVERITY),
        body=_BODY_CONTROL.sub(_body_char, alert.annotations.get("description", "")),
        link=link, data=data, dedup_key=alert.fingerprint, created_at=starts)
    return msgspec.structs.replace(notice, id=notice_id(notice, alert.fingerprint, starts))


def notice_id(notice: NoticeIn, fingerprint: str, starts: int) -> str:
    """A ULID at startsAt whose rest hashes the fingerprint and the notice's content: the
    same alert sent again is the same notice (stored once); changed annotations (a new
    `$value`) are a new notice that folds into the incident (same dedup_key), where the same
    id with other content would be refused."""
    h = hashlib.blake2b(digest_size=10)
    h.update(f"{fingerprint}\x00{starts}\x00".encode())
    h.update(json_encode(notice))
    return encode_ulid(starts, int.from_bytes(h.digest(), "big"))


def title_of(alert: AlertmanagerAlert, name: str) -> str:
    """`annotations.summary` on one line; without one, the alert name and its labels."""
    summary = one_line(alert.annotations.get("summary", ""))
    if summary:
        return _cut(summary)
    labels = ", ".join(f"{one_line(k)}={one_line(v)}" for k, v in sorted(alert.labels.items())
                       if k != "alertname")
    return _cut(f"{name} ({labels})" if labels else name)


def one_line(text: str) -> str:
    """Control characters (CR, LF, NUL, ...) and runs of spaces as one space, trimmed: a
    title is one line."""
    return _SPACES.sub(" ", text).strip()


def http_link(url: str) -> str | None:
    """The URL when it is an absolute http(s) URL on one line, else None."""
    if not url or _CONTROL.search(url) or " " in url:
        return None
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. a bad IPv6 literal
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    return url


def _cut(text: str) -> str:
    return text if len(text) <= TITLE_MAX else text[:TITLE_MAX - 1] + "…"


def _body_char(m: re.Match[str]) -> str:
    return "\n" if m.group(0).startswith("\r") else ""


def _ms(at: datetime) -> int:
    if at.tzinfo is None:  # msgspec gives naive datetimes for times without an offset
        at = at.replace(tzinfo=UTC)
    return (at - _EPOCH) // _MS


@router.route("POST", "/api/v1/sources/alertmanager",
              summary="Take Prometheus Alertmanager's webhook (payload version 4)",
              auth="service", body=AlertmanagerPayload, response=SourceAccepted, cookie=False)
async def alertmanager(request: Request, ctx: Ctx, principal: Principal) -> Response:
    payload = await read_body(request, AlertmanagerPayload, ctx)
    entries = map_payload(payload)
    if entries.skipped:  # one line a payload; the path and why, never the values
        first = entries.skipped[0]
        log.warning("alertmanager (receiver %r): %d of %d alerts skipped, the first at %s: %s",
                    payload.receiver[:100], len(entries.skipped), len(payload.alerts),
                    first.path, first.detail)
    if payload.truncated_alerts > 0:
        log.warning("alertmanager (receiver %r) left out %d alerts of a group (its max_alerts)",
                    payload.receiver[:100], payload.truncated_alerts)
    fields = entries.fields()
    # one pipeline, in this order: requests that arrive together share it (streams.coalesce)
    added = await asyncio.gather(*(ctx.appends.xadd(stream, f) for stream, f in
                                   zip(entries.streams(ctx.keys), fields, strict=True)),
                                 return_exceptions=True)
    errors = [e for e in added if isinstance(e, BaseException)]
    if errors:  # Redis full or gone: 503, and Alertmanager sends the payload again
        raise errors[0]
    if entries.notices:
        NOTICES_INGESTED.labels("alertmanager").inc(len(entries.notices))
    return json_response(SourceAccepted(len(fields), entries.skipped))
