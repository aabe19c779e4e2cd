"""Phone numbers: one normal form per number (the data subject's identity) and a finder that says
whether a piece of free text is a phone number, in international or national format.

Invariants:
- `normalise_number` maps every spelling of one number to one string: `02079460000`,
  `020 7946 0000`, `0044 20 7946 0000` and `+44 (0)20 7946 0000` under country GB all give
  `+442079460000`. What Google's libphonenumber (PyPI `phonenumbers`) cannot read as a possible
  number keeps its digits (and a leading '+'), or, with no digit at all (a SIP user name), its
  lower-cased text; so the mapping is total and never raises.
- `PhoneFinder.is_phone` is what the maskers ask about digit runs: international numbers ('+' or
  the country's international prefix) when possible, national numbers written with the country's
  trunk prefix ('0' in GB/DE/CN) when possible, and numbers without a prefix only when
  libphonenumber's matcher finds them valid there (US `(202) 555-0123`). A bare run such as an
  epoch timestamp `1733243423` is therefore not a GB phone number, though it would parse as one.
- The default country is configuration (`security.privacy.default_country`), passed in; nothing
  here reads global state. Answers are cached per finder (bounded), as log lines repeat numbers.
- Cost is bounded per text: libphonenumber takes ~50-100 us per new candidate, so a caller of
  `is_phone` passes a `PhoneBudget`; once it is spent, every further new candidate counts as a
  phone number (fail closed: masked), and a hostile text full of digit groups costs no more
  than the regular expression's linear pass.
"""

from __future__ import annotations

import phonenumbers
from phonenumbers import Leniency, PhoneNumberFormat, PhoneNumberMatcher

DEFAULT_COUNTRY = "GB"
MIN_DIGITS = 7  # shorter runs are extensions, ports, counts: never a subscriber number
MAX_DIGITS = 17  # E.164 allows 15 digits; national prefix and IDD may add two
_CACHE_LIMIT = 4096


def check_country(country: str) -> str:
    """The ISO 3166 alpha-2 code in upper case; ValueError if libphonenumber does not know it."""
    code = str(country).upper()
    if code not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError(f"unknown country {country!r} (expected an ISO 3166 code such as GB)")
    return code


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


def normalise_number(number: str, country: str = DEFAULT_COUNTRY) -> str:
    """The E.164 form of `number` read under `country`, or a stable fallback (module invariants)."""
    text = number.strip()
    digits = _digits(text)
    if not digits:
        return text.lower()
    if MIN_DIGITS <= len(digits) <= MAX_DIGITS:
        try:
            parsed = phonenumbers.parse(text, country)
        except phonenumbers.NumberParseException:
            parsed = None
        if parsed is not None and phonenumbers.is_possible_number(parsed):
            return phonenumbers.format_number(parsed, PhoneNumberFormat.E164)
    return ("+" + digits) if text.startswith("+") else digits


DEFAULT_BUDGET = 32  # new (uncached) candidates decided per text; then fail closed


class PhoneBudget:
    __slots__ = ("left",)

    def __init__(self, left: int = DEFAULT_BUDGET) -> None:
        self.left = left


class PhoneFinder:
    """Is this candidate (digits with spaces, dashes, parentheses, maybe '+') a phone number?"""

    __slots__ = ("country", "national_prefix", "_cache")

    def __init__(self, country: str = DEFAULT_COUNTRY) -> None:
        self.country = check_country(country)
        metadata = phonenumbers.PhoneMetadata.metadata_for_region(self.country)
        self.national_prefix = (metadata.national_prefix if metadata is not None else None) or ""
        self._cache: dict[str, bool] = {}

    def is_phone(self, candidate: str, budget: PhoneBudget | None = None) -> bool:
        found = self._cache.get(candidate)
        if found is None:
            if budget is not None:
                if budget.left <= 0:
                    return True  # fail closed; not cached: another text may decide it
                budget.left -= 1
            found = self._decide(candidate)
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[candidate] = found
        return found

    def _decide(self, candidate: str) -> bool:
        digits = _digits(candidate)
        if not MIN_DIGITS <= len(digits) <= MAX_DIGITS:
            return False
        text = candidate.strip()
        try:
            parsed = phonenumbers.parse(text, None if text.startswith("+") else self.country)
        except phonenumbers.NumberParseException:
            return False
        if not phonenumbers.is_possible_number(parsed):
            return False
        source = parsed.country_code_source
        if text.startswith("+") or source in (
                phonenumbers.CountryCodeSource.FROM_NUMBER_WITH_IDD,
                phonenumbers.CountryCodeSource.FROM_NUMBER_WITH_PLUS_SIGN):
            return True
        if self.national_prefix and digits.startswith(self.national_prefix) and (
                self.national_prefix != "1" or len(digits) == 11):
            return True
        # No prefix: only a number valid here and written as this country writes it.
        return any(match.start == 0 and match.end == len(text)
                   for match in PhoneNumberMatcher(text, self.country, leniency=Leniency.VALID))
