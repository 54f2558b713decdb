#!/usr/bin/env bash
# Starts a single-node Kubernetes cluster on this machine, on loopback only:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, containerd
# (its own config, root and socket), a CNI bridge and kubelet. Writes
# CLUSTER_DIR/admin.kubeconfig and returns once the node is Ready and the
# default ServiceAccount exists. hack/cluster/down.sh undoes all of it.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

[ "$(id -u)" = 0 ] || die "the local cluster needs root (kubelet and containerd manage cgroups, mounts and network namespaces)"
for b in etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl; do
  [ -x "$BIN_DIR/$b" ] || die "$BIN_DIR/$b is missing: run 'make cluster-binaries'"
done
for t in containerd containerd-shim-runc-v2 runc ctr openssl iptables ip "$CNI_BIN_DIR/bridge" "$CNI_BIN_DIR/host-local" "$CNI_BIN_DIR/loopback"; do
  command -v "$t" >/dev/null || die "$t is missing: apt-get install containerd runc containernetworking-plugins iptables openssl iproute2"
done
if [ -f "$CLUSTER_DIR/pids" ] && "$BIN_DIR/kubectl" --kubeconfig "$KUBECONFIG_FILE" get --raw /readyz >/dev/null 2>&1; then
  if [ -f "$CLUSTER_DIR/pki/front-proxy-client.crt" ]; then
    log "the cluster is already up (kubeconfig $KUBECONFIG_FILE)"
    exit 0
  fi
  log "the running cluster predates the front proxy (aggregated APIs); recreating it"
fi
[ -e "$CLUSTER_DIR/pids" ] && { log "a previous cluster left state behind; cleaning it first"; "$(dirname "$0")/down.sh"; }

mkdir -p "$CLUSTER_DIR"/{pki,logs,etcd,kubelet,cni/net.d,containerd} "$RUN_DIR/containerd"
: > "$CLUSTER_DIR/pids"
cat /proc/sys/net/ipv4/ip_forward > "$CLUSTER_DIR/ip_forward.orig"
ls /var/run/netns 2>/dev/null > "$CLUSTER_DIR/netns.orig" || : > "$CLUSTER_DIR/netns.orig"
# containerd 1.6 keeps shim sockets in /run/containerd/s whatever its config says.
[ -e /run/containerd ] || touch "$CLUSTER_DIR/remove-run-containerd"

# start NAME CMD... runs a process in the background, logging to
# CLUSTER_DIR/logs/NAME.log, and records its PID for down.sh.
start() {
  local name=$1; shift
  "$@" >"$CLUSTER_DIR/logs/$name.log" 2>&1 &
  echo "$! $name" >> "$CLUSTER_DIR/pids"
}

