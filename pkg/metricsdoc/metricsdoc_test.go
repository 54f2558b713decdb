package metricsdoc

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/proto"
)

const readme = "# x\n\n" +
	"- **Metrics** on `/metrics`:\n" +
	"  - scheduler (`:10351`):\n" +
	"    - `a_total{result}`: a\n" +
	"    - `b_seconds`, `c{z,y}`: b and c\n" +
	"  - agent (`:8082`):\n" +
	"    - `d_total`: d\n" +
	"- **Next** item\n" +
	"    - `e_total`: not in the list\n"

func family(name string, labels ...string) *dto.MetricFamily {
	m := &dto.Metric{}
	for _, l := range labels {
		m.Label = append(m.Label, &dto.LabelPair{Name: proto.String(l), Value: proto.String("v")})
	}
	return &dto.MetricFamily{Name: proto.String(name), Metric: []*dto.Metric{m}}
}

func TestListedServedCheck(t *testing.T) {
	path := filepath.Join(t.TempDir(), "README.md")
	if err := os.WriteFile(path, []byte(readme), 0o644); err != nil {
		t.Fatal(err)
	}
	listed, err := Listed(path, "scheduler")
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]string{"a_total": "result", "b_seconds": "", "c": "y,z"}; !reflect.DeepEqual(listed, want) {
		t.Fatalf("Listed = %v, want %v", listed, want)
	}
	if _, err := Listed(path, "pool controller"); err == nil {
		t.Fatal("a component the README does not list gave no error")
	}

	served := Served([]*dto.MetricFamily{family("a_total", "result"), family("c", "z", "y"), family("own_x_total")})
	got := Check(listed, served, "scheduler", "own_")
	want := []string{
		"own_x_total is served but not in the README",
		"the README lists b_seconds, which the scheduler does not serve",
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Check = %q, want %q", got, want)
	}
	served["b_seconds"] = "le"
	if got := Check(listed, served, "scheduler", "nothing_"); len(got) != 1 || got[0] != "the README lists b_seconds{}; served with labels {le}" {
		t.Fatalf("a label mismatch: Check = %q", got)
	}
}
