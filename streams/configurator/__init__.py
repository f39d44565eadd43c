"""The configurator: the alert-settings store (`{name, metric, channel, enabled}`), whose
every change is also an event on the `settings` topic."""

from vestnik.streams.configurator.store import (
    SettingsStore,
    check_name,
    etag,
    parse_if_match,
    parse_limit,
)

__all__ = ["SettingsStore", "check_name", "etag", "parse_if_match", "parse_limit"]
