#!/usr/bin/env bash
# Fails when generated code or CRDs are stale, gofmt would change a file, or
# go vet or golangci-lint (.golangci.yaml) complains. Regenerates into the
# tree and compares with git, so run it on a clean tree (CI does).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

status=0
hack/update-codegen.sh
if ! git diff --quiet -- pkg manifests || [ -n "$(git status --porcelain --untracked-files=all -- pkg/generated pkg/apis manifests/crds)" ]; then
  echo "generated code or CRDs are stale: run 'make generate' and commit the result:" >&2
  git status --short -- pkg manifests >&2
  git diff --stat -- pkg manifests >&2
  status=1
fi

unformatted=$(gofmt -s -l $(git ls-files '*.go') 2>&1 || true)
if [ -n "$unformatted" ]; then
  echo "gofmt -s would change these files:" >&2
  echo "$unformatted" >&2
  status=1
fi

go vet ./... || status=1
(cd hack/tools && go mod verify >/dev/null) || status=1

# golangci-lint, at the version hack/tools/lint pins, with .golangci.yaml.
(cd hack/tools/lint && go mod verify >/dev/null && go build -o "$root/_output/tools/golangci-lint" github.com/golangci/golangci-lint/v2/cmd/golangci-lint) || status=1
"$root/_output/tools/golangci-lint" run ./... || status=1
exit $status
