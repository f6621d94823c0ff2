#!/usr/bin/env bash
# Debian's Chromium for the browser test (tests/test_ui_browser.py). Installed with
# apt-get when missing and this user may install packages (root, as on CI machines);
# otherwise the test skips with a reason, or fails under CI=true.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's chromium for the browser test (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends chromium >/dev/null \
        || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends chromium >/dev/null; }
    exit 0
fi
echo "chromium is not installed and this user cannot install it: the browser test will" \
     "skip (or fail under CI=true); install it with: apt-get install chromium" >&2
