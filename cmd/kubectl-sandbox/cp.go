package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/fast-sandbox/fast-sandbox/pkg/client"
)

// location is one side of cp: a path in a sandbox (Name set) or a local
// path ("-" is stdin or stdout).
type location struct {
	// Namespace is the sandbox's namespace when given as NS/NAME:/path.
	Namespace string
	Name      string
	Path      string
}

func (l location) remote() bool { return l.Name != "" }

func (l location) String() string {
	if !l.remote() {
		return l.Path
	}
	if l.Namespace != "" {
		return l.Namespace + "/" + l.Name + ":" + l.Path
	}
	return l.Name + ":" + l.Path
}

// parseLocation reads one cp argument. NAME:/path and NS/NAME:/path are in
// a sandbox; anything without a colon, or starting with / or ., is local
// (./a:b is a local file named a:b).
func parseLocation(arg string) (location, error) {
	if arg == "" {
		return location{}, errors.New("an empty path")
	}
	colon := strings.IndexByte(arg, ':')
	if colon < 0 || strings.HasPrefix(arg, "/") || strings.HasPrefix(arg, ".") {
		return location{Path: arg}, nil
	}
	spec, p := arg[:colon], arg[colon+1:]
	var l location
	if ns, name, ok := strings.Cut(spec, "/"); ok {
		if errs := validation.IsDNS1123Label(ns); len(errs) > 0 {
			return location{}, fmt.Errorf("%q: namespace %q: %s (a local path with a colon starts with ./)", arg, ns, strings.Join(errs, "; "))
		}
		l.Namespace, spec = ns, name
	}
	if errs := validation.IsDNS1123Subdomain(spec); len(errs) > 0 {
		return location{}, fmt.Errorf("%q: sandbox name %q: %s (a local path with a colon starts with ./)", arg, spec, strings.Join(errs, "; "))
	}
	l.Name = spec
	if p == "" {
		return location{}, fmt.Errorf("%q: a path is required after the colon", arg)
	}
	if !strings.HasPrefix(p, "/") {
		return location{}, fmt.Errorf("%q: the path in a sandbox must be absolute", arg)
	}
	l.Path = p
	return l, nil
}

// parseCpArgs reads SRC and DST; exactly one is in a sandbox.
func parseCpArgs(src, dst string) (from, to location, err error) {
	if from, err = parseLocation(src); err != nil {
		return from, to, err
	}
	if to, err = parseLocation(dst); err != nil {
		return from, to, err
	}
	switch {
	case from.remote() && to.remote():
		return from, to, errors.New("copying from one sandbox to another is not supported; copy through a local file")
	case !from.remote() && !to.remote():
		return from, to, errors.New("one of SRC and DST must be in a sandbox (NAME:/path)")
	}
	return from, to, nil
}

func newCpCommand(o *options) *cobra.Command {
	return &cobra.Command{
		Use:   "cp SRC DST",
		Short: "Copy files between the local machine and a sandbox",
		Long: `Copy files between the local machine and a sandbox; one side is
NAME:/absolute/path (or NAMESPACE/NAME:/path), the other a local path, or -
for stdin or stdout.

Into a sandbox, regular files are copied (at most 64 MiB each), with their
permission bits; a directory is refused. Out of a sandbox, a directory is
copied with everything in it; symlinks and special files in it are skipped.
A destination that is a directory (or ends with /) receives the file under
its own name. Each file must be copied within the API server's request
timeout (60 s by default): copy large trees with exec and tar.`,
		Example: `  kubectl sandbox cp ./main.py box:/work/main.py
  kubectl sandbox cp box:/work/out/ ./out
  kubectl sandbox cp box:/etc/os-release -`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			from, to, err := parseCpArgs(args[0], args[1])
			if err != nil {
				return usage(cmd, "%v", err)
			}
			ns, _, err := o.namespace()
			if err != nil {
				return err
			}
			c, err := o.client()
			if err != nil {
				return err
			}
			cp := &copier{c: c, namespace: ns, in: o.streams.In, out: o.streams.Out, errOut: o.streams.ErrOut}
			if from.remote() {
				return cp.download(cmd.Context(), from, to.Path)
			}
			return cp.upload(cmd.Context(), from.Path, to)
		},
	}
}

// copier copies files for cp.
type copier struct {
	c         *client.Client
	namespace string
	in        io.Reader
	out       io.Writer
	errOut    io.Writer
}

func (cp *copier) ns(l location) string {
	if l.Namespace != "" {
		return l.Namespace
	}
	return cp.namespace
}

// upload copies a local regular file (or stdin) into the sandbox.
func (cp *copier) upload(ctx context.Context, local string, to location) error {
	ns := cp.ns(to)
	if local == "-" {
		if strings.HasSuffix(to.Path, "/") {
			return fmt.Errorf("%s: a file name is needed to copy stdin", to)
		}
		return cp.c.WriteFile(ctx, ns, to.Name, to.Path, io.LimitReader(cp.in, client.MaxWriteBytes+1), 0o644)
	}
	fi, err := os.Stat(local)
	if err != nil {
		return err
	}
	if fi.IsDir() {
		return fmt.Errorf("%s is a directory: only files are copied into a sandbox (for a tree: tar c -C %s . | kubectl sandbox exec -i %s -- tar x -C DIR)", local, local, to.Name)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", local)
	}
	if fi.Size() > client.MaxWriteBytes {
		return fmt.Errorf("%s is %d bytes; at most %d are copied into a sandbox at once (use exec with tar)", local, fi.Size(), client.MaxWriteBytes)
	}
	dst, err := cp.remoteTarget(ctx, ns, to, filepath.Base(local))
	if err != nil {
		return err
	}
	f, err := os.Open(local)
	if err != nil {
		return err
	}
	defer f.Close() //nolint:errcheck // read-only
	return cp.c.WriteFile(ctx, ns, to.Name, dst, f, uint32(fi.Mode().Perm()))
}

