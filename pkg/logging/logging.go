// Package logging sets up structured logging for the fast-sandbox binaries:
// zap underneath, exposed as a logr.Logger, and installed as klog's sink so
// that the Kubernetes libraries log through the same pipeline.
package logging

import (
	"fmt"

	"github.com/go-logr/logr"
	"github.com/go-logr/zapr"
	"github.com/spf13/pflag"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"k8s.io/klog/v2"
)

// Options are the logging flags every binary has.
type Options struct {
	// Format is "json" (the default, for machines) or "console" (for people).
	Format string
	// Verbosity is the klog-style V level: 0 logs only what matters, 4 a lot.
	Verbosity int
}

// NewOptions returns the defaults.
func NewOptions() *Options { return &Options{Format: "json"} }

// AddFlags registers the logging flags.
func (o *Options) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.Format, "log-format", o.Format, `log format: "json" or "console"`)
	fs.IntVarP(&o.Verbosity, "v", "v", o.Verbosity, "log verbosity (klog V level)")
}

// Validate checks the flag values.
func (o *Options) Validate() error {
	switch o.Format {
	case "json", "console":
	default:
		return fmt.Errorf("--log-format=%q: must be json or console", o.Format)
	}
	if o.Verbosity < 0 || o.Verbosity > 10 {
		return fmt.Errorf("--v=%d: must be between 0 and 10", o.Verbosity)
	}
	return nil
}

// Setup builds the logger, installs it for klog and returns it.
func (o *Options) Setup(name string) (logr.Logger, error) {
	if err := o.Validate(); err != nil {
		return logr.Discard(), err
	}
	cfg := zap.NewProductionConfig()
	if o.Format == "console" {
		cfg = zap.NewDevelopmentConfig()
		cfg.EncoderConfig.EncodeLevel = zapcore.CapitalColorLevelEncoder
	}
	cfg.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	cfg.Sampling = nil
	// zap levels are negative logr V levels.
	cfg.Level = zap.NewAtomicLevelAt(zapcore.Level(-o.Verbosity))
	z, err := cfg.Build()
	if err != nil {
		return logr.Discard(), fmt.Errorf("building zap logger: %w", err)
	}
	logger := zapr.NewLogger(z).WithName(name)
	klog.SetLogger(logger)
	return logger, nil
}
