#!/usr/bin/env bash
# The project's test command:  ./scripts/test.sh [pytest arguments...]
#
# 1. installs taskq with its test extras (editable),
# 2. fetches what the tests' services need (Kafka jars via Maven, redis-server via apt-get),
# 3. runs pytest; the fixtures in tests/conftest.py start Kafka and Redis lazily,
#    at most once per run, and stop them at the end.
#
# CI=true (set by .ci/run) turns "service could not start" from a skip into a failure.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
started=$SECONDS

PYTHON="${PYTHON:-python}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

"$PYTHON" -m pip install --disable-pip-version-check --root-user-action=ignore -q -e '.[test]'
"$PYTHON" scripts/services.py fetch

status=0
"$PYTHON" -m pytest "$@" || status=$?

elapsed=$((SECONDS - started))
printf 'test.sh: done in %dm%02ds (pytest exit code %d)\n' $((elapsed / 60)) $((elapsed % 60)) "$status"
exit "$status"
