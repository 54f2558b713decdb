package sandboxlog

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestRecordsRoundTrip(t *testing.T) {
	at := time.Date(2025, 3, 4, 5, 6, 7, 8000, time.UTC)
	data := []byte("one\n\ntwo is long\nthree without newline")
	b := appendRecords(nil, at, Stderr, data, 5)
	want := []struct {
		partial bool
		content string
	}{
		{false, "one"}, {false, ""}, {true, "two i"}, {true, "s lon"}, {false, "g"}, {true, "three"}, {true, " with"}, {true, "out n"}, {true, "ewlin"}, {true, "e"},
	}
	lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	if len(lines) != len(want) {
		t.Fatalf("%d records, want %d:\n%s", len(lines), len(want), b)
	}
	for i, l := range lines {
		r, ok := ParseRecord([]byte(l))
		if !ok || !r.Time.Equal(at) || r.Stream != Stderr || r.Partial != want[i].partial || string(r.Content) != want[i].content {
			t.Errorf("record %d %q parsed as %+v %v, want %+v", i, l, r, ok, want[i])
		}
	}
	if !strings.HasPrefix(lines[0], "2025-03-04T05:06:07.000008000Z stderr F one") {
		t.Errorf("record %q", lines[0])
	}
	// Not records: output as it is.
	for _, l := range []string{"", "hello", "2025-03-04T05:06:07Z", "2025-03-04T05:06:07Z stdout", "2025-03-04T05:06:07Z stdin F x",
		"2025-03-04T05:06:07Z stdout X x", "2025-03-04T05:06:07Z stdout Fx", "2025-13-04T05:06:07Z stdout F x", "yesterday at noon stdout F x"} {
		if r, ok := ParseRecord([]byte(l)); ok {
			t.Errorf("%q parsed as a record: %+v", l, r)
		}
	}
	// The CRI's own times (no fixed width, an offset) are records too.
	if r, ok := ParseRecord([]byte("2016-10-06T00:17:09.669794202+02:00 stdout P a b")); !ok || string(r.Content) != "a b" || !r.Partial ||
		r.Time.UTC() != time.Date(2016, 10, 5, 22, 17, 9, 669794202, time.UTC) {
		t.Errorf("CRI record parsed as %+v, %v", r, ok)
	}
}

// writeRecords writes output of a stream at a time to a log's current file.
func writeRecords(t *testing.T, path, stream string, at time.Time, data string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(appendRecords(nil, at, stream, []byte(data), maxRecordContent)); err != nil {
		t.Fatal(err)
	}
}

func copyString(t *testing.T, path string, opts Options) string {
	t.Helper()
	var b bytes.Buffer
	if err := Copy(context.Background(), path, opts, &b); err != nil {
		t.Fatalf("Copy(%+v): %v", opts, err)
	}
	return b.String()
}

// TestOldFormat: lines that are not records (a log written before them, or
// by the shim) read as they are, also mixed with records; they take the
// time of the record before them, or their file's.
func TestOldFormat(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "c.log")
	old := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	if err := os.WriteFile(path+".1", []byte("raw one\nraw two\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(path+".1", old, old); err != nil {
		t.Fatal(err)
	}
	at := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	writeRecords(t, path, Stdout, at, "rec one\npart")
	writeRecords(t, path, Stderr, at.Add(time.Second), "err\n")
	writeRecords(t, path, Stdout, at.Add(2*time.Second), "ial\n")
	f, _ := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	f.WriteString("raw after\nraw unfinished")
	f.Close()

	const all = "raw one\nraw two\nrec one\nparterr\nial\nraw after\nraw unfinished"
	if got := readAll(t, path); got != all {
		t.Errorf("Open: %q, want %q", got, all)
	}
	if got := copyString(t, path, Options{TailLines: -1}); got != all {
		t.Errorf("Copy: %q, want %q", got, all)
	}
	got := copyString(t, path, Options{TailLines: -1, Timestamps: true})
	want := "2024-01-01T00:00:00Z raw one\n2024-01-01T00:00:00Z raw two\n2025-01-01T00:00:00Z rec one\n2025-01-01T00:00:00Z parterr\n" +
		"2025-01-01T00:00:02Z ial\n2025-01-01T00:00:02Z raw after\n2025-01-01T00:00:02Z raw unfinished"
	if got != want {
		t.Errorf("timestamps:\n%s\nwant\n%s", got, want)
	}
}

