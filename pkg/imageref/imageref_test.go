package imageref

import "testing"

func TestNormalize(t *testing.T) {
	const digest = "sha256:4b3f8a6f0e1b8f2f5d0e8d3c1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b"
	cases := []struct {
		in, want string
		bad      bool
	}{
		{in: "busybox", want: "docker.io/library/busybox:latest"},
		{in: "python:3.9", want: "docker.io/library/python:3.9"},
		{in: "fast-sandbox/testbox", want: "docker.io/fast-sandbox/testbox:latest"},
		{in: "docker.io/library/busybox:latest", want: "docker.io/library/busybox:latest"},
		{in: "registry.example.com:5000/team/app:v1", want: "registry.example.com:5000/team/app:v1"},
		{in: "busybox@" + digest, want: "docker.io/library/busybox@" + digest},
		{in: "Busybox", bad: true},
		{in: "", bad: true},
		{in: "a b", bad: true},
	}
	for _, tc := range cases {
		got, err := Normalize(tc.in)
		switch {
		case tc.bad && err == nil:
			t.Errorf("Normalize(%q) = %q, want an error", tc.in, got)
		case !tc.bad && (err != nil || got != tc.want):
			t.Errorf("Normalize(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
		keep := NormalizeOrKeep(tc.in)
		if want := map[bool]string{true: tc.in, false: tc.want}[tc.bad]; keep != want {
			t.Errorf("NormalizeOrKeep(%q) = %q, want %q", tc.in, keep, want)
		}
	}
}
