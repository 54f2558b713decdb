package sandboxinit

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestHomeOf(t *testing.T) {
	passwd := "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\nnohome:x:1001:1001:::/bin/sh\n"
	for _, tc := range []struct {
		uid  uint32
		want string
	}{{0, "/root"}, {1000, "/home/app"}, {1001, "/"}, {4242, "/"}} {
		if got := homeOf(strings.NewReader(passwd), tc.uid); got != tc.want {
			t.Errorf("homeOf(%d) = %q, want %q", tc.uid, got, tc.want)
		}
	}
}

func TestWithHome(t *testing.T) {
	if got := withHome([]string{"HOME=/x"}, 0); len(got) != 1 || got[0] != "HOME=/x" {
		t.Errorf("an explicit HOME was changed: %v", got)
	}
	if got := withHome([]string{"A=b"}, 4242); got[len(got)-1] != "HOME=/" {
		t.Errorf("HOME of an unknown user: %v", got)
	}
}

func TestLookPath(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "tool")
	if err := os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	plain := filepath.Join(dir, "data")
	if err := os.WriteFile(plain, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	env := []string{"PATH=/nonexistent:" + dir}
	for _, tc := range []struct {
		name, want, err string
	}{
		{"tool", exe, ""},
		{exe, exe, ""},
		{"data", "", "executable file not found"},
		{plain, "", "permission denied"},
		{"missing", "", "executable file not found"},
		{filepath.Join(dir, "missing"), "", "no such file"},
	} {
		got, err := lookPath(tc.name, env)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("lookPath(%q) error %v, want %q", tc.name, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("lookPath(%q) = %q, %v; want %q", tc.name, got, err, tc.want)
		}
	}
}
