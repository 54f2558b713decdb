package scheduler

import (
	"fmt"
	"sort"
	"strings"

	"k8s.io/kubernetes/pkg/scheduler/apis/config"
)

// unknownProfileError is a pool whose spec.scheduling.schedulerName names no
// profile of the configuration; scheduleOne records it on the pool's
// sandboxes (ReasonUnknownSchedulerProfile) instead of retrying, and a
// change of the pool requeues them.
type unknownProfileError struct {
	pool, profile string
	known         []string
}

func (e *unknownProfileError) Error() string {
	return fmt.Sprintf("SandboxPool %s: spec.scheduling.schedulerName %q names no profile of the scheduler's configuration (its profiles: %s)",
		e.pool, e.profile, strings.Join(e.known, ", "))
}

// findProfile returns the profile named name, or an unknownProfileError
// naming the profiles there are.
func findProfile(cfg *config.KubeSchedulerConfiguration, pool, name string) (*config.KubeSchedulerProfile, error) {
	known := make([]string, 0, len(cfg.Profiles))
	for i := range cfg.Profiles {
		if cfg.Profiles[i].SchedulerName == name {
			return &cfg.Profiles[i], nil
		}
		known = append(known, fmt.Sprintf("%q", cfg.Profiles[i].SchedulerName))
	}
	sort.Strings(known)
	return nil, &unknownProfileError{pool: pool, profile: name, known: known}
}
