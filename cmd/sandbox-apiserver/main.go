// Command sandbox-apiserver serves the interactive subresources of
// Sandboxes (subresources.fast-sandbox.io: exec, attach, log, files) behind
// kube-apiserver's aggregation layer, and proxies them to the agents over
// mutual TLS. It serves with the certificate the pool controller issues for
// its Service (--tls-cert-file, --tls-private-key-file; re-read when
// renewed), which kube-apiserver verifies against the APIService's caBundle.
// See pkg/sandboxapiserver and docs/interactive.md.
package main

import (
	"context"

	"github.com/go-logr/logr"
	"github.com/spf13/pflag"
	"k8s.io/klog/v2"

	"github.com/fast-sandbox/fast-sandbox/pkg/cli"
	"github.com/fast-sandbox/fast-sandbox/pkg/sandboxapiserver"
)

func main() {
	o := sandboxapiserver.NewOptions()
	cli.Main(cli.Component{
		Name:     "sandbox-apiserver",
		Short:    "Serves the exec, attach, log and files subresources of Sandboxes (aggregated API).",
		AddFlags: func(fs *pflag.FlagSet) { o.AddFlags(fs) },
		Run: func(ctx context.Context, logger logr.Logger) error {
			if err := o.Validate(); err != nil {
				return err
			}
			cfg, err := o.Config()
			if err != nil {
				return err
			}
			srv, err := cfg.New()
			if err != nil {
				return err
			}
			return srv.Run(klog.NewContext(ctx, logger))
		},
	})
}
