#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager, kubectl and etcd from the Go module proxy
# into "$1" (a cache directory keyed by version), or with a 4th argument the Kubernetes binaries
# it lists (e.g. "kubelet kube-proxy kube-scheduler" for a node). Never downloads prebuilt
# binaries.
#
# k8s.io/kubernetes cannot be `go install`ed: its go.mod requires the staging modules at v0.0.0
# and replaces them with ./staging paths. A throwaway wrapper module replaces each staging module
# with its published release (Kubernetes v1.M.P <-> staging v0.M.P).
set -euo pipefail
out=${1:?usage: build-control-plane.sh OUT_DIR KUBERNETES_VERSION ETCD_VERSION [BINARIES]}
k8s=${2:?kubernetes version, e.g. 1.35.4}
etcd=${3:?etcd version, e.g. 3.6.16}
binaries=${4:-etcd kube-apiserver kube-controller-manager kubectl}
mkdir -p "$out"
export GOFLAGS=-mod=mod CGO_ENABLED=0 GOTOOLCHAIN=local
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

step() { printf '[build-control-plane] %s (%ss)\n' "$1" "$SECONDS"; }

if [[ " $binaries " == *" etcd "* ]] && [ ! -x "$out/etcd" ]; then
  step "etcd v$etcd: resolving modules"
  mkdir -p "$work/etcd" && cd "$work/etcd"
  go mod init local/etcd >/dev/null 2>&1
  go get "go.etcd.io/etcd/server/v3@v$etcd" >/dev/null
  step "etcd v$etcd: compiling"
  go build -trimpath -o "$out/etcd.tmp" go.etcd.io/etcd/server/v3
  mv "$out/etcd.tmp" "$out/etcd"
fi

need=()
for b in $binaries; do
  [ "$b" = etcd ] || [ -x "$out/$b" ] || need+=("$b")
done
if [ ${#need[@]} -gt 0 ]; then
  step "kubernetes v$k8s: resolving modules"
  mkdir -p "$work/k8s" && cd "$work/k8s"
  go mod init local/kbins >/dev/null 2>&1
  gomod=$(go mod download -json "k8s.io/kubernetes@v$k8s" | sed -n 's/^\s*"GoMod": "\(.*\)",$/\1/p')
  staging=$(sed -n 's#^\s*\(k8s\.io/[^ ]*\) => \./staging/src/.*#\1#p' "$gomod")
  args=()
  for m in $staging; do args+=("-replace=$m=$m@v0.${k8s#1.}"); done
  go mod edit "${args[@]}"
  go get "k8s.io/kubernetes@v$k8s" >/dev/null
  minor=${k8s#1.}; minor=${minor%%.*}
  ld="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=v$k8s -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
  done
  for b in "${need[@]}"; do
    step "kubernetes v$k8s: compiling $b"
    go build -trimpath -ldflags "$ld" -o "$out/$b.tmp" "k8s.io/kubernetes/cmd/$b"
    mv "$out/$b.tmp" "$out/$b"
  done
fi
step "done: $out"
