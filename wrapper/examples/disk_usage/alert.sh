#!/bin/sh
# Disk usage: a notice when a disk is fuller than a setting's `max_used_pct`.
# Topic `disk`, entities like {"host": "web-1", "mount": "/", "used_pct": 95}.
# Setting metric: {"max_used_pct": 90}. Needs only a POSIX shell and jq.
set -u
settings='[]'
while IFS= read -r line; do
    case $(printf '%s\n' "$line" | jq -r .type) in
    settings)
        settings=$(printf '%s\n' "$line" | jq -c .items)
        echo "I! $(printf '%s' "$settings" | jq length) settings" >&2
        ;;
    ready)
        echo "I! snapshot done, watching disks" >&2
        ;;
    entity)
        # one notice per setting whose limit the disk is over; the dedup key lets the
        # notice center keep one per disk while it stays full
        printf '%s\n' "$line" | jq -c --argjson settings "$settings" '
            select(.op != "delete" and (.data.used_pct | type) == "number") as $e
            | $settings[]
            | select(.metric.max_used_pct != null and $e.data.used_pct >= .metric.max_used_pct)
            | {type: "notice",
               severity: (if $e.data.used_pct >= 98 then "critical" else "warning" end),
               title: "Disk \($e.data.mount // "?") on \($e.data.host // $e.id) is \($e.data.used_pct)% full",
               setting_id: .id,
               entity: {topic: $e.topic, id: $e.id},
               dedup_key: "disk:\($e.id)",
               data: {used_pct: $e.data.used_pct, max_used_pct: .metric.max_used_pct}}'
        ;;
    esac
done
