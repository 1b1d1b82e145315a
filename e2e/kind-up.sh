#!/usr/bin/env bash
# Creates (or reuses) a kind cluster, builds both images, loads them into the cluster, installs
# the chart with them and runs the end-to-end suite against it, with E2E_NODE_DRAIN=1 (the drain
# test may cordon a node of this cluster). The cluster stays up afterwards (e2e/kind-down.sh
# deletes it). The release it installs carries the helm label e2e.agentpool.dev/kind-up=true:
# --mode local uninstalls that release alone.
#
# Usage: e2e/kind-up.sh [options] [-- PYTEST_ARGS...]
#   --mode chart|local  chart (default): the operator runs in the cluster, installed by the
#                       chart. local: only the worker image is built; the suite installs the
#                       chart's Redis and runs agentpool-operator on this machine.
#   --no-tests          stop once everything is installed
#   --check             check the prerequisites and exit
#   --dry-run           print the commands instead of running them
#   -h, --help
#
# Environment (defaults in brackets):
#   KIND_CLUSTER [agentpool-e2e]       name of the kind cluster
#   KIND_NODE_IMAGE [kind's default]   kindest/node image, i.e. the Kubernetes version
#   KIND_KUBECONFIG [.tools/kind-<cluster>.kubeconfig]  kubeconfig written for the cluster
#   E2E_OPERATOR [chart]               the default of --mode
#   E2E_WORKER_IMAGE [ghcr.io/agentpool/worker:e2e]
#   E2E_OPERATOR_IMAGE [ghcr.io/agentpool/operator:e2e]
#   E2E_RELEASE [agentpool], E2E_NAMESPACE [agentpool]  the chart's release (chart mode)
#   E2E_POD_SECURITY [restricted]      Pod Security Standard enforced on that namespace
#   E2E_HELM_ARGS                      extra helm arguments, split like a shell line (quotes
#                                      group words, as the suite splits them), e.g.
#                                      "--set operator.logLevel=debug"
#   HELM [.tools/bin/helm, installed by scripts/install-helm.sh; else helm on PATH]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

MODE="${E2E_OPERATOR:-chart}"
DRY_RUN=0
CHECK_ONLY=0
RUN_TESTS=1
PYTEST_ARGS=()

usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --mode)
            [ $# -ge 2 ] || { echo "kind-up: --mode needs chart or local" >&2; exit 2; }
            MODE="$2"; shift 2 ;;
        --mode=*) MODE="${1#--mode=}"; shift ;;
        --no-tests) RUN_TESTS=0; shift ;;
        --check) CHECK_ONLY=1; shift ;;
        --dry-run) DRY_RUN=1; shift ;;
        -h|--help) usage; exit 0 ;;
        --) shift; PYTEST_ARGS=("$@"); break ;;
        *) echo "kind-up: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$MODE" in
    chart|local) ;;
    *) echo "kind-up: --mode must be chart or local, not '$MODE'" >&2; exit 2 ;;
esac

CLUSTER="${KIND_CLUSTER:-agentpool-e2e}"
KUBECONFIG_FILE="${KIND_KUBECONFIG:-$ROOT/.tools/kind-$CLUSTER.kubeconfig}"
WORKER_IMAGE="${E2E_WORKER_IMAGE:-ghcr.io/agentpool/worker:e2e}"
OPERATOR_IMAGE="${E2E_OPERATOR_IMAGE:-ghcr.io/agentpool/operator:e2e}"
RELEASE="${E2E_RELEASE:-agentpool}"
NAMESPACE="${E2E_NAMESPACE:-agentpool}"
POD_SECURITY="${E2E_POD_SECURITY-restricted}"
HELM_EXTRA=()
if [ -n "${E2E_HELM_ARGS:-}" ]; then
    # Split as the suite does (Python's shlex, e2e/e2e_config.py): quotes group words.
    SHLEX_PYTHON="$ROOT/.venv/bin/python"
    [ -x "$SHLEX_PYTHON" ] || SHLEX_PYTHON="$(command -v python3 || true)"
    if [ -z "$SHLEX_PYTHON" ]; then
        echo "kind-up: E2E_HELM_ARGS is split by Python's shlex: run make setup" >&2
        exit 2
    fi
    split_helm_args() {
        "$SHLEX_PYTHON" -c '
import shlex, sys
try:
    words = shlex.split(sys.argv[1])
except ValueError as exc:
    sys.exit(f"kind-up: E2E_HELM_ARGS: {exc}")
sys.stdout.write("".join(word + "\0" for word in words))
' "$E2E_HELM_ARGS"
    }
    split_helm_args >/dev/null || exit 2
    while IFS= read -r -d '' word; do
        HELM_EXTRA+=("$word")
    done < <(split_helm_args)
