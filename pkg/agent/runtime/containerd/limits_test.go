package containerd

import (
	"math"
	"testing"
)

func TestCPUQuota(t *testing.T) {
	for _, tc := range []struct{ millis, quota int64 }{
		{1, minCPUQuota}, // the API accepts 1m; the kernel's smallest quota is 1ms
		{9, minCPUQuota},
		{10, 1000},
		{25, 2500},
		{1000, 100000},
		{1024 * 1000, 102400000}, // the API's largest, 1024 CPUs
		{math.MaxInt64, maxCPUQuota},
		{maxCPUQuota / cpuPeriod * 1000, maxCPUQuota},
	} {
		if got := cpuQuota(tc.millis); got != tc.quota {
			t.Errorf("cpuQuota(%d) = %d, want %d", tc.millis, got, tc.quota)
		}
	}
}
