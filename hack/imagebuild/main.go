// Command imagebuild builds a single-layer OCI image archive from host files,
// without Docker or a registry, for containerd's importer
// (ctr -n k8s.io images import FILE). Run it with -h for the details.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/fast-sandbox/fast-sandbox/pkg/ociimage"
)

const usage = `Usage: go run ./hack/imagebuild -ref REF -o FILE [flags] [SRC:DST ...]

Builds a single-layer OCI image archive for linux and the host architecture,
without Docker or a registry, and prints the image's normalized reference and
manifest digest. Import the archive into containerd with

    ctr -n k8s.io images import FILE

Each SRC:DST copies the host file SRC (following symlinks, keeping its
permission bits) to the absolute path DST in the image; DST may not contain
':'. Flags go before the SRC:DST arguments. Every image also has /tmp (mode
1777), and /etc/passwd and /etc/group with root (0) and nobody (65534)
entries; SRC:DST and -symlink replace them. PATH is set to the usual
directories unless -env sets it. The image has no shared libraries, so
binaries must be static (CGO_ENABLED=0 for Go programs).

Examples:

    # A shell image from busybox-static (apt-get install busybox-static):
    go run ./hack/imagebuild -ref testbox -o _output/testbox.tar \
        -busybox /bin/busybox -cmd /bin/sh
    ctr -n k8s.io images import _output/testbox.tar
    ctr -n k8s.io run --rm docker.io/library/testbox:latest t1 /bin/sh -c 'echo hello'

    # The agent:
    CGO_ENABLED=0 go build -trimpath -o _output/agent ./cmd/agent
    go run ./hack/imagebuild -ref fast-sandbox/agent:dev -o _output/agent.tar \
        -entrypoint /agent _output/agent:/agent

    # The pause image of Pod sandboxes, from a static Go pause program (it
    # sleeps until SIGINT or SIGTERM and reaps zombies; PAUSE_PKG is the
    # package that holds it). Name it after containerd's sandbox_image
    # (hack/cluster uses registry.k8s.io/pause:3.10) so that containerd
    # uses the imported image instead of pulling one:
    CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o _output/pause ./PAUSE_PKG
    go run ./hack/imagebuild -ref registry.k8s.io/pause:3.10 -o _output/pause.tar \
        -entrypoint /pause -user 65535:65535 _output/pause:/pause

Flags:
`

// defaultPath is the PATH of images whose -env does not set one.
const defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// listFlag is a flag that may be repeated; each use appends one value.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, " ") }

func (l *listFlag) Set(v string) error {
	*l = append(*l, v)
	return nil
}

// options are the parsed command line.
type options struct {
	ref, out   string
	entrypoint listFlag
	cmd        listFlag
	env        listFlag
	labels     listFlag
	workdir    string
	user       string
	symlinks   listFlag
	busybox    string
	specs      []string
}

// errUsage reports a bad command line that the flag package has already
// described on stderr.
var errUsage = errors.New("bad command line")

func main() {
	err := run(os.Args[1:], os.Stdout, os.Stderr)
	switch {
	case err == nil:
	case errors.Is(err, flag.ErrHelp):
		os.Exit(0)
	case errors.Is(err, errUsage):
		os.Exit(2)
	default:
		fmt.Fprintf(os.Stderr, "imagebuild: %v\n", err)
		os.Exit(1)
	}
}

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	var o options
	fs := flag.NewFlagSet("imagebuild", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		_, _ = fmt.Fprint(fs.Output(), usage)
		fs.PrintDefaults()
	}
	fs.StringVar(&o.ref, "ref", "", "name the image `REF`, normalized like docker does (required)")
	fs.StringVar(&o.out, "o", "", "write the archive to `FILE`, or to standard output for - (required)")
	fs.Var(&o.entrypoint, "entrypoint", "append `ARG` to the entrypoint; repeatable")
	fs.Var(&o.cmd, "cmd", "append `ARG` to the command; repeatable")
	fs.Var(&o.env, "env", "set the environment variable `KEY=VALUE`; repeatable")
	fs.Var(&o.labels, "label", "set the image label `KEY=VALUE`; repeatable")
	fs.StringVar(&o.workdir, "workdir", "", "run containers in `DIR`")
	fs.StringVar(&o.user, "user", "", "run containers as `USER[:GROUP]` (names or ids)")
	fs.Var(&o.symlinks, "symlink", "add the symbolic link `DST=TARGET`: DST pointing to TARGET; repeatable")
	fs.StringVar(&o.busybox, "busybox", "", "install the static busybox binary at `PATH` as /bin/busybox, with symlinks in /bin for its applets")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		return nil, errUsage // fs.Parse has printed the error and usage
	}
	o.specs = fs.Args()
	for name, value := range map[string]string{"ref": o.ref, "o": o.out} {
		if value == "" {
			_, _ = fmt.Fprintf(stderr, "imagebuild: -%s is required (see -h)\n", name)
			return nil, errUsage
		}
	}
	return &o, nil
}

func run(args []string, stdout, stderr io.Writer) error {
	o, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	cfg, err := o.config()
	if err != nil {
		return err
	}
	files, err := o.files(stderr)
	if err != nil {
		return err
	}
	img, err := ociimage.New(o.ref, cfg, files)
	if err != nil {
		return err
	}

	result := stdout
	if o.out == "-" {
		result = stderr
		if _, err := img.WriteTo(stdout); err != nil {
			return err
		}
	} else if err := writeFileAtomically(o.out, img); err != nil {
		return err
	}
	_, err = fmt.Fprintf(result, "%s %s\n", img.Ref(), img.Digest())
	return err
}

// config returns the image configuration of the flags.
func (o *options) config() (ociimage.Config, error) {
	cfg := ociimage.Config{
		Entrypoint: o.entrypoint,
		Cmd:        o.cmd,
		WorkingDir: o.workdir,
		User:       o.user,
	}
	hasPath := false
	for _, kv := range o.env {
		k, _, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return cfg, fmt.Errorf("-env %q: want KEY=VALUE", kv)
		}
		hasPath = hasPath || k == "PATH"
	}
	if !hasPath {
		cfg.Env = append(cfg.Env, defaultPath)
	}
	cfg.Env = append(cfg.Env, o.env...)
	for _, kv := range o.labels {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return cfg, fmt.Errorf("-label %q: want KEY=VALUE", kv)
		}
		if cfg.Labels == nil {
			cfg.Labels = map[string]string{}
		}
		cfg.Labels[k] = v
	}
	return cfg, nil
}

// writeFileAtomically writes img to a temporary file next to path and
// renames it to path, so that path is never a partial archive.
func writeFileAtomically(path string, img *ociimage.Image) (err error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return fmt.Errorf("creating output file: %w", err)
	}
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(f.Name())
		}
	}()
	if _, err := img.WriteTo(f); err != nil {
		return err
	}
	if err := f.Chmod(0o644); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}
