"""What the source tests share: the Alertmanager binary and a running one."""

from __future__ import annotations

import shutil
from dataclasses import dataclass

from support import Proc

BINARIES = ("prometheus-alertmanager", "alertmanager")  # Debian's name, upstream's


def alertmanager_binary() -> str | None:
    return next((p for p in map(shutil.which, BINARIES) if p), None)


@dataclass
class Alertmanager:
    base: str
    proc: Proc
