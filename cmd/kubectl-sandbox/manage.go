package main

import (
	"context"
	"fmt"
	"io"
	"sort"
	"time"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/duration"
	"k8s.io/cli-runtime/pkg/printers"

	"github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
	"github.com/fast-sandbox/fast-sandbox/pkg/client"
)

// newPauseCommand is pause (pause true) or resume.
func newPauseCommand(o *options, pause bool) *cobra.Command {
	use, short, done := "resume", "Thaw the processes of paused sandboxes (clear spec.paused)", "resumed"
	if pause {
		use, short, done = "pause", "Freeze every process of sandboxes (set spec.paused)", "paused"
	}
	return &cobra.Command{
		Use:   use + " NAME...",
		Short: short,
		Long: short + `.

A paused sandbox uses no CPU and keeps its memory and its slot; its
activeDeadlineSeconds keeps counting. exec, attach and files calls are
refused while spec.paused is set.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ns, _, err := o.namespace()
			if err != nil {
				return err
			}
			c, err := o.client()
			if err != nil {
				return err
			}
			return eachName(o.streams.ErrOut, args, func(name string) error {
				if pause {
					_, err = c.Pause(cmd.Context(), ns, name)
				} else {
					_, err = c.Resume(cmd.Context(), ns, name)
				}
				if err == nil {
					_, _ = fmt.Fprintf(o.streams.Out, "sandbox/%s %s\n", name, done)
				}
				return err
			})
		},
	}
}

func newRmCommand(o *options) *cobra.Command {
	var wait bool
	cmd := &cobra.Command{
		Use:     "rm NAME...",
		Aliases: []string{"delete"},
		Short:   "Delete sandboxes",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ns, _, err := o.namespace()
			if err != nil {
				return err
			}
			c, err := o.client()
			if err != nil {
				return err
			}
			return eachName(o.streams.ErrOut, args, func(name string) error {
				if err := c.Delete(cmd.Context(), ns, name); err != nil {
					return err
				}
				if wait {
					if err := waitGone(cmd.Context(), c, ns, name); err != nil {
						return err
					}
				}
				_, _ = fmt.Fprintf(o.streams.Out, "sandbox %q deleted\n", name)
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&wait, "wait", false, "wait until each Sandbox is gone (its container removed)")
	return cmd
}

// waitGone waits until the Sandbox no longer exists.
func waitGone(ctx context.Context, c *client.Client, ns, name string) error {
	_, err := c.Wait(ctx, ns, name, func(*v1alpha1.Sandbox) (bool, error) { return false, nil })
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

// eachName runs fn for every name, printing the errors of all but the last
// failure, which it returns: one bad name does not stop the others.
func eachName(errOut io.Writer, names []string, fn func(string) error) error {
	var last error
	for _, name := range names {
		if err := fn(name); err != nil {
			if last != nil {
				printError(errOut, last)
			}
			last = err
		}
	}
	return last
}

func newLsCommand(o *options) *cobra.Command {
	var allNamespaces bool
	var selector string
	cmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List sandboxes",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ns, _, err := o.namespace()
			if err != nil {
				return err
			}
			if allNamespaces {
				ns = metav1.NamespaceAll
			}
			c, err := o.client()
			if err != nil {
				return err
			}
			list, err := c.Sandboxes(cmd.Context(), ns, metav1.ListOptions{LabelSelector: selector})
			if err != nil {
				return err
			}
			if len(list.Items) == 0 {
				if allNamespaces {
					_, _ = fmt.Fprintln(o.streams.ErrOut, "No sandboxes found.")
				} else {
					_, _ = fmt.Fprintf(o.streams.ErrOut, "No sandboxes found in %s namespace.\n", ns)
				}
				return nil
			}
			return printSandboxes(o.streams.Out, list.Items, allNamespaces, time.Now())
		},
	}
	cmd.Flags().BoolVarP(&allNamespaces, "all-namespaces", "A", false, "list the sandboxes of every namespace")
	cmd.Flags().StringVarP(&selector, "selector", "l", "", "label selector (e.g. app=x)")
	return cmd
}

// printSandboxes prints the table NAME PHASE POOL AGE (NAMESPACE first
// with allNamespaces), sorted by namespace and name.
func printSandboxes(w io.Writer, items []v1alpha1.Sandbox, allNamespaces bool, now time.Time) error {
	sort.Slice(items, func(i, j int) bool {
		if items[i].Namespace != items[j].Namespace {
			return items[i].Namespace < items[j].Namespace
		}
		return items[i].Name < items[j].Name
	})
	tw := printers.GetNewTabWriter(w)
	if allNamespaces {
		_, _ = fmt.Fprint(tw, "NAMESPACE\t")
	}
	_, _ = fmt.Fprintln(tw, "NAME\tPHASE\tPOOL\tAGE")
	for i := range items {
		sb := &items[i]
		if allNamespaces {
			_, _ = fmt.Fprintf(tw, "%s\t", sb.Namespace)
		}
		phase := string(sb.Status.Phase)
		if phase == "" {
			phase = "<none>"
		}
		age := "<unknown>"
		if !sb.CreationTimestamp.IsZero() {
			age = duration.HumanDuration(now.Sub(sb.CreationTimestamp.Time))
		}
		_, _ = fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", sb.Name, phase, sb.Spec.PoolName, age)
	}
	return tw.Flush()
}
