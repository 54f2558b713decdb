//go:build tools

// Package lint pins golangci-lint, which hack/verify.sh runs. It is a module
// of its own so that the linter's dependencies never move the versions the
// Kubernetes and code-generator tools in hack/tools build with.
package lint

import (
	_ "github.com/golangci/golangci-lint/v2/cmd/golangci-lint"
)
