// Package cli builds the command line of the fast-sandbox binaries (version
// and logging flags through k8s.io/component-base, a context that ends on
// SIGINT or SIGTERM) and the plumbing the control-plane binaries share: API
// client configuration, leader election, the metrics and health server.
package cli

import (
	"context"
	"os"

	"github.com/go-logr/logr"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"k8s.io/apiserver/pkg/server"
	"k8s.io/component-base/cli"
	"k8s.io/component-base/version/verflag"
	"k8s.io/klog/v2"

	"github.com/fast-sandbox/fast-sandbox/pkg/logging"
)

// Component is one binary: its name, what it says of itself, its own flags,
// and the function that runs it until ctx ends.
type Component struct {
	Name  string
	Short string
	// AddFlags registers the component's own flags.
	AddFlags func(fs *pflag.FlagSet)
	// Run runs the component; ctx ends on SIGINT or SIGTERM.
	Run func(ctx context.Context, logger logr.Logger) error
}

// Main runs a component and exits with its status.
func Main(c Component) {
	os.Exit(cli.Run(Command(c)))
}

// Command builds the cobra command of a component.
func Command(c Component) *cobra.Command {
	logOpts := logging.NewOptions()
	cmd := &cobra.Command{
		Use:          c.Name,
		Short:        c.Short,
		SilenceUsage: true,
		Args:         cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			verflag.PrintAndExitIfRequested()
			logger, err := logOpts.Setup(c.Name)
			if err != nil {
				return err
			}
			defer klog.Flush()
			ctx := server.SetupSignalContext()
			ctx = logr.NewContext(ctx, logger)
			return c.Run(ctx, logger)
		},
	}
	fs := cmd.Flags()
	verflag.AddFlags(fs)
	logOpts.AddFlags(fs)
	if c.AddFlags != nil {
		c.AddFlags(fs)
	}
	return cmd
}
