// Command pool-controller keeps the agent Pods of every SandboxPool.
package main

import (
	"context"

	"github.com/go-logr/logr"

	"github.com/fast-sandbox/fast-sandbox/pkg/cli"
)

func main() {
	cli.Main(cli.Component{
		Name:  "pool-controller",
		Short: "Keeps the warm agent Pods of every SandboxPool.",
		Run: func(ctx context.Context, logger logr.Logger) error {
			logger.Info("pool controller started; waiting for shutdown")
			<-ctx.Done()
			return nil
		},
	})
}
