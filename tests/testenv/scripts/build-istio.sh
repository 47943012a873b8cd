#!/usr/bin/env bash
# Builds Istio's pilot-discovery (istiod) and istioctl from the Go module proxy into "$1" (a cache
# directory keyed by the pinned module version). Never downloads prebuilt binaries.
#
# istio.io/istio publishes no tagged module versions: the caller pins a pseudo-version of master.
set -euo pipefail
out=${1:?usage: build-istio.sh OUT_DIR MODULE_VERSION BUILD_VERSION}
module=${2:?istio.io/istio module version, e.g. v0.0.0-20260827124520-eed52ebb66ad}
build=${3:?version string stamped into the binaries, e.g. 1.31-dev}
mkdir -p "$out"
export GOFLAGS=-mod=mod CGO_ENABLED=0 GOTOOLCHAIN=local
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

step() { printf '[build-istio] %s (%ss)\n' "$1" "$SECONDS"; }

need=()
for b in pilot-discovery istioctl; do
  [ -x "$out/$b" ] || need+=("$b")
done
[ ${#need[@]} -gt 0 ] || { step "done: $out"; exit 0; }

step "istio.io/istio@$module: resolving modules"
cd "$work"
go mod init local/istiobins >/dev/null 2>&1
go get "istio.io/istio@$module" >/dev/null
ld="-s -w -X istio.io/istio/pkg/version.buildVersion=$build"
for b in "${need[@]}"; do
  case $b in
    pilot-discovery) pkg=istio.io/istio/pilot/cmd/pilot-discovery ;;
    istioctl) pkg=istio.io/istio/istioctl/cmd/istioctl ;;
  esac
  step "compiling $b"
  go build -trimpath -ldflags "$ld" -o "$out/$b.tmp" "$pkg"
  mv "$out/$b.tmp" "$out/$b"
done
step "done: $out"
