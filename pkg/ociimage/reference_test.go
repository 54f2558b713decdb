package ociimage

import (
	"errors"
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
		{in: "a_b.c/x", wantErr: "bad registry domain"}, // a "." makes it a domain
		{in: "busybox:TAG", want: "docker.io/library/busybox:TAG"},
		{in: "busybox@sha256:" + hex64, want: "docker.io/library/busybox@sha256:" + hex64},
		{in: "busybox:1@sha256:" + hex64, want: "docker.io/library/busybox:1@sha256:" + hex64},
		{in: "example.com:5000/x@sha256:" + hex64, want: "example.com:5000/x@sha256:" + hex64},

		{in: "", wantErr: "empty reference"},
		{in: "Busybox", wantErr: "must be lowercase"},
		{in: "foo/Bar:1", wantErr: "must be lowercase"},
		{in: "example.com/Foo", wantErr: "must be lowercase"},
		{in: hex64, wantErr: "image ID"},
		{in: "busybox:", wantErr: "bad tag"},
		{in: "busybox:-x", wantErr: "bad tag"},
		{in: "busybox:" + strings.Repeat("a", 129), wantErr: "bad tag"},
		{in: ":tag", wantErr: "missing repository name"},
		{in: "foo//bar", wantErr: "empty component"},
		{in: "foo/", wantErr: "empty component"},
		{in: "foo bar", wantErr: "bad component"},
		{in: "foo-/bar", wantErr: "bad component"},
		{in: "-example.com/x", wantErr: "bad registry domain"},
		{in: "busybox@sha256:abc", wantErr: "64 lowercase hex digits"},
		{in: "busybox@sha256:" + strings.ToUpper(hex64), wantErr: "64 lowercase hex digits"},
		{in: "busybox@md5:" + hex64, wantErr: "unsupported digest algorithm"},
		{in: "busybox@" + hex64, wantErr: "not ALGORITHM:HEX"},
		{in: "example.com/" + strings.Repeat("a", 250), wantErr: "longer than 255"},
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