# wait_for WHAT SECONDS CMD... polls CMD until it succeeds.
wait_for() {
  local what=$1 timeout=$2; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then
      log "timed out after ${timeout}s waiting for $what; last lines of the logs:"
      tail -n 20 "$CLUSTER_DIR"/logs/*.log >&2 || true
      exit 1
    fi
    sleep 0.2
  done
}

# --- certificates -----------------------------------------------------------
pki=$CLUSTER_DIR/pki
cert() { # cert NAME SUBJECT [SAN] [CA]   (CA: the signing CA's file stem, ca by default)
  local name=$1 subj=$2 san=${3:-} ca=${4:-ca}
  openssl genrsa -out "$pki/$name.key" 2048 2>/dev/null
  openssl req -new -key "$pki/$name.key" -subj "$subj" -out "$pki/$name.csr" 2>/dev/null
  local ext="$pki/$name.ext"
  { echo "basicConstraints=CA:FALSE"; echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=serverAuth,clientAuth"; [ -n "$san" ] && echo "subjectAltName=$san"; } > "$ext"
  openssl x509 -req -in "$pki/$name.csr" -CA "$pki/$ca.crt" -CAkey "$pki/$ca.key" -CAcreateserial \
    -days 365 -sha256 -extfile "$ext" -out "$pki/$name.crt" 2>/dev/null
  rm -f "$pki/$name.csr" "$ext"
}
log "writing certificates"
openssl genrsa -out "$pki/ca.key" 2048 2>/dev/null
openssl req -x509 -new -key "$pki/ca.key" -subj "/CN=fast-sandbox-local-ca" -days 365 -sha256 -out "$pki/ca.crt" 2>/dev/null
cert apiserver "/CN=kube-apiserver" \
  "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,IP:127.0.0.1,IP:10.96.0.1"
cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
cert admin "/O=system:masters/CN=kubernetes-admin"
cert controller-manager "/CN=system:kube-controller-manager"
cert scheduler "/CN=system:kube-scheduler"
cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME"
cert kubelet-serving "/CN=$NODE_NAME" "DNS:$NODE_NAME,DNS:localhost,IP:127.0.0.1,IP:$NODE_IP"
# The front proxy: kube-apiserver authenticates to aggregated API servers
# (the sandbox-apiserver) with this client certificate of its own CA, and they
# trust the X-Remote-* headers only from it.
openssl genrsa -out "$pki/front-proxy-ca.key" 2048 2>/dev/null
openssl req -x509 -new -key "$pki/front-proxy-ca.key" -subj "/CN=fast-sandbox-front-proxy-ca" -days 365 -sha256 -out "$pki/front-proxy-ca.crt" 2>/dev/null
cert front-proxy-client "/CN=front-proxy-client" "" front-proxy-ca
openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null

kubeconfig() { # kubeconfig NAME CERT
  local file=$CLUSTER_DIR/$1.kubeconfig
  cat > "$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: fast-sandbox
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority-data: $(base64 -w0 < "$pki/ca.crt")
users:
- name: $1
  user:
    client-certificate-data: $(base64 -w0 < "$pki/$2.crt")
    client-key-data: $(base64 -w0 < "$pki/$2.key")
contexts:
- name: fast-sandbox
  context: {cluster: fast-sandbox, user: $1}
current-context: fast-sandbox
EOF
}
kubeconfig admin admin
kubeconfig controller-manager controller-manager
kubeconfig scheduler scheduler
kubeconfig kubelet kubelet

# --- etcd and the control plane ----------------------------------------------
log "starting etcd"
start etcd "$BIN_DIR/etcd" --name default --data-dir "$CLUSTER_DIR/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "default=http://127.0.0.1:$ETCD_PEER_PORT" --listen-metrics-urls "" \
  --quota-backend-bytes 2147483648 --unsafe-no-fsync
wait_for etcd 30 curl -fsS "http://127.0.0.1:$ETCD_CLIENT_PORT/health"

log "starting kube-apiserver"
start kube-apiserver "$BIN_DIR/kube-apiserver" \
  --etcd-servers "http://127.0.0.1:$ETCD_CLIENT_PORT" \
  --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$APISERVER_PORT" \
  --endpoint-reconciler-type none \
  --service-cluster-ip-range "$SERVICE_CIDR" \
  --client-ca-file "$pki/ca.crt" \
  --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
  --kubelet-client-certificate "$pki/apiserver-kubelet-client.crt" --kubelet-client-key "$pki/apiserver-kubelet-client.key" \
  --kubelet-preferred-address-types InternalIP,Hostname \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
  --authorization-mode Node,RBAC --allow-privileged=true \
  --requestheader-client-ca-file "$pki/front-proxy-ca.crt" --requestheader-allowed-names front-proxy-client \
  --requestheader-username-headers X-Remote-User --requestheader-group-headers X-Remote-Group \
  --requestheader-extra-headers-prefix X-Remote-Extra- \
  --proxy-client-cert-file "$pki/front-proxy-client.crt" --proxy-client-key-file "$pki/front-proxy-client.key" \
  --enable-aggregator-routing=true \
  --enable-admission-plugins NodeRestriction \
  --profiling=false
wait_for kube-apiserver 90 kubectl_ get --raw /readyz

log "starting kube-controller-manager and kube-scheduler"
start kube-controller-manager "$BIN_DIR/kube-controller-manager" \
  --kubeconfig "$CLUSTER_DIR/controller-manager.kubeconfig" \
  --authentication-kubeconfig "$CLUSTER_DIR/controller-manager.kubeconfig" \
  --authorization-kubeconfig "$CLUSTER_DIR/controller-manager.kubeconfig" \
  --bind-address 127.0.0.1 --leader-elect=false \
  --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
  --cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key" \
  --use-service-account-credentials=true
start kube-scheduler "$BIN_DIR/kube-scheduler" \
  --kubeconfig "$CLUSTER_DIR/scheduler.kubeconfig" \
  --authentication-kubeconfig "$CLUSTER_DIR/scheduler.kubeconfig" \
  --authorization-kubeconfig "$CLUSTER_DIR/scheduler.kubeconfig" \
  --bind-address 127.0.0.1 --leader-elect=false

# --- containerd and CNI -------------------------------------------------------
log "starting containerd ($CONTAINERD_SOCK)"
cat > "$CLUSTER_DIR/containerd/config.toml" <<EOF
version = 2
root = "$CONTAINERD_ROOT"
state = "$RUN_DIR/containerd/state"
[grpc]
  address = "$CONTAINERD_SOCK"
[ttrpc]
  address = "$RUN_DIR/containerd/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  restrict_oom_score_adj = true
  enable_unprivileged_ports = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "$RUN_DIR/runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.crun]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.crun.options]
        BinaryName = "$(command -v crun || echo /usr/bin/crun)"
        Root = "$RUN_DIR/crun"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN_DIR"
    conf_dir = "$CLUSTER_DIR/cni/net.d"
EOF
cat > "$CLUSTER_DIR/cni/net.d/10-fast-sandbox.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "fast-sandbox",
  "plugins": [
    {"type": "bridge", "bridge": "$CNI_BRIDGE", "isGateway": true, "ipMasq": false,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR"}]], "routes": [{"dst": "0.0.0.0/0"}],
              "dataDir": "$CLUSTER_DIR/cni/ipam"}},
    {"type": "loopback"}
  ]
}
EOF
# The bridge exists before kubelet so that its gateway address can be the
# node's address: kubelet refuses a loopback node IP, and the machine's own
# interfaces are not for the cluster. The CNI bridge plugin reuses it.
if ! ip link show "$CNI_BRIDGE" >/dev/null 2>&1; then
  ip link add "$CNI_BRIDGE" type bridge
  ip addr add "$NODE_IP/${POD_CIDR#*/}" dev "$CNI_BRIDGE"
  ip link set "$CNI_BRIDGE" up
