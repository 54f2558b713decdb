#!/usr/bin/env bash
# make up: brings up the local single-node cluster, builds and imports the
# images, deploys fast-sandbox, creates the sample pool, waits until its
# agents are Ready, and runs a sample Sandbox to Succeeded.
set -euo pipefail
source "$(dirname "$0")/cluster/lib.sh"
cd "$REPO_ROOT"

hack/cluster/build-binaries.sh
hack/cluster/up.sh
hack/images.sh
log "deploying fast-sandbox (manifests/local)"
redeploy=false
kubectl_ -n fast-sandbox-system get deployment/fast-sandbox-scheduler >/dev/null 2>&1 && redeploy=true
kubectl_ apply -k manifests/local >/dev/null
if [ "$redeploy" = true ]; then
  # Already deployed: the images keep their tag, so restart onto the ones just built,
  # and let the pool controller replace the agents.
  kubectl_ -n fast-sandbox-system rollout restart deployment/fast-sandbox-scheduler deployment/fast-sandbox-pool-controller \
    deployment/fast-sandbox-apiserver >/dev/null
  kubectl_ delete pods -A -l fast-sandbox.io/pool-name --wait=false >/dev/null
fi
kubectl_ -n fast-sandbox-system rollout status deployment/fast-sandbox-scheduler --timeout=120s
kubectl_ -n fast-sandbox-system rollout status deployment/fast-sandbox-pool-controller --timeout=120s
# The sandbox-apiserver starts once the pool controller has issued its client
# and serving certificates; kube-apiserver then reaches it through the
# aggregation layer and verifies it with the APIService's caBundle, which the
# pool controller sets (Available implies both).
kubectl_ -n fast-sandbox-system rollout status deployment/fast-sandbox-apiserver --timeout=120s
kubectl_ wait apiservice/v1alpha1.subresources.fast-sandbox.io --for=condition=Available --timeout=120s

log "creating the sample pool (manifests/samples/pool.yaml)"
kubectl_ apply -f manifests/samples/pool.yaml >/dev/null
kubectl_ wait sandboxpool/default --for=jsonpath='{.status.readyAgents}'=1 --timeout=120s >/dev/null

log "running the sample sandbox (manifests/samples/sandbox-hello.yaml)"
kubectl_ delete -f manifests/samples/sandbox-hello.yaml --ignore-not-found >/dev/null
kubectl_ apply -f manifests/samples/sandbox-hello.yaml >/dev/null
kubectl_ wait sandbox/hello --for=jsonpath='{.status.phase}'=Succeeded --timeout=60s >/dev/null
kubectl_ get sandboxpools,sandboxes -o wide

cat <<MSG

fast-sandbox is up. Try:
  export KUBECONFIG=$KUBECONFIG_FILE
  alias kubectl=$BIN_DIR/kubectl
  kubectl get sandboxes -w
  kubectl apply -f manifests/samples/sandbox-fails.yaml     # Failed, exit code 3
  kubectl apply -f manifests/samples/sandbox-oom.yaml       # Failed, OOMKilled
  kubectl apply -f manifests/samples/sandbox-invalid.yaml   # refused at admission
  kubectl describe sandbox hello
Interactive sandboxes (exec, attach, logs, files through subresources.fast-sandbox.io) with the
kubectl plugin (make install-plugin): kubectl sandbox run demo --image $TEST_IMAGE --rm -it -- sh
Logs of every component: $CLUSTER_DIR/logs/ and kubectl -n fast-sandbox-system logs deploy/fast-sandbox-scheduler
Remove it all: make down
MSG
