#!/usr/bin/env bash
# Stops the local cluster that up.sh started and removes every trace of it:
# containers, the processes it recorded, mounts, cgroups, network namespaces,
# the CNI bridge, kubelet's iptables chains, and ip_forward as it was.
set -uo pipefail
source "$(dirname "$0")/lib.sh"

[ "$(id -u)" = 0 ] || die "needs root"
pids_file=$CLUSTER_DIR/pids

pid_of() { awk -v n="$1" '$2 == n {print $1}' "$pids_file" 2>/dev/null; }
alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }
stop_pid() { # stop_pid PID: SIGTERM, then SIGKILL after 10s
  local pid=$1 i
  alive "$pid" || return 0
  kill -TERM "$pid" 2>/dev/null
  for i in $(seq 100); do alive "$pid" || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null
}

# 1. kubelet first, so nothing restarts the containers we remove.
stop_pid "$(pid_of kubelet)"

# 2. Every task and container in every containerd namespace of our containerd.
if alive "$(pid_of containerd)" && [ -S "$CONTAINERD_SOCK" ]; then
  for ns in $(ctr_ namespaces ls -q 2>/dev/null); do
    for t in $(ctr_ -n "$ns" tasks ls -q 2>/dev/null); do ctr_ -n "$ns" tasks kill -s SIGKILL "$t" >/dev/null 2>&1; done
    for t in $(ctr_ -n "$ns" tasks ls -q 2>/dev/null); do ctr_ -n "$ns" tasks delete -f "$t" >/dev/null 2>&1; done
    for c in $(ctr_ -n "$ns" containers ls -q 2>/dev/null); do ctr_ -n "$ns" containers delete "$c" >/dev/null 2>&1; done
  done
fi

# 3. The rest of what up.sh started, newest first; then any shim of our containerd.
if [ -f "$pids_file" ]; then
  tac "$pids_file" | while read -r pid name; do stop_pid "$pid"; done
fi
pkill -KILL -f "containerd-shim-runc-v2 .*-address $CONTAINERD_SOCK" 2>/dev/null

# 4. Processes left in the Pods' cgroups, then the cgroups themselves.
for hier in /sys/fs/cgroup/*/ /sys/fs/cgroup/; do
  d=${hier%/}/kubepods
  [ -d "$d" ] || continue
  find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -KILL 2>/dev/null
done
sleep 0.2
for hier in /sys/fs/cgroup/*/ /sys/fs/cgroup/; do
  d=${hier%/}/kubepods
  [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
done

# 5. Mounts under the cluster's directories, deepest first.
for dir in "$CLUSTER_DIR" "$RUN_DIR"; do
  awk -v d="$dir" '$2 == d || index($2, d "/") == 1 {print $2}' /proc/self/mounts | sort -r | while read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
  done
done

# 6. Network namespaces the CRI made, the bridge, kubelet's iptables chains, ip_forward.
if [ -f "$CLUSTER_DIR/netns.orig" ]; then
  for ns in $(ls /var/run/netns 2>/dev/null); do
    case $ns in cni-*) grep -qx "$ns" "$CLUSTER_DIR/netns.orig" || ip netns delete "$ns" 2>/dev/null ;; esac
  done
fi
ip link show "$CNI_BRIDGE" >/dev/null 2>&1 && ip link delete "$CNI_BRIDGE"
for ipt in iptables ip6tables; do
  command -v $ipt >/dev/null || continue
  for table in filter nat mangle; do
    rules=$($ipt -t $table -S 2>/dev/null) || continue
    # Rules that jump to a KUBE-* chain from a built-in chain, then the chains.
    echo "$rules" | grep -E '^-A [A-Z]+ .*-j KUBE-' | grep -vE '^-A KUBE-' | while read -r rule; do
      eval "$ipt -t $table ${rule/-A/-D}" 2>/dev/null
    done
    for chain in $(echo "$rules" | awk '$1 == "-N" && $2 ~ /^KUBE-/ {print $2}'); do
      $ipt -t $table -F "$chain" 2>/dev/null
    done
    for chain in $(echo "$rules" | awk '$1 == "-N" && $2 ~ /^KUBE-/ {print $2}'); do
      $ipt -t $table -X "$chain" 2>/dev/null
    done
  done
done
[ -f "$CLUSTER_DIR/ip_forward.orig" ] && cat "$CLUSTER_DIR/ip_forward.orig" > /proc/sys/net/ipv4/ip_forward

# 7. The directories themselves (and /run/containerd when up.sh found none).
[ -f "$CLUSTER_DIR/remove-run-containerd" ] && rm -rf /run/containerd
rm -rf "$CLUSTER_DIR" "$RUN_DIR"
# The agents' state directory on the node (a hostPath of every agent Pod,
# pkg/poolcontroller.StateDir): its logs and warm sockets outlive the cluster.
rm -rf /var/lib/fast-sandbox/agent
rmdir --ignore-fail-on-non-empty "$(dirname "$CLUSTER_DIR")" 2>/dev/null
log "cluster removed"
