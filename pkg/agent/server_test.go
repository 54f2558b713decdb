package agent

import (
	"bytes"
	"strings"
	"testing"
	"testing/iotest"
)

// A log larger than what is served is served by its end: the newest lines.
func TestReadTail(t *testing.T) {
	var log strings.Builder
	for i := 0; log.Len() < 300<<10; i++ {
		log.WriteString("line ")
		log.WriteString(strings.Repeat("x", i%50))
		log.WriteString("\n")
	}
	want := log.String()
	for _, limit := range []int{1, 100, 64 << 10, 1 << 20} {
		got, err := readTail(iotest.HalfReader(strings.NewReader(want)), limit)
		if err != nil {
			t.Fatal(err)
		}
		exp := want
		if len(exp) > limit {
			exp = exp[len(exp)-limit:]
		}
		if !bytes.Equal(got, []byte(exp)) {
			t.Errorf("limit %d: got %d bytes ending %q, want the last %d", limit, len(got), got[max(0, len(got)-20):], len(exp))
		}
	}
	if _, err := readTail(iotest.ErrReader(iotest.ErrTimeout), 10); err == nil {
		t.Error("a read error was not returned")
	}
}
