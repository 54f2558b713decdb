// Command scheduler places Sandboxes on agent slots with the kube-scheduler
// framework and tells the chosen agents what to run.
package main

import (
	"context"

	"github.com/go-logr/logr"

	"github.com/fast-sandbox/fast-sandbox/pkg/cli"
)

func main() {
	cli.Main(cli.Component{
		Name:  "scheduler",
		Short: "Places Sandboxes on agent slots with the kube-scheduler framework.",
		Run: func(ctx context.Context, logger logr.Logger) error {
			logger.Info("scheduler started; waiting for shutdown")
			<-ctx.Done()
			return nil
		},
	})
}
