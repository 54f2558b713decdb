package containerd

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/go-logr/logr/testr"

	containerdtest "github.com/fast-sandbox/fast-sandbox/test/containerd"
)

// TestUnavailable: which create errors are containerd's absence (not final)
// and which are final.
func TestUnavailable(t *testing.T) {
	d := startContainerd(t)
	state := t.TempDir()
	r := New(Config{Address: d.Address, Namespace: containerdtest.Namespace, Agent: "agent-unavailable", StateDir: state,
		CgroupParent: containerdtest.CgroupParent(t, "unavailable")}, testr.New(t))
	if _, err := r.Initialize(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer r.Close()

	always := map[string]error{
		"refused dial on the socket": fmt.Errorf("looking up image: %w", &net.OpError{Op: "dial", Net: "unix", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}),
		"no socket":                  &net.OpError{Op: "dial", Net: "unix", Err: os.NewSyscallError("connect", syscall.ENOENT)},
		"gRPC dial error":            errors.New(`rpc error: code = Unavailable desc = connection error: desc = "transport: Error while dialing: dial unix /run/containerd.sock: connect: connection refused"`),
		"connection broke":           fmt.Errorf("creating task: error reading from server: EOF: %w", errdefs.ErrUnavailable),
	}
	answered := map[string]error{
		"shim would not start": fmt.Errorf("creating task: failed to start shim: %w", errdefs.ErrUnavailable),
		"deadline":             fmt.Errorf("pulling: %w", context.DeadlineExceeded),
	}
	never := map[string]error{
		"registry refused":  &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)},
		"not found":         fmt.Errorf("image: %w", errdefs.ErrNotFound),
		"invalid":           fmt.Errorf("spec: %w", errdefs.ErrInvalidArgument),
		"plain":             errors.New("USER \"nobody\" is not numeric"),
		"nil is no failure": nil,
	}
	check := func(when string, errs map[string]error, want bool) {
		t.Helper()
		for name, err := range errs {
			if got := r.unavailable(err); got != want {
				t.Errorf("%s: %s (%v): unavailable = %v, want %v", when, name, err, got, want)
			}
		}
	}
	check("containerd up", always, true)
	check("containerd up", answered, false)
	check("containerd up", never, false)
	d.Kill(t)
	check("containerd down", always, true)
	check("containerd down", answered, true)
	check("containerd down", never, false)
	d.StartAgain(t)
}
