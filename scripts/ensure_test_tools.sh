#!/usr/bin/env bash
# The Debian packages the tests run besides Python's: promtool and Prometheus (the monitoring
# tests), curl and jq (the troubleshooting guide's commands, which the tests run) and Chromium
# (the web UI's tests; Playwright cannot download its own browsers here). Installed when
# missing and running as root; otherwise each missing one is named and the tests that need it
# fail loudly.
set -euo pipefail
missing=""
command -v chromium >/dev/null || missing="$missing chromium"
command -v promtool >/dev/null || missing="$missing prometheus"
command -v jq >/dev/null || missing="$missing jq"
command -v curl >/dev/null || missing="$missing curl"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "missing Debian packages:$missing (apt-get install them; the tests that need them fail)" >&2
    exit 0
fi
# shellcheck disable=SC2086  # one word per package
apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
