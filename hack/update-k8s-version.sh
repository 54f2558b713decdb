#!/usr/bin/env bash
# Moves the module (and the tools module under hack/tools) to a Kubernetes
# release: requires k8s.io/kubernetes at VERSION and replaces every staging
# module (k8s.io/api, k8s.io/client-go, ...) with the matching v0.x.y tag, as
# listed in that release's own go.mod.
#
#   hack/update-k8s-version.sh v1.37.2
set -euo pipefail

version=${1:?usage: $0 vX.Y.Z (a k8s.io/kubernetes release)}
staging=v0.${version#v1.}
root=$(cd "$(dirname "$0")/.." && pwd)

gomod=$(go mod download -json "k8s.io/kubernetes@${version}" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')
[ -f "$gomod" ] || { echo "cannot fetch go.mod of k8s.io/kubernetes@${version}" >&2; exit 1; }

# Staging modules are the ones k8s.io/kubernetes replaces with ./staging/src/...
mapfile -t modules < <(awk '$2 == "=>" && $3 ~ /^\.\/staging\/src\// {print $1}' "$gomod" | sort -u)
[ ${#modules[@]} -gt 0 ] || { echo "no staging replaces found in ${gomod}" >&2; exit 1; }

for dir in "$root" "$root/hack/tools"; do
  [ -f "$dir/go.mod" ] || continue
  (
    cd "$dir"
    args=()
    for m in "${modules[@]}"; do args+=("-replace=${m}=${m}@${staging}"); done
    go mod edit "${args[@]}" "-require=k8s.io/kubernetes@${version}"
    go mod tidy
  )
  echo "updated $dir/go.mod to k8s.io/kubernetes ${version} (staging ${staging}, ${#modules[@]} modules)"
done