fi
CHART="charts/agentpool-operator"
PYTEST="$ROOT/.venv/bin/pytest"

say() { echo "kind-up: $*"; }

# Prints the command (dry run) or runs it.
run() {
    if [ "$DRY_RUN" = 1 ]; then
        printf '+'
        printf ' %q' "$@"
        printf '\n'
    else
        "$@"
    fi
}

# "repository tag" of an image reference, as the chart's image values take it.
split_image() {
    local image="$1" last
    if [[ "$image" == *@* ]]; then
        echo "kind-up: $image: use a tag, not a digest (the chart takes repository and tag)" >&2
        return 1
    fi
    last="${image##*/}"
    if [[ "$last" == *:* ]]; then
        echo "${image%:*} ${last##*:}"
    else
        echo "$image latest"
    fi
}

if [ "$MODE" = chart ]; then
    operator_ref="$(split_image "$OPERATOR_IMAGE")" || exit 2
    worker_ref="$(split_image "$WORKER_IMAGE")" || exit 2
    read -r operator_repository operator_tag <<<"$operator_ref"
    read -r worker_repository worker_tag <<<"$worker_ref"
fi

# -- prerequisites ---------------------------------------------------------------------------

HELM_BIN=""

find_helm() {
    if [ -n "${HELM:-}" ]; then
        [ -x "$HELM" ] && HELM_BIN="$HELM"
        return 0
    fi
    if [ -x "$ROOT/.tools/bin/helm" ]; then
        HELM_BIN="$ROOT/.tools/bin/helm"
        return 0
    fi
    if [ "$DRY_RUN" = 0 ] && [ "$CHECK_ONLY" = 0 ]; then
        say "installing helm into .tools/bin (scripts/install-helm.sh)"
        if bash "$ROOT/scripts/install-helm.sh" >&2 && [ -x "$ROOT/.tools/bin/helm" ]; then
            HELM_BIN="$ROOT/.tools/bin/helm"
            return 0
        fi
    fi
    HELM_BIN="$(command -v helm || true)"
}

