// Package metricsdoc checks the metrics the README documents against the
// ones a component serves, so that the documentation cannot drift from the
// code: the tests of each component gather its registry and call Check.
//
// The README's "Metrics" item has one nested list per component:
//
//   - **Metrics** ...
//   - scheduler (`:10351`):
//   - `fast_sandbox_scheduler_syncs_total{result}`: what it counts
package metricsdoc

import (
	"bufio"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strings"

	dto "github.com/prometheus/client_model/go"
)

var (
	componentLine = regexp.MustCompile(`^  - ([a-z ]+) \(`)
	// A series line lists one or more series, then ": " and what they say.
	seriesLine = regexp.MustCompile("^    - ((?:`[^`]+`(?:, )?)+)(?::|$)")
	series     = regexp.MustCompile("`([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\\{([a-z_,]*)\\})?`")
)

// Listed reads the series the README at path lists for a component: each
// name to its label names, sorted and comma-separated.
func Listed(path, component string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	out := map[string]string{}
	in, current := false, ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "- **Metrics**"):
			in = true
		case !in:
		case !strings.HasPrefix(line, "  "):
			in = false
		case componentLine.MatchString(line):
			current = componentLine.FindStringSubmatch(line)[1]
		case current == component && seriesLine.MatchString(line):
			for _, m := range series.FindAllStringSubmatch(seriesLine.FindStringSubmatch(line)[1], -1) {
				labels := strings.Split(m[2], ",")
				sort.Strings(labels)
				out[m[1]] = strings.Trim(strings.Join(labels, ","), ",")
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s lists no metrics for the %s", path, component)
	}
	return out, nil
}

// Served turns gathered metric families into each series' name to its label
// names, sorted and comma-separated.
func Served(families []*dto.MetricFamily) map[string]string {
	served := map[string]string{}
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
	return served
}

// Check compares what the README lists for a component with what it
// serves: every listed series must be served with exactly its labels, and
// every served series whose name starts with ownPrefix must be listed. It
// returns one message per problem, sorted.
func Check(listed, served map[string]string, component, ownPrefix string) []string {
	var problems []string
	for name, labels := range listed {
		got, ok := served[name]
		switch {
		case !ok:
			problems = append(problems, fmt.Sprintf("the README lists %s, which the %s does not serve", name, component))
		case got != labels:
			problems = append(problems, fmt.Sprintf("the README lists %s{%s}; served with labels {%s}", name, labels, got))
		}
	}
	for name := range served {
		if _, ok := listed[name]; strings.HasPrefix(name, ownPrefix) && !ok {
			problems = append(problems, fmt.Sprintf("%s is served but not in the README", name))
		}
	}
	sort.Strings(problems)
	return problems
}
