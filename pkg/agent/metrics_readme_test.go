package agent

import (
	"bufio"
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/api"
)

var (
	readmeComponent = regexp.MustCompile(`^  - ([a-z ]+) \(`)
	// A series line lists one or more series, then ": " and what they say.
	readmeSeriesLine = regexp.MustCompile("^    - ((?:`[^`]+`(?:, )?)+)(?::|$)")
	readmeSeries     = regexp.MustCompile("`([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\\{([a-z_,]*)\\})?`")
)

// readmeMetrics reads the series the README's Metrics item lists for a
// component: name to its label names, sorted and comma-separated.
func readmeMetrics(t *testing.T, component string) map[string]string {
	t.Helper()
	f, err := os.Open("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]string{}
	in, current := false, ""
	for sc := bufio.NewScanner(f); sc.Scan(); {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "- **Metrics**"):
			in = true
		case !in:
		case !strings.HasPrefix(line, "  "):
			in = false
		case readmeComponent.MatchString(line):
			current = readmeComponent.FindStringSubmatch(line)[1]
		case current == component && readmeSeriesLine.MatchString(line):
			for _, m := range readmeSeries.FindAllStringSubmatch(readmeSeriesLine.FindStringSubmatch(line)[1], -1) {
				labels := strings.Split(m[2], ",")
				sort.Strings(labels)
				out[m[1]] = strings.Trim(strings.Join(labels, ","), ",")
			}
		}
	}
	if len(out) == 0 {
		t.Fatalf("the README lists no metrics for the %s", component)
	}
	return out
}

// TestReadmeListsServedMetrics: every series the README lists for the agent
// is in the registry its /metrics serves, with those labels, once each was
// recorded; and every fast_sandbox_agent_* series there is listed.
func TestReadmeListsServedMetrics(t *testing.T) {
	listed := readmeMetrics(t, "agent")
	m := newMetrics()
	m.syncDuration.Observe(0.01)
	m.observeCreate(api.SandboxStatus{State: api.StateRunning, Start: api.StartWarm}, time.Millisecond)
	m.setSandboxes(nil)
	m.setWarm(nil)
	m.requests.WithLabelValues("status", "200").Inc()
	families, err := m.registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	served := map[string]string{}
	for _, f := range families {
		labels := map[string]bool{}
		for _, metric := range f.GetMetric() {
			for _, l := range metric.GetLabel() {
				labels[l.GetName()] = true
			}
		}
		names := make([]string, 0, len(labels))
		for l := range labels {
			names = append(names, l)
		}
		sort.Strings(names)
		served[f.GetName()] = strings.Join(names, ",")
	}
	for name, labels := range listed {
		got, ok := served[name]
		switch {
		case !ok:
			t.Errorf("the README lists %s, which the agent does not serve", name)
		case got != labels:
			t.Errorf("the README lists %s{%s}; served with labels {%s}", name, labels, got)
		}
	}
	for name := range served {
		if _, ok := listed[name]; strings.HasPrefix(name, "fast_sandbox_agent_") && !ok {
			t.Errorf("%s is served but not in the README", name)
		}
	}
}
