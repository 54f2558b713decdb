#!/usr/bin/env bash
# Builds etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet
# and kubectl from the Go module proxy at the pinned versions (hack/tools/go.mod)
# into a cache outside the tree. Does nothing when they are already there.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
[ $# -gt 0 ] && K8S_VERSION=$1 && BIN_DIR=${FAST_SANDBOX_BIN_DIR:-$CACHE_DIR/bin/$K8S_VERSION}

bins=(etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl)
missing=0
for b in "${bins[@]}"; do [ -x "$BIN_DIR/$b" ] || missing=1; done
if [ $missing = 0 ]; then
  log "binaries of $K8S_VERSION are cached in $BIN_DIR"
  exit 0
fi

minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
tmp="$BIN_DIR.tmp"
rm -rf "$tmp" && mkdir -p "$tmp"
log "building ${bins[*]} ($K8S_VERSION, etcd $ETCD_VERSION) into $BIN_DIR; about 8 minutes on 2 cores when the build cache is cold"
cd "$REPO_ROOT/hack/tools"
CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$tmp/" \
  go.etcd.io/etcd/server/v3 \
  k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler \
  k8s.io/kubernetes/cmd/kubelet \
  k8s.io/kubernetes/cmd/kubectl
mv "$tmp/server" "$tmp/etcd"
rm -rf "$BIN_DIR" && mv "$tmp" "$BIN_DIR"
"$BIN_DIR/kubectl" version --client >&2
