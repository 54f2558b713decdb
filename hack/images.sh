#!/usr/bin/env bash
# Builds the OCI images of the local cluster without a Docker engine or a
# registry (hack/imagebuild) and imports them into the cluster's containerd,
# namespace k8s.io, where kubelet and the agents find them:
#   registry.k8s.io/pause:3.10              the Pods' sandbox container (hack/pause)
#   docker.io/fast-sandbox/testbox:latest   Debian's busybox-static: sh, sleep, echo, cat, ...
#   docker.io/fast-sandbox/{agent,scheduler,pool-controller,sandbox-apiserver}:$VERSION   the components
#                                           (the agent's image also holds sandbox-init)
#
#   hack/images.sh [--pause-only] [--no-import]
set -euo pipefail
source "$(dirname "$0")/cluster/lib.sh"

pause_only=false import=true
for a in "$@"; do
  case $a in
    --pause-only) pause_only=true ;;
    --no-import) import=false ;;
    *) die "unknown argument $a" ;;
  esac
done

out=$REPO_ROOT/_output/images
tools=$REPO_ROOT/_output/tools
mkdir -p "$out" "$tools"
cd "$REPO_ROOT"
CGO_ENABLED=0 go build -trimpath -o "$tools/imagebuild" ./hack/imagebuild
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$tools/pause" ./hack/pause

images=()
"$tools/imagebuild" -ref "$PAUSE_IMAGE" -o "$out/pause.tar" -entrypoint /pause "$tools/pause:/pause" >&2
images+=("$out/pause.tar")
if [ "$pause_only" = false ]; then
  busybox=${BUSYBOX:-/bin/busybox}
  [ -x "$busybox" ] || die "$busybox is missing: apt-get install busybox-static"
  "$tools/imagebuild" -ref "$TEST_IMAGE" -o "$out/testbox.tar" -busybox "$busybox" -cmd /bin/sh >&2
  images+=("$out/testbox.tar")
  ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$VERSION -X k8s.io/component-base/version.gitMajor=0 -X k8s.io/component-base/version.gitMinor=1"
  CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$tools/components/" ./cmd/agent ./cmd/scheduler ./cmd/pool-controller ./cmd/sandbox-apiserver ./cmd/sandbox-init
  for c in agent scheduler pool-controller sandbox-apiserver; do
    files=("$tools/components/$c:/$c")
    # The agent's warm containers run sandbox-init; the agent finds it beside itself.
    [ "$c" = agent ] && files+=("$tools/components/sandbox-init:/sandbox-init")
    "$tools/imagebuild" -ref "docker.io/fast-sandbox/$c:$VERSION" -o "$out/$c.tar" -entrypoint "/$c" "${files[@]}" >&2
    images+=("$out/$c.tar")
  done
fi

if [ "$import" = true ]; then
  [ -S "$CONTAINERD_SOCK" ] || die "containerd is not running at $CONTAINERD_SOCK: run 'make cluster-up' first"
  for i in "${images[@]}"; do
    ctr_ -n k8s.io images import "$i" >&2
  done
  log "imported ${#images[@]} image(s) into containerd namespace k8s.io"
fi