func TestCopyOptions(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.log")
	t0 := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	// Two files: lines 0-4 rotated, 5-9 current, a second apart, and an
	// unfinished last line.
	for i := 0; i < 10; i++ {
		stream := Stdout
		if i%3 == 0 {
			stream = Stderr
		}
		writeRecords(t, path, stream, t0.Add(time.Duration(i)*time.Second), fmt.Sprintf("line %d\n", i))
		if i == 4 {
			if err := os.Rename(path, path+".1"); err != nil {
				t.Fatal(err)
			}
		}
	}
	writeRecords(t, path, Stdout, t0.Add(10*time.Second), "prompt> ")
	lines := func(from, to int) string {
		var b strings.Builder
		for i := from; i < to; i++ {
			fmt.Fprintf(&b, "line %d\n", i)
		}
		return b.String()
	}
	cases := []struct {
		name string
		opts Options
		want string
	}{
		{"all", Options{TailLines: -1}, lines(0, 10) + "prompt> "},
		{"tail 3", Options{TailLines: 3}, "line 8\nline 9\nprompt> "},
		{"tail 0", Options{TailLines: 0}, ""},
		{"tail beyond", Options{TailLines: 100}, lines(0, 10) + "prompt> "},
		{"since", Options{TailLines: -1, Since: t0.Add(7 * time.Second)}, lines(7, 10) + "prompt> "},
		{"since between", Options{TailLines: -1, Since: t0.Add(6500 * time.Millisecond)}, lines(7, 10) + "prompt> "},
		{"since and tail", Options{TailLines: 2, Since: t0.Add(3 * time.Second)}, "line 9\nprompt> "},
		{"since after all", Options{TailLines: -1, Since: t0.Add(time.Hour)}, ""},
		{"timestamps", Options{TailLines: 2, Timestamps: true}, "2025-06-01T12:00:09Z line 9\n2025-06-01T12:00:10Z prompt> "},
		{"limit", Options{TailLines: -1, LimitBytes: 10}, "line 0\nlin"},
		{"limit with timestamps", Options{TailLines: 1, Timestamps: true, LimitBytes: 22}, "2025-06-01T12:00:10Z p"},
		{"limit beyond", Options{TailLines: 1, LimitBytes: 1000}, "prompt> "},
	}
	for _, tc := range cases {
		if got := copyString(t, path, tc.opts); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
	if err := Copy(context.Background(), filepath.Join(t.TempDir(), "none.log"), Options{}, &bytes.Buffer{}); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Copy of no log: %v, want ErrNotExist", err)
	}
}

// syncBuffer is a buffer a follower writes while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestFollow: a follower sees what the writer writes as it writes it, across
// many rotations (each line exactly once, in order, with three files kept),
// and ends once the writer ended and everything was read; a partial line
// (a prompt) shows at once.
func TestFollow(t *testing.T) {
	for _, maxFiles := range []int{2, 3} {
		t.Run(fmt.Sprintf("files=%d", maxFiles), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "c.log")
			w, err := NewWriter(path, 1024, maxFiles)
			if err != nil {
				t.Fatal(err)
			}
			defer w.Close()
			write := func(s string) {
				if _, err := w.Write(appendRecords(nil, time.Now(), Stdout, []byte(s), w.maxContent())); err != nil {
					t.Fatal(err)
				}
			}
			write("before\n")
			ended := make(chan time.Time, 1)
			out := &syncBuffer{}
			done := make(chan error, 1)
			go func() {
				done <- Copy(context.Background(), path, Options{Follow: true, TailLines: -1, Ended: ended, Poll: 5 * time.Millisecond}, out)
			}()
			waitFor(t, "the line written before", func() bool { return out.String() == "before\n" })
			write("prompt> ")
			waitFor(t, "the prompt", func() bool { return out.String() == "before\nprompt> " })
			write("answer\n")
			var want strings.Builder
			want.WriteString("before\nprompt> answer\n")
			// In bursts the follower catches up with: a burst rotates the
			// log at most maxFiles-1 times, so the file the follower reads
			// is still there (a file rotated out before it is read is lost
			// to it), and with three files it is found two rotations back.
			burst := 8 * (maxFiles - 1)
			for i := 0; i < 300; i++ {
				line := fmt.Sprintf("line %03d %s\n", i, strings.Repeat("x", i%50))
				want.WriteString(line)
				write(line)
				if i%burst == burst-1 {
					waitFor(t, line, func() bool { return strings.HasSuffix(out.String(), line) })
				}
			}
			write("last\n")
			want.WriteString("last\n")
			ended <- time.Now()
			select {
			case err := <-done:
				if err != nil {
					t.Fatal(err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the follower did not end after the writer did")
			}
			if got := out.String(); got != want.String() {
				d := firstDiff(got, want.String())
				t.Errorf("followed %d bytes, want %d; first difference at %d: got %q want %q", len(got), want.Len(), d, got[max(0, d-50):min(len(got), d+200)], want.String()[max(0, d-50):min(want.Len(), d+200)])
			}
			if files, _ := Files(path); len(files) != maxFiles {
				t.Errorf("%d files, want %d (the log rotated)", len(files), maxFiles)
			}
		})
	}
}

