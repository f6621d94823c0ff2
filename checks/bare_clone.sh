#!/usr/bin/env bash
# A new user's first steps: clone the committed project into an empty temporary folder,
# with nothing beside it (no platform copy, no virtual environment, no Prefect home), and run
# the README's two commands there. Exits non-zero if either fails.
#
#     bash checks/bare_clone.sh            # or: make check-bare-clone
set -euo pipefail
source_repo=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
folder=$(mktemp -d "${TMPDIR:-/tmp}/reinstate-bare-XXXXXX")
trap 'rm -rf "$folder"' EXIT
git clone --quiet "$source_repo" "$folder/clone"
cd "$folder/clone"
if [ -n "$(ls -A "$folder" | grep -v '^clone$')" ]; then
    echo "the clone's folder is not empty" >&2
    exit 1
fi
echo "== bare clone of $(git rev-parse --short HEAD) in $folder/clone (nothing beside it)"
unset PREFECT_HOME PREFECT_API_URL
export CI="${CI:-true}"
start=$(date +%s)
make test
echo "== make test passed in the bare clone in $(( $(date +%s) - start )) s"
start=$(date +%s)
make demo
echo "== make demo passed in the bare clone in $(( $(date +%s) - start )) s"
