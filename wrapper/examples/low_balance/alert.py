#!/usr/bin/env python3
"""Low balance: a notice when an account's balance drops below a setting's `min_balance`.

Topic `account`, entities like {"id": "acc-1", "owner": "Ann", "balance": 42}.
Setting metric: {"min_balance": 100}. One notice per crossing (per setting); when the
balance is back above the limit the alert resolves it, so the next drop notifies again.
"""

from vestnik.wrapper.kit import Alert, EntityChange

alert = Alert(heartbeat=30)
low: set[tuple[str, str]] = set()  # (setting id, account id) currently below the limit


def check(account_id: str, account: dict | None) -> None:
    for s in alert.settings:
        limit = s["metric"].get("min_balance")
        key = (s["id"], account_id)
        balance = (account or {}).get("balance")
        if limit is None or not isinstance(balance, int | float):
            continue
        if balance < limit and key not in low:
            low.add(key)
            who = account.get("owner") or account_id
            alert.notice(f"Low balance: {who} has {balance}", severity="warning",
                         body=f"Account {account_id} is below {limit}.",
                         entity=("account", account_id), setting_id=s["id"],
                         dedup_key=account_id,
                         data={"balance": balance, "min_balance": limit})
        elif balance >= limit and key in low:
            low.discard(key)
            alert.resolve(account_id)


@alert.on_entity
def on_account(ev: EntityChange) -> None:
    if ev.topic == "account" and alert.ready:
        check(ev.id, ev.data)


@alert.on_ready
def on_ready() -> None:
    alert.log(f"watching {len(alert.entities.get('account', {}))} accounts")
    for account_id, account in alert.entities.get("account", {}).items():
        check(account_id, account)


@alert.on_settings
def on_settings(settings: list) -> None:
    ids = {s["id"] for s in settings}
    low.intersection_update({k for k in low if k[0] in ids})
    if alert.ready:  # a new or changed limit applies to every account at once
        for account_id, account in alert.entities.get("account", {}).items():
            check(account_id, account)


alert.run()