func firstDiff(a, b string) int {
	for i := 0; i < len(a) && i < len(b); i++ {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// TestFollowEnds: a follower of a log whose writer ended long ago ends at
// its end at once; one whose context ends, ends without an error; a follow
// from the tail shows only new lines.
func TestFollowEnds(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.log")
	writeRecords(t, path, Stdout, time.Now(), "a\nb\n")
	ended := make(chan time.Time, 1)
	ended <- time.Now().Add(-time.Minute)
	start := time.Now()
	if got := copyString(t, path, Options{Follow: true, TailLines: 1, Ended: ended}); got != "b\n" {
		t.Errorf("followed %q", got)
	}
	if took := time.Since(start); took > EndGrace {
		t.Errorf("the follow of an ended log took %v", took)
	}

	ctx, cancel := context.WithCancel(context.Background())
	out := &syncBuffer{}
	done := make(chan error, 1)
	go func() { done <- Copy(ctx, path, Options{Follow: true, TailLines: 0, Poll: 5 * time.Millisecond}, out) }()
	time.Sleep(20 * time.Millisecond)
	writeRecords(t, path, Stderr, time.Now(), "c\n")
	waitFor(t, "the new line", func() bool { return out.String() == "c\n" })
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Copy after its context ended: %v", err)
	}
}

// TestFollowOneFile: with one file, which the writer empties, the follower
// goes on from its start.
func TestFollowOneFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.log")
	w, err := NewWriter(path, 1024, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := &syncBuffer{}
	go func() { _ = Copy(ctx, path, Options{Follow: true, TailLines: -1, Poll: 5 * time.Millisecond}, out) }()
	var want strings.Builder
	for i := 0; i < 15; i++ {
		line := fmt.Sprintf("%s %02d\n", strings.Repeat("y", 90), i)
		want.WriteString(line)
		w.Write(appendRecords(nil, time.Now(), Stdout, []byte(line), w.maxContent()))
		waitFor(t, fmt.Sprintf("line %d", i), func() bool { return strings.HasSuffix(out.String(), line) })
	}
	if got := out.String(); got != want.String() {
		t.Errorf("followed %q, want %q", got, want.String())
	}
	if fi, err := os.Stat(path); err != nil || fi.Size() > 1024 {
		t.Errorf("the file was not emptied: %v, %v", fi.Size(), err)
	}
}

func TestMainWritesRecords(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.log")
	before := time.Now()
	cmd, out, errw := startLogger(t, path)
	fmt.Fprint(out, "to stdout\n")
	waitFor(t, "stdout's line", func() bool { data, _ := os.ReadFile(path); return bytes.Contains(data, []byte("to stdout")) })
	fmt.Fprint(errw, "to stderr\n")
	out.Close()
	errw.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
	if len(lines) != 2 {
		t.Fatalf("file %q, want two records", data)
	}
	for i, want := range []struct{ stream, content string }{{Stdout, "to stdout"}, {Stderr, "to stderr"}} {
		r, ok := ParseRecord([]byte(lines[i]))
		if !ok || r.Stream != want.stream || string(r.Content) != want.content || r.Partial || r.Time.Before(before.Add(-time.Millisecond)) || r.Time.After(time.Now()) {
			t.Errorf("record %q: %+v %v, want %s %q", lines[i], r, ok, want.stream, want.content)
		}
	}
	if got := readAll(t, path); got != "to stdout\nto stderr\n" {
		t.Errorf("read %q", got)
	}
}
