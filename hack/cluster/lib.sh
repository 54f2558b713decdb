# Shared settings of the local cluster scripts (sourced, not run).
# Everything the cluster writes lives under CLUSTER_DIR and RUN_DIR, and every
# process it starts is recorded in CLUSTER_DIR/pids, so down.sh removes exactly
# what up.sh made.

K8S_VERSION=${K8S_VERSION:-v1.37.2}
ETCD_VERSION=${ETCD_VERSION:-v3.7.0}
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CACHE_DIR=${XDG_CACHE_HOME:-$HOME/.cache}/fast-sandbox
BIN_DIR=${FAST_SANDBOX_BIN_DIR:-$CACHE_DIR/bin/$K8S_VERSION}
CLUSTER_DIR=${FAST_SANDBOX_CLUSTER_DIR:-/var/lib/fast-sandbox/cluster}
RUN_DIR=${FAST_SANDBOX_RUN_DIR:-/run/fast-sandbox}
NODE_NAME=${FAST_SANDBOX_NODE_NAME:-fast-sandbox-node}
CONTAINERD_SOCK=$RUN_DIR/containerd/containerd.sock
CONTAINERD_ROOT=$CLUSTER_DIR/containerd/root
KUBECONFIG_FILE=$CLUSTER_DIR/admin.kubeconfig
APISERVER_PORT=${FAST_SANDBOX_APISERVER_PORT:-6443}
ETCD_CLIENT_PORT=12379
ETCD_PEER_PORT=12380
POD_CIDR=10.244.0.0/24
# The node address is the CNI bridge's gateway address (see up.sh).
NODE_IP=10.244.0.1
SERVICE_CIDR=10.96.0.0/16
CNI_BRIDGE=fsbx0
CNI_BIN_DIR=${CNI_BIN_DIR:-/usr/lib/cni}
PAUSE_IMAGE=registry.k8s.io/pause:3.10
TEST_IMAGE=docker.io/fast-sandbox/testbox:latest
# VERSION tags the component images; manifests/ name the same tag.
VERSION=${VERSION:-v0.1.0}

log() { printf '%s [cluster] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Discovery is cached per cluster: a cache of an earlier cluster (e.g. with
# SandboxPool still namespaced) would send requests to the wrong URLs.
kubectl_() { "$BIN_DIR/kubectl" --kubeconfig "$KUBECONFIG_FILE" --cache-dir "$CLUSTER_DIR/kubectl-cache" "$@"; }
ctr_() { ctr -a "$CONTAINERD_SOCK" "$@"; }
