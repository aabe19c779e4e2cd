"""TOTP second factor (RFC 6238 through pyotp) with the time passed in.

Invariants:
- A code is accepted within ±`valid_window` steps of `now` and at most once: the step it matched
  is remembered per account, so a code seen on the wire cannot be replayed.
- Codes are compared in constant time.
"""

from __future__ import annotations

import hmac

import pyotp


def new_totp_secret() -> str:
    return pyotp.random_base32()


def provisioning_uri(secret: str, account: str, issuer: str = "vaultpbx") -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=account, issuer_name=issuer)


class TotpVerifier:
    __slots__ = ("valid_window", "interval", "_last_step")

    def __init__(self, *, valid_window: int = 1, interval: int = 30) -> None:
        self.valid_window = valid_window
        self.interval = interval
        self._last_step: dict[str, int] = {}

    def verify(self, account: str, secret: str, code: str, now: float) -> bool:
        if not code or not code.isdigit():
            return False
        totp = pyotp.TOTP(secret, interval=self.interval)
        step_now = int(now // self.interval)
        last = self._last_step.get(account, -1)
        matched = None
        for offset in range(-self.valid_window, self.valid_window + 1):
            step = step_now + offset
            if step <= last:
                continue
            if hmac.compare_digest(totp.at(step * self.interval), code):
                matched = step
                break
        if matched is None:
            return False
        self._last_step[account] = matched
        return True
