"""Wrapper protocol v1: JSON lines between the wrapper and an alert program.

Two tagged unions on the field `type`, one per direction, each with its encoder or
decoder built once (the shape of msgspec's asyncio-kv example). Every message the
alert prints is decoded into a Struct here, at the edge; the rest of the wrapper
dispatches on it with `match`. docs/wrapper-protocol.md is the prose for this file.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from vestnik.streams.schemas import AlertSetting, Body, EntityRef, NonEmpty, Op, Severity, Title

PROTOCOL = 1


class ToAlert(msgspec.Struct, tag_field="type", omit_defaults=True, kw_only=True):
    """Base of the messages the wrapper writes to the alert's stdin."""


class Hello(ToAlert, tag="hello"):
    protocol: int
    alert: str
    version: str


class SettingsMessage(ToAlert, tag="settings"):
    """The enabled settings with this alert's name: the full list, every time."""

    items: list[AlertSetting]


class Entity(ToAlert, tag="entity"):
    """One entity of a configured topic: from the snapshot, then every live change."""

    topic: str
    op: Op
    id: str
    data: dict[str, Any] | None = None


class Ready(ToAlert, tag="ready"):
    """The snapshot is complete; what follows is live."""


class FromAlert(msgspec.Struct, tag_field="type", forbid_unknown_fields=True,
                omit_defaults=True, kw_only=True):
    """Base of the messages an alert prints on stdout. Unknown fields are refused."""


class AlertHello(FromAlert, tag="hello"):
    """Optional first line: restart me when I stay silent longer than `heartbeat` s."""

    heartbeat: Annotated[float, msgspec.Meta(gt=0)] | None = None
    protocol: int = PROTOCOL


class NoticeMessage(FromAlert, tag="notice"):
    title: Title
    body: Body = ""
    severity: Severity = "info"
    entity: EntityRef | None = None
    data: dict[str, Any] = {}
    setting_id: str | None = None
    dedup_key: NonEmpty | None = None
    recipients: list[str] | None = None
    link: str | None = None
    forward_after: Annotated[float, msgspec.Meta(ge=0)] | None = None


class Resolve(FromAlert, tag="resolve"):
    """The condition behind `dedup_key` has cleared: the next such notice is new again."""

    dedup_key: NonEmpty


class Error(FromAlert, tag="error"):
    """A problem that is not a crash (bad setting, unreachable source): logged, counted."""

    message: str


class Heartbeat(FromAlert, tag="heartbeat"):
    """Keeps an alert that announced a heartbeat alive while it has nothing to say."""


Incoming = AlertHello | NoticeMessage | Resolve | Error | Heartbeat
Outgoing = Hello | SettingsMessage | Entity | Ready

decode_line = msgspec.json.Decoder(Incoming).decode
_encoder = msgspec.json.Encoder()
encode = _encoder.encode
