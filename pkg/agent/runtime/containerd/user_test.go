package containerd

import (
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestNumericUser(t *testing.T) {
	cases := []struct {
		in      string
		want    specs.User
		wantErr bool
	}{
		{"", specs.User{}, false},
		{"1000", specs.User{UID: 1000, GID: 1000}, false},
		{"1000:50", specs.User{UID: 1000, GID: 50}, false},
		{"nobody", specs.User{}, true},
		{"1000:staff", specs.User{}, true},
	}
	for _, tc := range cases {
		got, err := numericUser(tc.in)
		if (err != nil) != tc.wantErr || (!tc.wantErr && (got.UID != tc.want.UID || got.GID != tc.want.GID)) {
			t.Errorf("numericUser(%q) = %+v, %v", tc.in, got, err)
		}
	}
}

func TestParentOf(t *testing.T) {
	cases := []struct {
		in, want string
		systemd  bool
	}{
		{"/kubepods/burstable/pod123/abc", "/kubepods/burstable/pod123", false},
		{"kubepods-burstable-pod123.slice:cri-containerd:abc", "kubepods-burstable-pod123.slice", true},
	}
	for _, tc := range cases {
		got, systemd := parentOf(tc.in)
		if got != tc.want || systemd != tc.systemd {
			t.Errorf("parentOf(%q) = %q, %v", tc.in, got, systemd)
		}
	}
}
