// Command agent runs in each agent Pod of a SandboxPool and creates the
// Pod's sandbox containers through the node's containerd.
package main

import (
	"context"

	"github.com/go-logr/logr"

	"github.com/fast-sandbox/fast-sandbox/pkg/cli"
)

func main() {
	cli.Main(cli.Component{
		Name:  "agent",
		Short: "Runs sandbox containers of one agent Pod through the node's containerd.",
		Run: func(ctx context.Context, logger logr.Logger) error {
			logger.Info("agent started; waiting for shutdown")
			<-ctx.Done()
			return nil
		},
	})
}
