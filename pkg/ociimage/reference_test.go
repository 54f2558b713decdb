package ociimage

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestNormalize(t *testing.T) {
	const hex64 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	tests := []struct {
		in      string
		want    string
		wantErr string // substring of the error; empty for success
	}{
		{in: "busybox", want: "docker.io/library/busybox:latest"},
		{in: "busybox:1.36", want: "docker.io/library/busybox:1.36"},
		{in: "foo/bar:1", want: "docker.io/foo/bar:1"},
		{in: "foo/bar/baz", want: "docker.io/foo/bar/baz:latest"},
		{in: "docker.io/busybox", want: "docker.io/library/busybox:latest"},
		{in: "index.docker.io/foo/bar", want: "docker.io/foo/bar:latest"},
		{in: "docker.io/library/busybox:latest", want: "docker.io/library/busybox:latest"},
		{in: "fast-sandbox/agent:dev", want: "docker.io/fast-sandbox/agent:dev"},
		{in: "localhost/x:y", want: "localhost/x:y"},
		{in: "localhost:5000/x", want: "localhost:5000/x:latest"},
		{in: "localhost", want: "docker.io/library/localhost:latest"},
		{in: "example.com:5000/x", want: "example.com:5000/x:latest"},
		{in: "example.com/a/b:v1.2_3-rc", want: "example.com/a/b:v1.2_3-rc"},
		{in: "registry.k8s.io/pause:3.10", want: "registry.k8s.io/pause:3.10"},
		{in: "[::1]:5000/x:y", want: "[::1]:5000/x:y"},
		{in: "Example.com/x", want: "Example.com/x:latest"},
		{in: "a__b-c--d/e.f_g", want: "docker.io/a__b-c--d/e.f_g:latest"},
		{in: "a_b.c/x", wantErr: "not a host name"}, // a "." makes it a domain
		{in: "busybox:TAG", want: "docker.io/library/busybox:TAG"},
		{in: "busybox@sha256:" + hex64, want: "docker.io/library/busybox@sha256:" + hex64},
		// The digest names the content: the tag beside it is dropped (as
		// containerd's CRI plugin and pkg/imageref do).
		{in: "busybox:1@sha256:" + hex64, want: "docker.io/library/busybox@sha256:" + hex64},
		{in: "example.com:5000/x@sha256:" + hex64, want: "example.com:5000/x@sha256:" + hex64},

		{in: "", wantErr: "invalid reference format"},
		{in: "Busybox", wantErr: "must be lowercase"},
		{in: "foo/Bar:1", wantErr: "must be lowercase"},
		{in: "example.com/Foo", wantErr: "must be lowercase"},
		{in: hex64, wantErr: "64-byte hexadecimal"}, // an image ID, not a name
		{in: "busybox:", wantErr: "invalid reference format"},
		{in: "busybox:-x", wantErr: "invalid reference format"},
		{in: "busybox:" + strings.Repeat("a", 129), wantErr: "invalid reference format"},
		{in: ":tag", wantErr: "invalid reference format"},
		{in: "foo//bar", wantErr: "invalid reference format"},
		{in: "foo/", wantErr: "invalid reference format"},
		{in: "foo bar", wantErr: "invalid reference format"},
		{in: "foo-/bar", wantErr: "invalid reference format"},
		{in: "-example.com/x", wantErr: "invalid reference format"},
		{in: "busybox@sha256:abc", wantErr: "invalid reference format"},
		{in: "busybox@sha256:" + strings.ToUpper(hex64), wantErr: "invalid checksum digest format"},
		{in: "busybox@md5:" + hex64, wantErr: "unsupported digest algorithm"},
		{in: "busybox@" + hex64, wantErr: "invalid reference format"},
		// The bound of 255 is on the repository path, not on the domain with it.
		{in: "example.com/" + strings.Repeat("a", 250), want: "example.com/" + strings.Repeat("a", 250) + ":latest"},
		{in: "example.com/" + strings.Repeat("a", 256), wantErr: "must not be more than 255 characters"},
	}
	for _, tt := range tests {
		got, err := Normalize(tt.in)
		if tt.wantErr != "" {
			if err == nil {
				t.Errorf("Normalize(%q) = %q, want an error containing %q", tt.in, got, tt.wantErr)
				continue
			}
			if !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, ErrInvalidReference) {
				t.Errorf("Normalize(%q) error = %q, want ErrInvalidReference containing %q", tt.in, err, tt.wantErr)
			}
			// It names the reference it refuses.
			if !strings.Contains(err.Error(), fmt.Sprintf("%q", tt.in)) {
				t.Errorf("Normalize(%q) error = %q does not name the reference", tt.in, err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("Normalize(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
			continue
		}
		// A normalized reference normalizes to itself.
		if again, err := Normalize(got); err != nil || again != got {
			t.Errorf("Normalize(%q) = %q, %v; want it unchanged", got, again, err)
		}
	}
}
