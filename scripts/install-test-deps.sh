#!/usr/bin/env bash
# The Debian packages the tests need, installed when missing (the README's test command runs
# this first, so a fresh machine needs nothing else): PostgreSQL 15 server binaries, Chromium
# and its driver (the browser check in tests/integration/test_services.py), Prometheus and
# promtool (tests/unit/test_alert_rules.py, tests/integration/test_prometheus_alerting.py).
# Runs apt-get as root, or through sudo; prints what it installs.
set -euo pipefail

missing=()
[ -x /usr/lib/postgresql/15/bin/initdb ] || missing+=(postgresql-15)
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
no_recommends=()  # prometheus without the node exporter it recommends
{ command -v prometheus >/dev/null && command -v promtool >/dev/null; } || no_recommends+=(prometheus)
[ ${#missing[@]} -eq 0 ] && [ ${#no_recommends[@]} -eq 0 ] && exit 0

sudo=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || {
    echo "install-test-deps: need root or sudo to install: ${missing[*]} ${no_recommends[*]}" >&2
    exit 1
  }
  sudo=(sudo)
fi
command -v apt-get >/dev/null || {
  echo "install-test-deps: no apt-get; install by hand: ${missing[*]} ${no_recommends[*]}" >&2
  exit 1
}
echo "install-test-deps: installing ${missing[*]} ${no_recommends[*]}" >&2
"${sudo[@]}" apt-get update -qq
if [ ${#missing[@]} -gt 0 ]; then
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
if [ ${#no_recommends[@]} -gt 0 ]; then
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${no_recommends[@]}"
  # Where policy-rc.d allows it the package starts its own server on :9090; the tests start
  # theirs, so stop it rather than leave it running.
  if [ -x /etc/init.d/prometheus ]; then "${sudo[@]}" /etc/init.d/prometheus stop >/dev/null 2>&1 || true; fi
fi
