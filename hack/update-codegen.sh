#!/usr/bin/env bash
# Regenerates everything generated from the API types: deepcopy functions,
# the typed clientset, listers and informers (k8s.io/code-generator), and the
# CRD manifests (sigs.k8s.io/controller-tools); and for the scheduler plugins'
# args (pkg/apis/config, internal and v1) deepcopy functions, defaulters and
# conversions. The generator versions are pinned by hack/tools/go.mod; they
# are built into _output/tools.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
module=$(go list -m)
apis=pkg/apis/sandbox/v1alpha1
subapis=pkg/apis/subresources/v1alpha1
args=pkg/apis/config
out=pkg/generated
bin="$root/_output/tools"
header="$root/hack/boilerplate.go.txt"

mkdir -p "$bin"
(cd hack/tools && go build -o "$bin/" \
  k8s.io/code-generator/cmd/deepcopy-gen \
  k8s.io/code-generator/cmd/conversion-gen \
  k8s.io/code-generator/cmd/defaulter-gen \
  k8s.io/code-generator/cmd/client-gen \
  k8s.io/code-generator/cmd/lister-gen \
  k8s.io/code-generator/cmd/informer-gen \
  sigs.k8s.io/controller-tools/cmd/controller-gen)

rm -rf "$out" "$apis/zz_generated.deepcopy.go" "$subapis/zz_generated.deepcopy.go" manifests/crds/fast-sandbox.io_*.yaml \
  "$args"/zz_generated.*.go "$args"/v1/zz_generated.*.go

"$bin/deepcopy-gen" --go-header-file "$header" --output-file zz_generated.deepcopy.go "./$apis"
# The aggregated API of the interactive subresources (sandbox-apiserver):
# deepcopy only; its query conversions are hand-written.
"$bin/deepcopy-gen" --go-header-file "$header" --output-file zz_generated.deepcopy.go "./$subapis"

"$bin/client-gen" --go-header-file "$header" \
  --output-dir "$out/clientset" --output-pkg "$module/$out/clientset" \
  --clientset-name versioned --input-base "$module/pkg/apis" --input sandbox/v1alpha1

"$bin/lister-gen" --go-header-file "$header" \
  --output-dir "$out/listers" --output-pkg "$module/$out/listers" "./$apis"

"$bin/informer-gen" --go-header-file "$header" \
  --output-dir "$out/informers" --output-pkg "$module/$out/informers" \
  --versioned-clientset-package "$module/$out/clientset/versioned" \
  --listers-package "$module/$out/listers" "./$apis"

"$bin/controller-gen" crd:crdVersions=v1 paths="./$apis/..." output:crd:artifacts:config=manifests/crds

# Scheduler plugin args: the internal types need deepcopy only; v1 needs
# deepcopy, the defaulters of its SetDefaults_* functions, and conversions
# to and from the internal types.
"$bin/deepcopy-gen" --go-header-file "$header" --output-file zz_generated.deepcopy.go "./$args" "./$args/v1"
"$bin/defaulter-gen" --go-header-file "$header" --output-file zz_generated.defaults.go "./$args/v1"
"$bin/conversion-gen" --go-header-file "$header" --output-file zz_generated.conversion.go "./$args/v1"

gofmt -s -w "$apis" "$subapis" "$out" "$args"
