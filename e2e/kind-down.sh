#!/usr/bin/env bash
# Deletes the kind cluster made by e2e/kind-up.sh, and the kubeconfig it wrote.
#
# Usage: e2e/kind-down.sh [--dry-run]
# Environment: KIND_CLUSTER [agentpool-e2e], KIND_KUBECONFIG [.tools/kind-<cluster>.kubeconfig]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DRY_RUN=0
case "${1:-}" in
    --dry-run) DRY_RUN=1 ;;
    -h|--help) sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    "") ;;
    *) echo "kind-down: unknown argument $1 (see --help)" >&2; exit 2 ;;
esac

CLUSTER="${KIND_CLUSTER:-agentpool-e2e}"
KUBECONFIG_FILE="${KIND_KUBECONFIG:-$ROOT/.tools/kind-$CLUSTER.kubeconfig}"

run() {
    if [ "$DRY_RUN" = 1 ]; then
        printf '+'
        printf ' %q' "$@"
        printf '\n'
    else
        "$@"
    fi
}

if ! command -v kind >/dev/null 2>&1; then
    echo "kind-down: missing prerequisite: kind: not found; install it" \
        "(https://kind.sigs.k8s.io/docs/user/quick-start/#installation)" >&2
    [ "$DRY_RUN" = 1 ] || exit 1
fi
run kind delete cluster --name "$CLUSTER" --kubeconfig "$KUBECONFIG_FILE"
run rm -f "$KUBECONFIG_FILE"