check_prerequisites() {
    local missing=()
    if ! command -v docker >/dev/null 2>&1; then
        missing+=("docker: not found; install Docker (https://docs.docker.com/engine/install/)")
    elif [ "$DRY_RUN" = 0 ] && ! docker info >/dev/null 2>&1; then
        missing+=("docker: the Docker engine does not answer (docker info failed); start it or check DOCKER_HOST")
    fi
    command -v kind >/dev/null 2>&1 \
        || missing+=("kind: not found; install it (https://kind.sigs.k8s.io/docs/user/quick-start/#installation)")
    command -v kubectl >/dev/null 2>&1 \
        || missing+=("kubectl: not found; install it (https://kubernetes.io/docs/tasks/tools/)")
    find_helm
    if [ -z "$HELM_BIN" ]; then
        if [ -n "${HELM:-}" ]; then
            missing+=("helm: HELM=$HELM is not an executable")
        else
            missing+=("helm: not in .tools/bin nor on PATH; run scripts/install-helm.sh (linux-amd64) or install helm 3.14+")
        fi
    fi
    [ -x "$PYTEST" ] \
        || missing+=("pytest: $PYTEST missing; run make setup")
    if [ ${#missing[@]} -gt 0 ]; then
        local line
        for line in "${missing[@]}"; do
            echo "kind-up: missing prerequisite: $line" >&2
        done
        return 1
    fi
}

if ! check_prerequisites; then
    if [ "$DRY_RUN" = 1 ]; then
        say "dry run: continuing without the missing prerequisites"
        HELM_BIN="${HELM_BIN:-helm}"
    else
        exit 1
    fi
fi
if [ "$CHECK_ONLY" = 1 ]; then
    say "all prerequisites found"
    exit 0
fi

# -- cluster ---------------------------------------------------------------------------------

cluster_exists() {
    [ "$DRY_RUN" = 0 ] && kind get clusters 2>/dev/null | grep -qx "$CLUSTER"
}

run mkdir -p "$(dirname "$KUBECONFIG_FILE")"
if cluster_exists; then
    say "reusing kind cluster $CLUSTER"
    run kind export kubeconfig --name "$CLUSTER" --kubeconfig "$KUBECONFIG_FILE"
else
    say "creating kind cluster $CLUSTER"
    node_image=()
    [ -n "${KIND_NODE_IMAGE:-}" ] && node_image=(--image "$KIND_NODE_IMAGE")
    run kind create cluster --name "$CLUSTER" --kubeconfig "$KUBECONFIG_FILE" --wait 180s \
        --config e2e/kind-cluster.yaml ${node_image[@]+"${node_image[@]}"}
fi
export KUBECONFIG="$KUBECONFIG_FILE"
say "KUBECONFIG=$KUBECONFIG"

KIND_UP_LABEL="e2e.agentpool.dev/kind-up=true"

release_installed() {
    [ "$DRY_RUN" = 0 ] && "$HELM_BIN" status "$RELEASE" --namespace "$NAMESPACE" >/dev/null 2>&1
}

# deployed, failed, pending-install, ... ("" without a release, and in a dry run).
release_status() {
    [ "$DRY_RUN" = 0 ] || return 0
    { "$HELM_BIN" status "$RELEASE" --namespace "$NAMESPACE" 2>/dev/null || true; } \
        | sed -n 's/^STATUS: //p'
}

# A release kind-up installed (its helm label), as opposed to one installed by hand.
release_is_kind_ups() {
    [ "$DRY_RUN" = 0 ] || return 1
    "$HELM_BIN" list --namespace "$NAMESPACE" --selector "$KIND_UP_LABEL" \
        --deployed --failed --pending --short 2>/dev/null | grep -qx "$RELEASE"
}

# An install or upgrade interrupted half-way leaves the release pending-*, and every later
# `helm upgrade` fails with "another operation is in progress".
settle_pending_release() {
    local status
    status="$(release_status)"
    case "$status" in
        pending-install)
            say "release $RELEASE is pending-install (an install was interrupted): uninstalling it first"
            run "$HELM_BIN" uninstall "$RELEASE" --namespace "$NAMESPACE" --wait ;;
        pending-upgrade|pending-rollback)
            say "release $RELEASE is $status (an upgrade was interrupted): rolling it back first"
            run "$HELM_BIN" rollback "$RELEASE" --namespace "$NAMESPACE" ;;
    esac
}

# A release kind-up did not install is left alone: a local run next to it would have two
# operators on its pools.
if [ "$MODE" = local ] && release_installed && ! release_is_kind_ups; then
    echo "kind-up: local mode: release $RELEASE in namespace $NAMESPACE was not installed by" \
        "kind-up (no helm label $KIND_UP_LABEL), so kind-up leaves it alone, and its operator" \
        "would compete with the local one (a release an earlier kind-up made has no label" \
        "either). Uninstall it yourself (helm uninstall $RELEASE --namespace $NAMESPACE), or" \
        "test that release as it" \
        "is, the way to use a shared staging cluster: KUBECONFIG=$KUBECONFIG" \
        "E2E_OPERATOR=chart E2E_SKIP_INSTALL=1 E2E_RELEASE_NAMESPACE=$NAMESPACE" \
        "E2E_RELEASE=$RELEASE $PYTEST e2e -m e2e -rs" >&2
    exit 1
fi

# -- images ----------------------------------------------------------------------------------

# Without attestations: with Docker's containerd image store, `kind load` cannot copy an
# image whose provenance or SBOM manifests it lacks the content of.
build_flags=()
if [ "$DRY_RUN" = 0 ]; then
    for flag in provenance sbom; do
        if docker build --help 2>/dev/null | grep -q -- "--$flag"; then
            build_flags+=("--$flag=false")
        fi
    done
