package main

import (
	"math"
	"time"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/fast-sandbox/fast-sandbox/pkg/client"
)

type logsFlags struct {
	follow     bool
	tail       int64
	since      time.Duration
	sinceTime  string
	timestamps bool
	limitBytes int64
}

func newLogsCommand(o *options) *cobra.Command {
	f := &logsFlags{}
	cmd := &cobra.Command{
		Use:   "logs NAME [-f] [--tail N] [--since D] [--timestamps]",
		Short: "Print the log of a sandbox (its command's stdout and stderr)",
		Example: `  kubectl sandbox logs box
  kubectl sandbox logs -f --tail 20 box`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts, err := f.logOptions(cmd)
			if err != nil {
				return err
			}
			ns, _, err := o.namespace()
			if err != nil {
				return err
			}
			c, err := o.client()
			if err != nil {
				return err
			}
			return c.Logs(cmd.Context(), ns, args[0], opts, o.streams.Out)
		},
	}
	fs := cmd.Flags()
	fs.BoolVarP(&f.follow, "follow", "f", false, "stream the log until the sandbox finishes")
	fs.Int64Var(&f.tail, "tail", -1, "lines from the end to show; -1 shows all")
	fs.DurationVar(&f.since, "since", 0, "only lines newer than this (e.g. 5s, 2m, 3h)")
	fs.StringVar(&f.sinceTime, "since-time", "", "only lines at or after this RFC 3339 time")
	fs.BoolVar(&f.timestamps, "timestamps", false, "prefix each line with its time")
	fs.Int64Var(&f.limitBytes, "limit-bytes", 0, "stop after this many bytes; 0 is no limit")
	return cmd
}

// logOptions checks the flags and turns them into the client's options.
func (f *logsFlags) logOptions(cmd *cobra.Command) (client.LogOptions, error) {
	o := client.LogOptions{Follow: f.follow, Timestamps: f.timestamps}
	if f.since != 0 && f.sinceTime != "" {
		return o, usage(cmd, "only one of --since and --since-time may be given")
	}
	if f.since < 0 {
		return o, usage(cmd, "--since must be positive")
	}
	if f.since > 0 {
		// Whole seconds, rounded up (1ms is 1s, not 0).
		secs := int64(math.Ceil(f.since.Seconds()))
		o.SinceSeconds = &secs
	}
	if f.sinceTime != "" {
		t, err := time.Parse(time.RFC3339, f.sinceTime)
		if err != nil {
			return o, usage(cmd, "--since-time: %v", err)
		}
		mt := metav1.NewTime(t)
		o.SinceTime = &mt
	}
	if f.tail < -1 {
		return o, usage(cmd, "--tail must be -1 (all) or more")
	}
	if f.tail >= 0 {
		tail := f.tail
		o.TailLines = &tail
	}
	if f.limitBytes < 0 {
		return o, usage(cmd, "--limit-bytes must not be negative")
	}
	if f.limitBytes > 0 {
		limit := f.limitBytes
		o.LimitBytes = &limit
	}
	return o, nil
}
