"""The configurator: the alert-settings store (`{name, metric, channel, enabled}`), whose
every change is also an event on the `settings` topic."""

from vestnik.streams.configurator.store import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    SettingsStore,
    etag,
    parse_if_match,
)

__all__ = ["DEFAULT_LIMIT", "MAX_LIMIT", "SettingsStore", "etag", "parse_if_match"]
