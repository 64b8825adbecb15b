"""Names the typed config validates, importable without torch (so `weakflow show-config`, `alerts` and
friends do not pay torch's import)."""

from __future__ import annotations

from typing import Literal

LossName = Literal["ce", "gce"]