fi
start containerd containerd --config "$CLUSTER_DIR/containerd/config.toml"
wait_for containerd 30 ctr_ version

"$(dirname "$0")/../images.sh" --pause-only

# --- kubelet ------------------------------------------------------------------
log "starting kubelet ($NODE_NAME)"
cat > "$CLUSTER_DIR/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
healthzBindAddress: 127.0.0.1
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$pki/ca.crt"}
authorization: {mode: Webhook}
tlsCertFile: "$pki/kubelet-serving.crt"
tlsPrivateKeyFile: "$pki/kubelet-serving.key"
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: "unix://$CONTAINERD_SOCK"
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
evictionHard: {memory.available: "50Mi", nodefs.available: "1%", nodefs.inodesFree: "1%", imagefs.available: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
registerNode: true
maxPods: 110
EOF
start kubelet "$BIN_DIR/kubelet" --config "$CLUSTER_DIR/kubelet/config.yaml" \
  --kubeconfig "$CLUSTER_DIR/kubelet.kubeconfig" --root-dir "$CLUSTER_DIR/kubelet" \
  --hostname-override "$NODE_NAME" --node-ip "$NODE_IP"

node_ready() {
  [ "$(kubectl_ get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}
wait_for "node $NODE_NAME to be Ready" 120 node_ready
wait_for "the default ServiceAccount" 60 kubectl_ -n default get serviceaccount default
log "cluster is up in ${SECONDS}s: export KUBECONFIG=$KUBECONFIG_FILE"
