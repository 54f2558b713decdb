package scheduler

import (
	"bufio"
	"context"
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/component-base/metrics/legacyregistry"
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

// TestReadmeListsServedMetrics: every series the README lists for the
// scheduler is served, with those labels, by a scheduler that placed a
// sandbox; and every fast_sandbox_scheduler_* series served is listed.
func TestReadmeListsServedMetrics(t *testing.T) {
	listed := readmeMetrics(t, "scheduler")
	pluginMetricsSamplePercent = 100 // no sampling: the plugin durations show
	t.Cleanup(func() { pluginMetricsSamplePercent = 10 })
	e := newEnv(t)
	e.addAgent("agent-a")
	e.addAgent("agent-b")
	stop := e.start(testOptions())
	e.createSandbox("s1")
	e.wait("s1", "Running", 5*time.Second, running)

	var served map[string]string
	// The plugin durations are flushed every second: wait for them, then
	// report whatever is still missing.
	_ = wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, 5*time.Second, true, func(context.Context) (bool, error) {
		families, err := legacyregistry.DefaultGatherer.Gather()
		if err != nil {
			return false, err
		}
		served = map[string]string{}
		for _, f := range families {
			labels := map[string]bool{}
			for _, m := range f.GetMetric() {
				for _, l := range m.GetLabel() {
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
		for name := range listed {
			if _, ok := served[name]; !ok {
				return false, nil
			}
		}
		return true, nil
	})
	stop()
	for name, labels := range listed {
		got, ok := served[name]
		switch {
		case !ok:
			t.Errorf("the README lists %s, which the scheduler does not serve", name)
		case got != labels:
			t.Errorf("the README lists %s{%s}; served with labels {%s}", name, labels, got)
		}
	}
	for name := range served {
		if _, ok := listed[name]; strings.HasPrefix(name, "fast_sandbox_scheduler_") && !ok {
			t.Errorf("%s is served but not in the README", name)
		}
	}
}
