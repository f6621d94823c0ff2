#!/usr/bin/env bash
# Make sure a program from a Debian package is there:
#     bash checks/debian_package.sh COMMAND PACKAGE WHAT-IT-IS-FOR
# It is installed with apt-get when missing and this user may install packages (root, as
# on CI machines). Otherwise this says how to install it and exits 0: what needs it then
# skips with a reason (or fails under CI=true), or says so itself.
#   chromium: the browser test (tests/test_ui_browser.py)
#   postfix:  smtp-sink, for the benchmark's notices (bench/pipeline_bench.py)
set -euo pipefail
command_name=$1 package=$2 purpose=$3
if command -v "$command_name" >/dev/null 2>&1 || [ -x "/usr/sbin/$command_name" ]; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's $package for $purpose (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends "$package" >/dev/null \
        || { apt-get update -q >/dev/null \
             && apt-get install -y -q --no-install-recommends "$package" >/dev/null; }
    exit 0
fi
echo "$command_name is not installed and this user cannot install it ($purpose):" \
     "apt-get install $package" >&2
