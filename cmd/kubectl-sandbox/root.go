package main

import (
	"flag"
	"fmt"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/klog/v2"

	"github.com/fast-sandbox/fast-sandbox/pkg/client"
)

// options are what every subcommand shares: the cluster flags, the streams
// and how to get a client (replaced in tests).
type options struct {
	configFlags *genericclioptions.ConfigFlags
	streams     genericiooptions.IOStreams
	newClient   func() (*client.Client, error)
}

// namespace is the namespace of -n, else the kubeconfig context's, else
// "default"; explicit says whether -n gave it.
func (o *options) namespace() (ns string, explicit bool, err error) {
	return o.configFlags.ToRawKubeConfigLoader().Namespace()
}

func (o *options) client() (*client.Client, error) {
	if o.newClient != nil {
		return o.newClient()
	}
	cfg, err := o.configFlags.ToRESTConfig()
	if err != nil {
		return nil, err
	}
	if cfg.UserAgent == "" {
		cfg.UserAgent = "kubectl-sandbox"
	}
	return client.New(cfg)
}

func newOptions(streams genericiooptions.IOStreams) *options {
	return &options{configFlags: genericclioptions.NewConfigFlags(true), streams: streams}
}

func newRootCommand(o *options) *cobra.Command {
	root := &cobra.Command{
		Use:   "kubectl-sandbox",
		Short: "Run and talk to fast-sandbox Sandboxes",
		Long: `Run and talk to fast-sandbox Sandboxes: create one, run commands in it,
follow its log, copy files in and out, pause and resume it.

Everything goes through the Kubernetes API server (the Sandbox objects and
the aggregated API subresources.fast-sandbox.io), so RBAC decides who may do
what. Installed on the PATH as kubectl-sandbox, it is "kubectl sandbox".`,
		Annotations:   map[string]string{cobra.CommandDisplayNameAnnotation: "kubectl sandbox"},
		SilenceErrors: true,
		SilenceUsage:  true,
	}
	o.configFlags.AddFlags(root.PersistentFlags())
	// -v=N logs the API requests, as kubectl's.
	klogFlags := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(klogFlags)
	root.PersistentFlags().AddGoFlag(klogFlags.Lookup("v"))
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return &usageError{cmd: c.CommandPath(), err: err}
	})
	root.SetIn(o.streams.In)
	root.SetOut(o.streams.Out)
	root.SetErr(o.streams.ErrOut)

	root.AddCommand(
		newRunCommand(o),
		newExecCommand(o),
		newLogsCommand(o),
		newCpCommand(o),
		newPauseCommand(o, true),
		newPauseCommand(o, false),
		newLsCommand(o),
		newRmCommand(o),
	)
	return root
}

// usage makes a usage error of cmd.
func usage(cmd *cobra.Command, format string, args ...any) error {
	return &usageError{cmd: cmd.CommandPath(), err: fmt.Errorf(format, args...)}
}

// commandAfterDash splits NAME -- CMD ARGS...: the name before the dash
// and the command after it. kubectl's older form NAME CMD (no dash) is
// refused, since flags of the command would be taken for the plugin's.
func commandAfterDash(cmd *cobra.Command, args []string) (name string, command []string, err error) {
	dash := cmd.ArgsLenAtDash()
	switch {
	case len(args) == 0 || dash == 0:
		return "", nil, usage(cmd, "a sandbox name is required")
	case dash < 0 && len(args) > 1:
		return "", nil, usage(cmd, "%s NAME CMD is not supported; use %s NAME -- CMD", cmd.Name(), cmd.Name())
	case dash > 1:
		return "", nil, usage(cmd, "one sandbox name before --, got %q", args[:dash])
	case dash < 0:
		return args[0], nil, nil
	}
	return args[0], args[dash:], nil
}
