// Command kubectl-sandbox is the kubectl plugin of fast-sandbox.
package main

import (
	"github.com/moby/term"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	kterm "k8s.io/kubectl/pkg/util/term"
	"k8s.io/streaming/pkg/httpstream"
)

var (
	_ = genericclioptions.NewConfigFlags
	_ genericiooptions.IOStreams
	_ kterm.TTY
	_ = httpstream.IsUpgradeFailure
	_ = term.StdStreams
)

func main() {}
