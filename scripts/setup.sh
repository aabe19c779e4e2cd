#!/usr/bin/env bash
# Sets up a fresh machine: Debian packages the tests and benches use (SIPp, SoftHSM2), then a
# virtual environment in .venv with vaultpbx installed editable. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v sipp >/dev/null 2>&1 || need_apt+=(sip-tester)
command -v softhsm2-util >/dev/null 2>&1 || need_apt+=(softhsm2)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
# The IANA time zones `cdr.timezone` names (zoneinfo reads the system's database).
[ -f /usr/share/zoneinfo/Asia/Shanghai ] || need_apt+=(tzdata)
# fail2ban-regex checks that the auth-failure log line matches fail2ban's stock SIP filter.
command -v fail2ban-regex >/dev/null 2>&1 || need_apt+=(fail2ban)
# scripts/make_prompts.py speaks the queue prompts (sounds/prompts/) with espeak-ng.
command -v espeak-ng >/dev/null 2>&1 || need_apt+=(espeak-ng)
# The web console's browser tests drive Debian's headless Chromium through its chromedriver.
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need_apt+=(chromium-driver)
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
    else
        echo "setup: please install Debian packages: ${need_apt[*]} (needs root)" >&2
    fi
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
    .venv/bin/pip install -q --upgrade pip >/dev/null
    .venv/bin/pip install -q -e '.[test]'
    rm -f .venv/.installed-*
    touch "$stamp"
fi
