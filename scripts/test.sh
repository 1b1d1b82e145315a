#!/usr/bin/env bash
# The whole default check: lint, types, the test suite, a short chaos soak, and the
# end-to-end suite when a cluster is configured (KUBECONFIG, ~/.kube/config, in a cluster).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.tools/bin:$PWD/.venv/bin:$PATH"
echo "== ruff";   ruff check .
echo "== mypy";   mypy
echo "== pytest"; pytest -q "$@"
echo "== chaos (short soak: kill -9, SIGSTOP, Redis restarts; nothing may be lost)"
pytest -q -s -m chaos --timeout 900 tests/chaos
if [ -n "${KUBECONFIG:-}" ] || [ -n "${KUBERNETES_SERVICE_HOST:-}" ] || [ -f "$HOME/.kube/config" ]; then
    echo "== e2e (cluster: ${KUBECONFIG:-~/.kube/config})"
    pytest -q -m e2e --timeout 1800 e2e
else
    echo "== e2e: skipped: no cluster configured (set KUBECONFIG to run it against a cluster)"
fi
