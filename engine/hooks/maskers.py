"""Built-in maskers: PRC resident ID numbers, bank card numbers, phone numbers, e-mail addresses,
and secrets, found inside free text (SIP headers, log lines, JSON) and shaped per role.

Invariants:
- A number is masked only when it validates: an 18-digit resident ID only with a correct
  ISO 7064 MOD 11-2 check character (and a plausible region and birth date), a 15-digit legacy ID
  only with a plausible region and birth date, a card number only when its Luhn sum is right.
  A random 18-digit number that fails the checksum is left alone. A run of digits is a phone
  number when libphonenumber says so under the masker's country (phones.py): international
  formats, national ones with the trunk prefix, valid ones as the country writes them.
- A masked value keeps its length and separators; only digits and letters are starred, so column
  alignment and SIP syntax survive (`<sip:138****5678@host>` is still a URI).
- An unknown role gets the strictest policy (fail closed). Agents and QA can never see clear data.
- Secrets (passwords, tokens, digest nonces/responses, Authorization headers, SRTP `inline:` keys)
  are replaced with "[redacted]" for every role, including admin and system.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from .phones import DEFAULT_COUNTRY, PhoneBudget, PhoneFinder

REDACTED = "[redacted]"
ROLES = ("agent", "qa", "supervisor", "admin", "auditor", "system")

# -- validators -------------------------------------------------------------------------------

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"  # ISO 7064 MOD 11-2, GB 11643-1999
_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def resident_id_check_char(first17: str) -> str:
    """The check character for the first 17 digits of an 18-digit resident ID."""
    return _ID_CHECK[sum(int(d) * w for d, w in zip(first17, _ID_WEIGHTS, strict=True)) % 11]


def _plausible_date(year: int, month: int, day: int) -> bool:
    if not 1 <= month <= 12 or not 1 <= day <= _DAYS[month - 1]:
        return False
    if month == 2 and day == 29:
        return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    return True


def is_resident_id(value: str) -> bool:
    """18-digit (check character may be X) or 15-digit legacy PRC resident ID number."""
    if value[:1] not in "12345678" or not value[:1]:
        return False
    if len(value) == 18:
        body, check = value[:17], value[17].upper()
        if not body.isdigit() or not 1900 <= int(value[6:10]) <= 2099:
            return False
        if not _plausible_date(int(value[6:10]), int(value[10:12]), int(value[12:14])):
            return False
        return resident_id_check_char(body) == check
    if len(value) == 15 and value.isdigit():
        return _plausible_date(1900 + int(value[6:8]), int(value[8:10]), int(value[10:12]))
    return False


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i & 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def is_card_number(digits: str) -> bool:
    return 13 <= len(digits) <= 19 and digits.isdigit() and luhn_ok(digits)


def _is_cn_mobile(digits: str) -> bool:
    return len(digits) == 11 and digits[0] == "1" and digits[1] in "3456789"


# -- policies ---------------------------------------------------------------------------------

Keep = tuple[int, int] | None  # (first, last) characters kept; None = shown in clear


@dataclass(frozen=True, slots=True, kw_only=True)
class MaskPolicy:
    """What one role sees of each kind of personal data."""

    resident_id: Keep = (4, 3)
    """(4, 3) or (6, 4) — the two shapes allowed by the ID masking rule; None = clear."""
    card: Keep = (4, 4)
    """First/last digits kept; PCI DSS allows at most first 6 and last 4; None = clear."""
    phone: Keep = (3, 4)
    """Of the national number (after +CC); None = clear."""
    email: bool = True
    """True: keep the first character of the local part and the domain."""
    mask_char: str = "*"


STRICT = MaskPolicy()

DEFAULT_POLICIES: dict[str, MaskPolicy] = {
    "agent": STRICT,
    "qa": STRICT,
    "supervisor": MaskPolicy(phone=None),
    "admin": MaskPolicy(resident_id=(6, 4), card=(6, 4)),
    "auditor": STRICT,
    "system": STRICT,
}

_ALLOWED_ID_KEEPS = {(4, 3), (6, 4)}
_NEVER_CLEAR = {"agent", "qa"}


def _parse_keep(value: object, path: str) -> Keep:
    if value is None or value == "clear":
        return None
    if isinstance(value, list | tuple) and len(value) == 2:
        for i, count in enumerate(value):  # a YAML list holds numbers ("6+4" is text)
            if isinstance(count, bool) or not isinstance(count, int):
                raise ValueError(f"{path}[{i}]: must be a number of characters, got {count!r}")
    if isinstance(value, str) and "+" in value:
        value = value.split("+")
    if isinstance(value, list | tuple) and len(value) == 2:
        try:
            first, last = int(value[0]), int(value[1])
        except (TypeError, ValueError):
            pass
        else:
            if first >= 0 and last >= 0:
                return (first, last)
    raise ValueError(f"{path}: expected [first, last], 'first+last' or 'clear', got {value!r}")


def policies_from_dict(config: Mapping[str, Mapping[str, Any]]) -> dict[str, MaskPolicy]:
    """Build per-role policies from the `masking.roles` config mapping, e.g.

        {"admin": {"resident_id": [6, 4], "card": [6, 4], "phone": [3, 4], "email": "mask"},
         "supervisor": {"phone": "clear"}}

    Unlisted roles and fields keep the defaults. Rules that hold whatever the config says: IDs
    keep 4+3 or 6+4, cards at most 6+4 (PCI DSS), agent and QA never see clear data.
    """
    policies = dict(DEFAULT_POLICIES)
    for role, fields in config.items():
        path = f"masking.roles.{role}"
        if role not in ROLES:
            raise ValueError(f"{path}: unknown role (expected one of {', '.join(ROLES)})")
        base = policies[role]
        unknown = set(fields) - {"resident_id", "card", "phone", "email"}
        if unknown:
            raise ValueError(f"{path}: unknown field(s) {sorted(unknown)}")
        rid = _parse_keep(fields["resident_id"], f"{path}.resident_id") if (
            "resident_id" in fields) else base.resident_id
        card = _parse_keep(fields["card"], f"{path}.card") if "card" in fields else base.card
        phone = _parse_keep(fields["phone"], f"{path}.phone") if "phone" in fields else base.phone
        email = base.email
        if "email" in fields:
            if fields["email"] not in ("mask", "clear", True, False):
                raise ValueError(f"{path}.email: expected 'mask' or 'clear'")
            email = fields["email"] in ("mask", True)
        if rid is not None and rid not in _ALLOWED_ID_KEEPS:
            raise ValueError(f"{path}.resident_id: only [4, 3] or [6, 4] are allowed")
        if card is not None and (card[0] > 6 or card[1] > 4):
            raise ValueError(f"{path}.card: PCI DSS allows at most first 6 and last 4 digits")
        if role in _NEVER_CLEAR and (rid is None or card is None or phone is None or not email):
            raise ValueError(f"{path}: role {role} may only see masked data")
        policies[role] = MaskPolicy(resident_id=rid, card=card, phone=phone, email=email)
    return policies


# -- shaping ----------------------------------------------------------------------------------


def _star(text: str, keep: tuple[int, int], char: str) -> str:
    """Star the alphanumerics of `text` except the first/last `keep`, keeping separators."""
    first, last = keep
    n = sum(1 for c in text if c.isalnum())
    if first + last >= n:  # nothing would be hidden: hide all but `first` instead
        first, last = min(first, max(n - 1, 0)), 0
    out = []
    i = 0
    for c in text:
        if c.isalnum():
            out.append(c if i < first or i >= n - last else char)
            i += 1
        else:
            out.append(c)
    return "".join(out)


def mask_resident_id(value: str, policy: MaskPolicy = STRICT) -> str:
    return value if policy.resident_id is None else _star(value, policy.resident_id,
                                                          policy.mask_char)


def mask_card_number(value: str, policy: MaskPolicy = STRICT) -> str:
    return value if policy.card is None else _star(value, policy.card, policy.mask_char)


def mask_phone_number(value: str, policy: MaskPolicy = STRICT) -> str:
    if policy.phone is None:
        return value
    if value.startswith("+"):
        digits = value[1:]
        # +86 mobile: keep the country code and shape the national number like a local one.
        if digits.startswith("86") and _is_cn_mobile(digits[2:]):
            return "+86" + _star(digits[2:], policy.phone, policy.mask_char)
        return "+" + _star(digits, policy.phone, policy.mask_char)
    if len(value) == 13 and value.startswith("86"):
        return "86" + _star(value[2:], policy.phone, policy.mask_char)
    return _star(value, policy.phone, policy.mask_char)


def mask_email(value: str, policy: MaskPolicy = STRICT) -> str:
    if not policy.email:
        return value
    local, _, domain = value.rpartition("@")
    return local[:1] + policy.mask_char * 3 + "@" + domain


# One pass over the text. Alternatives, in priority order:
#   email   an address not inside a sip:/sips: URI (the user part there is checked as digits)
#   grouped 13-19 digits written in groups with spaces or dashes (a card)
#   e164    +CC and national number
#   run     11 to 19 digits, or 17 digits and X (IDs, cards, mobiles, 86+mobile)
#   phone   7+ digits in groups (spaces, dashes, parentheses), maybe '+': international and
#           national formats, decided by the masker's PhoneFinder (its default country)
# A grouped or run match that is no card or ID is also offered to the PhoneFinder.
_PII_RE = re.compile(
    r"(?P<email>(?<![\w.%+-])(?<![sS][iI][pP]:)(?<![sS][iI][pP][sS]:)"
    r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,})"
    r"|(?P<grouped>(?<![\d+-])\d{4}(?:[ -]\d{2,7}){2,4}(?![\d-]))"
    r"|(?P<e164>(?<![\w+])\+[1-9]\d{6,14}(?!\d))"
    r"|(?P<run>(?<!\d)(?:\d{17}[Xx](?![A-Za-z])|\d{11,19}(?!\d)))"
    # Groups of digits joined by one separator each (no nested optional parts: linear time).
    r"|(?P<phone>(?<![\w.:*+-])(?=\+?\(?\d(?:[ ()-]{0,2}\d){6})(?:\+|\(\+?)?\d+\)?"
    r"(?:(?:[ -]|\) ?| ?\()\d+\)?){0,7}(?![\w:*-]|\.\d))"
)

# Secrets inside free text: the value is replaced, the name stays so the line still reads.
_SECRET_TEXT_RE = re.compile(
    r"(?P<hdr>\b(?:Proxy-)?Authorization[ \t]*:)[^\r\n]*"
    r"|(?P<inline>\binline:)[^\s|\"']+"
    r"|(?P<bearer>\bBearer[ \t]+)[A-Za-z0-9._~+/-]+=*"
    r"|(?P<kv>\b(?:c?nonce|pass(?:word|wd)?|secret|token|api[_-]?key|otp|pin)"
    r"[ \t]*[=:][ \t]*|\bresponse[ \t]*=[ \t]*(?=\"))(?:\"[^\"]*\"|[^\s,;&\"]+)",
    re.IGNORECASE,
)


# Cheap screens, run on most strings before the full expressions (which cost ~10x more).
_SECRET_HINT_RE = re.compile(
    r"authori[sz]ation|inline:|bearer|nonce|pass|secret|token|key|otp|pin|response"
)
_PII_HINT_RE = re.compile(r"\d{4}[ -]?\d{3}|@|\+\d|\d{2}\)?[ -]\(?\d{3}")


def redact_secrets(text: str) -> str:
    if _SECRET_HINT_RE.search(text.lower()) is None:
        return text
    return _SECRET_TEXT_RE.sub(_redact_match, text)


def _redact_match(m: re.Match[str]) -> str:
    for group in ("hdr", "inline", "bearer", "kv"):
        prefix = m.group(group)
        if prefix is not None:
            if group == "hdr":
                return prefix + " " + REDACTED
            return prefix + REDACTED
    return REDACTED  # pragma: no cover - one group always matches


def classify_digits(digits: str) -> str | None:
    """'resident_id', 'card', 'phone' or None for a bare run of digits (maybe ending in X)."""
    n = len(digits)
    if n in (15, 18) and is_resident_id(digits):
        return "resident_id"
    if not digits.isdigit():
        return None
    if _is_cn_mobile(digits) or (n == 13 and digits.startswith("86") and _is_cn_mobile(
            digits[2:])):
        return "phone"
    if 13 <= n <= 19 and luhn_ok(digits):
        return "card"
    return None


def _shape(m: re.Match[str], policy: MaskPolicy, phones: PhoneFinder, budget: PhoneBudget
           ) -> str:
    text = m.group(0)
    kind = m.lastgroup
    if kind == "email":
        return mask_email(text, policy)
    if kind == "e164":
        return mask_phone_number(text, policy)
    if kind == "grouped":
        digits = text.replace(" ", "").replace("-", "")
        if is_card_number(digits):
            return mask_card_number(text, policy)
    elif kind == "run":
        found = classify_digits(text)
        if found == "resident_id":
            return mask_resident_id(text, policy)
        if found == "card":
            return mask_card_number(text, policy)
        if found == "phone":
            return mask_phone_number(text, policy)
    if phones.is_phone(text, budget):
        return mask_phone_number(text, policy)
    return text


def mask_party(value: str, policy: MaskPolicy) -> str:
    """A caller or callee field is a phone number by definition: mask any 7+ digit user part,
    also one the validating maskers let through (short national numbers, foreign ones)."""
    return _PARTY_USER_RE.sub(
        lambda m: m.group("head") + mask_phone_number(m.group("number"), policy), value)


_PARTY_USER_RE = re.compile(r"(?P<head>^|sips?:|tel:|<)(?P<number>\+?\d{7,})(?=$|[@;>])")
PARTY_FIELDS = frozenset({"caller", "callee", "caller_number", "callee_number"})


class TextMasker:
    """Masks personal data and redacts secrets in free text, per role. Phone numbers in
    national format are read as numbers of `country` (`security.privacy.default_country`)."""

    __slots__ = ("policies", "phones")

    def __init__(self, policies: Mapping[str, MaskPolicy] | None = None, *,
                 country: str = DEFAULT_COUNTRY) -> None:
        self.policies = dict(policies or DEFAULT_POLICIES)
        self.phones = PhoneFinder(country)

    def policy_for(self, role: str) -> MaskPolicy:
        return self.policies.get(role, STRICT)

    def mask_text(self, text: str, role: str = "system") -> str:
        text = redact_secrets(text)
        if _PII_HINT_RE.search(text) is None:
            return text
        policy = self.policies.get(role, STRICT)
        phones = self.phones
        budget = PhoneBudget()
        return _PII_RE.sub(lambda m: _shape(m, policy, phones, budget), text)

    # The HookRegistry masker signature: (kind, value, role) -> value.
    def __call__(self, kind: str, value: str, role: str) -> str:
        return self.mask_text(value, role)


DEFAULT_MASKER = TextMasker()


def mask_text(text: str, role: str = "system") -> str:
    return DEFAULT_MASKER.mask_text(text, role)


# -- structured values and structlog ------------------------------------------------------------

_SECRET_KEY_RE = re.compile(
    r"pass(word|wd|phrase)?|secret|(^|[_-])key$|^key|api[_-]?key|private[_-]?key|token|"
    r"authori[sz]ation|auth[_-]?header|cookie|nonce|credential|^otp$|totp|^pin$|cvv|cvc|"
    r"srtp[_-]?key|master[_-]?key|^inline$",
    re.IGNORECASE,
)


_secret_key_cache: dict[str, bool] = {}


def is_secret_key(key: object) -> bool:
    if not isinstance(key, str):
        return False
    found = _secret_key_cache.get(key)
    if found is None:
        found = _SECRET_KEY_RE.search(key) is not None
        if len(_secret_key_cache) < 4096:  # log keys are a small fixed set; stay bounded
            _secret_key_cache[key] = found
    return found


def mask_value(value: Any, role: str = "system", masker: TextMasker = DEFAULT_MASKER) -> Any:
    """Mask every string in a JSON-like value; values under secret-looking keys are redacted."""
    if isinstance(value, str):
        return masker.mask_text(value, role)
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return value
    if isinstance(value, int):
        # A card or phone number logged as an int must not slip through.
        if value >= 10**10 or value <= -(10**10):
            text = str(value)
            masked = masker.mask_text(text, role)
            return masked if masked != text else value
        return value
    if isinstance(value, Mapping):
        return {
            k: (REDACTED if is_secret_key(k) else mask_value(v, role, masker))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(mask_value(v, role, masker) for v in value)
    if isinstance(value, bytes | bytearray):
        return masker.mask_text(bytes(value).decode("utf-8", "replace"), role)
    return masker.mask_text(str(value), role)


class MaskProcessor:
    """structlog processor: masks every value of every record and drops secrets.

    Install after `format_exc_info` / `StackInfoRenderer` (so tracebacks are masked too) and
    before the renderer:

        structlog.configure(processors=[..., structlog.processors.format_exc_info,
                                        mask_processor, structlog.processors.JSONRenderer()])
    """

    __slots__ = ("masker", "role", "registry")

    def __init__(
        self,
        masker: TextMasker = DEFAULT_MASKER,
        role: str = "system",
        registry: Any | None = None,
    ) -> None:
        self.masker = masker
        self.role = role
        # A HookRegistry whose extra maskers (plug-ins) also shape log text.
        self.registry = registry

    def __call__(
        self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        role = self.role
        masker = self.masker
        registry = self.registry
        for key, value in list(event_dict.items()):
            if is_secret_key(key):
                event_dict[key] = REDACTED
                continue
            masked = mask_value(value, role, masker)
            if key in PARTY_FIELDS and isinstance(masked, str):
                masked = mask_party(masked, masker.policy_for(role))
            if (registry is not None and isinstance(masked, str)
                    and registry.has_masker_other_than(masker)):
                masked = registry.mask("log", masked, role, skip=masker)
            event_dict[key] = masked
        return event_dict


mask_processor = MaskProcessor()


def setup(registry: Any) -> None:
    """Built-in plug-in `maskers`: the default text masker on every `mask` call."""
    registry.add_masker(DEFAULT_MASKER)
