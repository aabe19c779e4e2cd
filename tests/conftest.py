"""Shared pytest set-up: the repository paths and the conformance data location."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
# Public conformance material (RFC 4475/5118 messages, SRTP and Merkle vectors) sits beside
# every checkout, CI's included, as ../shared/conformance: read it there, do not copy it.
CONFORMANCE = ROOT.parent / "shared" / "conformance"