fi
images=("$WORKER_IMAGE")
run docker build ${build_flags[@]+"${build_flags[@]}"} -f Dockerfile.worker -t "$WORKER_IMAGE" .
if [ "$MODE" = chart ]; then
    run docker build ${build_flags[@]+"${build_flags[@]}"} -f Dockerfile.operator -t "$OPERATOR_IMAGE" .
    images+=("$OPERATOR_IMAGE")
fi
run kind load docker-image --name "$CLUSTER" "${images[@]}"

# -- chart -----------------------------------------------------------------------------------

if [ "$MODE" = chart ]; then
    # The CRD first: helm installs a chart's crds/ only when they are missing, never upgrades.
    run kubectl apply --server-side --force-conflicts --field-manager agentpool-e2e \
        -f crds/agentpool.dev_agentpools.yaml
    if [ "$DRY_RUN" = 1 ] || ! kubectl get namespace "$NAMESPACE" >/dev/null 2>&1; then
        run kubectl create namespace "$NAMESPACE"
    fi
    if [ -n "$POD_SECURITY" ]; then
        run kubectl label namespace "$NAMESPACE" --overwrite \
            "pod-security.kubernetes.io/enforce=$POD_SECURITY" \
            "pod-security.kubernetes.io/warn=$POD_SECURITY"
    fi
    settle_pending_release
    upgrading=0
    release_installed && upgrading=1
    say "installing the chart as release $RELEASE in namespace $NAMESPACE"
    run "$HELM_BIN" upgrade --install "$RELEASE" "$CHART" --namespace "$NAMESPACE" \
        --labels "$KIND_UP_LABEL" \
        --set-string "operator.image.repository=$operator_repository" \
        --set-string "operator.image.tag=$operator_tag" \
        --set-string "operator.image.pullPolicy=IfNotPresent" \
        --set-string "worker.image.repository=$worker_repository" \
        --set-string "worker.image.tag=$worker_tag" \
        ${HELM_EXTRA[@]+"${HELM_EXTRA[@]}"}
    if [ "$upgrading" = 1 ]; then
        # The image was rebuilt under the same tag: restart so that the new one runs.
        run kubectl --namespace "$NAMESPACE" rollout restart "deployment/$RELEASE-operator"
    fi
    say "waiting for Redis and the operator"
    run kubectl --namespace "$NAMESPACE" rollout status "statefulset/$RELEASE-redis" --timeout=300s
    run kubectl --namespace "$NAMESPACE" rollout status "deployment/$RELEASE-operator" --timeout=300s
elif release_installed; then
    # A chart-installed operator would serve the local run's pools too (kind-up's own: checked
    # before the images were built).
    say "local mode: uninstalling release $RELEASE (kind-up installed it; its operator would compete)"
    run "$HELM_BIN" uninstall "$RELEASE" --namespace "$NAMESPACE" --wait
fi

# -- suite -----------------------------------------------------------------------------------

suite_env=(
    "KUBECONFIG=$KUBECONFIG"
    "E2E_OPERATOR=$MODE"
    "E2E_WORKER_IMAGE=$WORKER_IMAGE"
    "E2E_OPERATOR_IMAGE=$OPERATOR_IMAGE"
    "E2E_RELEASE=$RELEASE"
    "E2E_POD_SECURITY=$POD_SECURITY"
    "E2E_HELM=$HELM_BIN"
    "E2E_NODE_DRAIN=1"
)
if [ "$MODE" = chart ]; then
    # The suite uses the release installed above, pools in its namespace (as the README does).
    suite_env+=("E2E_SKIP_INSTALL=1" "E2E_NAMESPACE=$NAMESPACE")
fi
if [ "$RUN_TESTS" = 0 ]; then
    say "ready; run the suite with: env $(printf '%q ' "${suite_env[@]}")$PYTEST e2e -m e2e -rs"
    exit 0
fi
say "running the e2e suite ($MODE mode)"
status=0
run env "${suite_env[@]}" "$PYTEST" e2e -m e2e -rs ${PYTEST_ARGS[@]+"${PYTEST_ARGS[@]}"} \
    || status=$?
say "the cluster stays up (KUBECONFIG=$KUBECONFIG); delete it with e2e/kind-down.sh"
exit "$status"