// remoteTarget is the file a copy into to writes: to itself, or base in it
// when it ends with / or is a directory.
func (cp *copier) remoteTarget(ctx context.Context, ns string, to location, base string) (string, error) {
	if strings.HasSuffix(to.Path, "/") {
		return path.Join(to.Path, base), nil
	}
	fi, err := cp.c.Stat(ctx, ns, to.Name, to.Path)
	switch {
	case err == nil && fi.Type == client.FileTypeDir:
		return path.Join(to.Path, base), nil
	case err == nil, apierrors.IsNotFound(err), apierrors.IsForbidden(err):
		// A new file, an existing one, or one we may write but not
		// stat: written as named.
		return to.Path, nil
	}
	return "", err
}

// download copies a file or directory out of the sandbox to local ("-" is
// stdout for a file).
func (cp *copier) download(ctx context.Context, from location, local string) error {
	ns := cp.ns(from)
	fi, err := cp.c.Stat(ctx, ns, from.Name, from.Path)
	if err != nil {
		return err
	}
	if local == "-" {
		if fi.Type == client.FileTypeDir {
			return fmt.Errorf("%s is a directory; it cannot be copied to stdout", from)
		}
		return cp.c.ReadFile(ctx, ns, from.Name, from.Path, cp.out)
	}
	target := local
	st, statErr := os.Stat(local)
	if statErr == nil && st.IsDir() || strings.HasSuffix(local, string(filepath.Separator)) {
		base := path.Base(from.Path)
		if base == "/" {
			base = "root"
		}
		target = filepath.Join(local, base)
	}
	switch fi.Type {
	case client.FileTypeDir:
		return cp.downloadDir(ctx, ns, from.Name, from.Path, target)
	case client.FileTypeFile:
		return cp.downloadFile(ctx, ns, from.Name, from.Path, target, fi.Mode)
	case client.FileTypeSymlink:
		// A symlink named on the command line is followed (inside the
		// sandbox's root), as cp does; its own bits say nothing of its
		// target's.
		return cp.downloadFile(ctx, ns, from.Name, from.Path, target, 0o644)
	}
	return fmt.Errorf("%s is not a regular file or a directory", from)
}

// downloadFile writes a file of the sandbox to target through a temporary
// file next to it, so a failed copy leaves no partial file.
func (cp *copier) downloadFile(ctx context.Context, ns, name, remote, target string, mode uint32) error {
	// The permission bits, never setuid, setgid or sticky.
	perm := os.FileMode(mode) & os.ModePerm
	tmp, err := os.CreateTemp(filepath.Dir(target), "."+filepath.Base(target)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) //nolint:errcheck // gone after the rename
	if err := cp.c.ReadFile(ctx, ns, name, remote, tmp); err != nil {
		_ = tmp.Close()
		return fmt.Errorf("%s:%s: %w", name, remote, err)
	}
	if err := tmp.Chmod(perm); err != nil {
		_ = tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), target)
}

// downloadDir copies a directory of the sandbox and everything in it to
// target. Names come from the sandbox: one that is not a plain name is
// refused, so nothing is written outside target; symlinks and special
// files are skipped with a warning.
func (cp *copier) downloadDir(ctx context.Context, ns, name, remote, target string) error {
	if st, err := os.Lstat(target); err == nil && !st.IsDir() {
		return fmt.Errorf("%s exists and is not a directory", target)
	}
	if err := os.MkdirAll(target, 0o755); err != nil {
		return err
	}
	entries, err := cp.c.List(ctx, ns, name, remote)
	if err != nil {
		return fmt.Errorf("%s:%s: %w", name, remote, err)
	}
	for _, e := range entries {
		if e.Name == "" || e.Name == "." || e.Name == ".." || strings.ContainsAny(e.Name, "/\x00") || e.Name != filepath.Base(e.Name) {
			return fmt.Errorf("%s:%s: refusing the entry name %q", name, remote, e.Name)
		}
		r, l := path.Join(remote, e.Name), filepath.Join(target, e.Name)
		switch e.Type {
		case client.FileTypeDir:
			err = cp.downloadDir(ctx, ns, name, r, l)
		case client.FileTypeFile:
			err = cp.downloadFile(ctx, ns, name, r, l, e.Mode)
		case client.FileTypeSymlink:
			_, _ = fmt.Fprintf(cp.errOut, "skipping symlink %s:%s -> %s\n", name, r, e.LinkTarget)
		default:
			_, _ = fmt.Fprintf(cp.errOut, "skipping %s:%s: not a regular file\n", name, r)
		}
		if err != nil {
			return err
		}
	}
	return nil
}
