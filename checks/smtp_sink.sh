#!/usr/bin/env bash
# Postfix's smtp-sink for the benchmark's notices (bench/pipeline_bench.py). Installed with
# apt-get when missing and this user may install packages (root); otherwise the bench
# says so and can run with --skip-notify. The postfix daemon itself need not run.
set -euo pipefail
if command -v smtp-sink >/dev/null 2>&1 || [ -x /usr/sbin/smtp-sink ]; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's postfix for smtp-sink (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends postfix >/dev/null \
        || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends postfix >/dev/null; }
    exit 0
fi
echo "smtp-sink is not installed and this user cannot install it: apt-get install postfix" >&2
