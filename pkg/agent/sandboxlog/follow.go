package sandboxlog

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"time"
)

// Reading.
//
// A log is read as a chain of its files, oldest first, each to its end.
// Followed, the current file is read on as it grows; when the logger
// rotates it (renames it and begins a new one), the reader, which holds the
// renamed file open, reads it to its end (what was written before the
// rename) and goes on with the file that followed it, found by its identity
// among the log's files; with one file, which the logger empties instead, it
// reads the emptied file from its start. A file rotated out of the log
// before the reader got to it is lost to that reader.
//
// Lines and times: the output is read record by record (see record.go). A
// line of the output ends with a full record; a partial record is written
// out as it comes, without waiting for the rest of its line. TailLines
// counts lines ending in the log (and a last unfinished one); with two
// streams writing partial lines at once their pieces interleave, as they
// did on the way in.

// Options select what Copy writes, as a Pod's log options do.
type Options struct {
	// Follow keeps writing what the log gets, until ctx ends, or Ended says
	// that the log's writer ended and everything it wrote was read.
	Follow bool
	// TailLines, if not negative, starts that many lines from the end.
	TailLines int64
	// Since, if not zero, skips what was read before it.
	Since time.Time
	// Timestamps prefixes each line with its time (RFC 3339, nanoseconds):
	// the time of its first record.
	Timestamps bool
	// LimitBytes, if positive, stops after that many bytes.
	LimitBytes int64
	// Ended, with Follow, delivers the time the output's writer ended (the
	// sandbox's process exited); Copy then ends once it has read everything,
	// and at least EndGrace after that time, which leaves the logger the
	// time to write what was still in its pipes. Nil: until ctx ends.
	Ended <-chan time.Time
	// Poll is how often a followed log is checked for more when it has
	// nothing new (default DefaultPoll).
	Poll time.Duration
}

// Defaults of Copy.
const (
	DefaultPoll = 100 * time.Millisecond
	EndGrace    = 300 * time.Millisecond
)

// errLimit ends a Copy at LimitBytes.
var errLimit = errors.New("limit reached")

// Copy writes the output in the log at path to w as opts say. It ends at
// the end of the log, or with Follow as Options.Follow says; the end of ctx
// is an end, not an error. It fails with an error satisfying
// errors.Is(err, fs.ErrNotExist) when the log has no file.
func Copy(ctx context.Context, path string, opts Options, w io.Writer) error {
	c, err := openChain(path, opts.Follow)
	if err != nil {
		return err
	}
	defer func() { _ = c.close() }()
	c.ended, c.poll = opts.Ended, opts.Poll
	if c.poll <= 0 {
		c.poll = DefaultPoll
	}
	var skip int64
	if opts.TailLines >= 0 {
		n, err := c.countLines(opts.Since)
		if err != nil {
			return err
		}
		skip = max(0, n-opts.TailLines)
	}
	out := &output{w: bufio.NewWriterSize(w, 32<<10), dst: w, timestamps: opts.Timestamps, left: -1, atStart: true}
	if opts.LimitBytes > 0 {
		out.left = opts.LimitBytes
	}
	c.idle = out.flush
	for {
		e, err := c.next(ctx)
		switch {
		case ctx.Err() != nil:
			_ = out.flush()
			return nil
		case errors.Is(err, io.EOF):
			return out.flush()
		case err != nil:
			return err
		}
		if !opts.Since.IsZero() && e.time.Before(opts.Since) {
			continue
		}
		if skip > 0 {
			if e.newline {
				skip--
			}
			continue
		}
		if err := out.write(e); errors.Is(err, errLimit) {
			return out.flush()
		} else if err != nil {
			return err
		}
	}
}

// Open reads the output in the log at path, oldest file first. It fails
// with an error satisfying errors.Is(err, fs.ErrNotExist) when the log has
// no file.
func Open(path string) (io.ReadCloser, error) {
	c, err := openChain(path, false)
	if err != nil {
		return nil, err
	}
	return &outputReader{c: c}, nil
}

// outputReader reads the output of a chain.
type outputReader struct {
	c       *chain
	pending []byte
}

func (r *outputReader) Read(p []byte) (int, error) {
	for len(r.pending) == 0 {
		e, err := r.c.next(context.Background())
		if err != nil {
			return 0, err
		}
		r.pending = append(r.pending[:0], e.content...)
		if e.newline {
			r.pending = append(r.pending, '\n')
		}
	}
	n := copy(p, r.pending)
	r.pending = r.pending[n:]
	return n, nil
}

func (r *outputReader) Close() error { return r.c.close() }

// entry is a piece of the output: a record's content, or a line that is no
// record.
type entry struct {
	time time.Time
	// stream is Stdout or Stderr; "" for a line that is no record.
	stream  string
	content []byte // valid until the next entry is read
	// newline: the entry ends a line of the output.
	newline bool
}

// clock gives entries their times: a record's own; for a line that is no
// record, the last record's before it, or its file's modification time.
type clock struct {
	last, mtime time.Time
}

func (k *clock) entry(ch chunk) entry {
	if ch.begins {
		if r, ok := ParseRecord(ch.data); ok {
			k.last = r.Time
			return entry{time: r.Time, stream: r.Stream, content: r.Content, newline: ch.ends && !r.Partial}
		}
	}
	t := k.last
	if t.IsZero() {
		t = k.mtime
	}
	return entry{time: t, content: ch.data, newline: ch.ends}
}

// scanBuffer holds the longest line read whole: records are far shorter,
// longer lines that are no record are read in pieces.
const scanBuffer = 64 << 10

// chunk is a line of a file, or a piece of a longer one.
type chunk struct {
	data []byte // without the newline; valid until the scanner's next call
	// begins: data begins a line of the file; ends: data ends it.
	begins, ends bool
}

// scanner reads the lines of a file that may grow.
type scanner struct {
	r          io.Reader
	buf        []byte
	start, end int
	read       int64 // bytes read from r
	lineStart  bool  // the next chunk begins a line
}

func newScanner(r io.Reader) *scanner {
	return &scanner{r: r, buf: make([]byte, scanBuffer), lineStart: true}
}

// next returns the next line, or a piece of a line longer than the buffer.
// At the end of what r has it returns io.EOF, keeping an unfinished line,
// which tail then returns.
func (s *scanner) next() (chunk, error) {
	for {
		if i := bytes.IndexByte(s.buf[s.start:s.end], '\n'); i >= 0 {
			c := chunk{data: s.buf[s.start : s.start+i], begins: s.lineStart, ends: true}
			s.start += i + 1
			s.lineStart = true
			return c, nil
		}
		if s.end-s.start == len(s.buf) {
			c := chunk{data: s.buf[s.start:s.end], begins: s.lineStart}
			s.start, s.end, s.lineStart = 0, 0, false
			return c, nil
		}
		if s.start > 0 {
			s.end = copy(s.buf, s.buf[s.start:s.end])
			s.start = 0
		}
		n, err := s.r.Read(s.buf[s.end:])
		s.end += n
		s.read += int64(n)
		if n > 0 {
			continue
		}
		if err == nil {
			err = io.ErrNoProgress
		}
		return chunk{}, err
	}
}

// tail returns the unfinished line kept at the end, if any.
func (s *scanner) tail() (chunk, bool) {
	if s.start == s.end {
		return chunk{}, false
	}
	c := chunk{data: s.buf[s.start:s.end], begins: s.lineStart}
	s.start, s.end, s.lineStart = 0, 0, false
	return c, true
}

// chain reads the files of a log one after the other.
type chain struct {
	path   string
	follow bool
	cur    *os.File
	sc     *scanner
	clock  clock
	// pending are the files to read after cur, oldest first.
	pending []*os.File

	ended    <-chan time.Time
	endedAt  time.Time // zero until ended delivers
	endReady bool      // the end was due before the last read
	poll     time.Duration
	idle     func() error // called before waiting for more
}

// openChain opens the files of the log at path.
func openChain(path string, follow bool) (*chain, error) {
	paths, err := Files(path)
	if err != nil {
		return nil, err
	}
	var files []*os.File
	for _, p := range paths {
		f, err := os.Open(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue // rotated away meanwhile
		}
		if err != nil {
			for _, f := range files {
				_ = f.Close()
			}
			return nil, err
		}
		files = append(files, f)
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("log %s: %w", path, fs.ErrNotExist)
	}
	c := &chain{path: path, follow: follow, pending: files[1:], poll: DefaultPoll}
	c.begin(files[0])
	return c, nil
}

// begin starts reading f.
func (c *chain) begin(f *os.File) {
	c.cur, c.sc = f, newScanner(f)
	c.clock.mtime = time.Time{}
	if fi, err := f.Stat(); err == nil {
		c.clock.mtime = fi.ModTime()
	}
}

func (c *chain) close() error {
	errs := []error{c.cur.Close()}
	for _, f := range c.pending {
		errs = append(errs, f.Close())
	}
	return errors.Join(errs...)
}

// next returns the next entry; io.EOF at the end of the log (followed: see
// Options.Follow), ctx's error when it ends first.
func (c *chain) next(ctx context.Context) (entry, error) {
	for {
		ch, err := c.sc.next()
		if err == nil {
			return c.clock.entry(ch), nil
		}
		if !errors.Is(err, io.EOF) {
			return entry{}, err
		}
		if len(c.pending) > 0 {
			// A file rotated away is complete: its unfinished line ends it.
			if ch, ok := c.sc.tail(); ok {
				return c.clock.entry(ch), nil
			}
			_ = c.cur.Close()
			c.begin(c.pending[0])
			c.pending = c.pending[1:]
			continue
		}
		if c.follow {
			next, err := c.successor()
			if err != nil {
				return entry{}, err
			}
			if next != nil {
				// What was written to cur before its rename is read first.
				c.pending = append(c.pending, next)
				continue
			}
		}
		if !c.follow || c.endReady {
			if ch, ok := c.sc.tail(); ok {
				return c.clock.entry(ch), nil
			}
			return entry{}, io.EOF
		}
		if err := c.wait(ctx); err != nil {
			return entry{}, err
		}
	}
}

// successor checks the current file, at its end, against the log's: when
// it was rotated away, it opens the file that followed it (nil while there
// is none yet); when it was emptied (one file), it starts it again.
func (c *chain) successor() (*os.File, error) {
	cur, err := c.cur.Stat()
	if err != nil {
		return nil, err
	}
	now, err := os.Stat(c.path)
	if err != nil {
		return nil, nil // between a rename and the new file, or removed
	}
	if os.SameFile(cur, now) {
		if cur.Size() < c.sc.read {
			// Emptied and written again: read it from its start.
			if _, err := c.cur.Seek(0, io.SeekStart); err != nil {
				return nil, err
			}
			c.begin(c.cur)
		}
		return nil, nil
	}
	paths, err := Files(c.path)
	if err != nil || len(paths) == 0 {
		return nil, err
	}
	next := paths[0] // cur was rotated out: the oldest left follows it
	for i, p := range paths {
		if fi, err := os.Stat(p); err == nil && os.SameFile(fi, cur) {
			if i+1 == len(paths) {
				return nil, nil
			}
			next = paths[i+1]
			break
		}
	}
	f, err := os.Open(next)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil // rotated meanwhile: found on the next look
	}
	return f, err
}

// wait waits for more output, until the end is due (then returns nil with
// endReady set: the next read is the last) or ctx ends.
func (c *chain) wait(ctx context.Context) error {
	if c.idle != nil {
		if err := c.idle(); err != nil {
			return err
		}
	}
	if c.endedAt.IsZero() && c.ended != nil {
		select {
		case t := <-c.ended:
			c.endedAt = t
			if c.endedAt.IsZero() {
				c.endedAt = time.Now()
			}
		default:
		}
	}
	if !c.endedAt.IsZero() && time.Since(c.endedAt) >= EndGrace {
		c.endReady = true
		return nil
	}
	t := time.NewTimer(c.poll)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
	}
	return nil
}

// countLines counts the lines in the log's files, as they are now, from
// since on: those that end, and an unfinished last one.
func (c *chain) countLines(since time.Time) (int64, error) {
	var n int64
	unfinished := false
	for _, f := range append([]*os.File{c.cur}, c.pending...) {
		fi, err := f.Stat()
		if err != nil {
			return 0, err
		}
		k := clock{mtime: fi.ModTime()}
		sc := newScanner(io.NewSectionReader(f, 0, fi.Size()))
		for {
			ch, err := sc.next()
			if errors.Is(err, io.EOF) {
				var ok bool
				if ch, ok = sc.tail(); !ok {
					break
				}
			} else if err != nil {
				return 0, err
			}
			e := k.entry(ch)
			if !since.IsZero() && e.time.Before(since) {
				continue
			}
			if e.newline {
				n++
			}
			unfinished = !e.newline
		}
	}
	if unfinished {
		n++
	}
	return n, nil
}

// output writes entries, with their times when asked, up to a limit.
type output struct {
	w          *bufio.Writer
	dst        io.Writer
	timestamps bool
	left       int64 // bytes left to write; negative: no limit
	atStart    bool  // the next entry begins a line
	line       []byte
}

func (o *output) write(e entry) error {
	o.line = o.line[:0]
	if o.timestamps && o.atStart {
		o.line = append(e.time.UTC().AppendFormat(o.line, time.RFC3339Nano), ' ')
	}
	o.line = append(o.line, e.content...)
	if e.newline {
		o.line = append(o.line, '\n')
	}
	o.atStart = e.newline
	b, limited := o.line, false
	if o.left >= 0 && int64(len(b)) >= o.left {
		b, limited = b[:o.left], true
	}
	if _, err := o.w.Write(b); err != nil {
		return err
	}
	if o.left >= 0 {
		o.left -= int64(len(b))
	}
	if limited {
		return errLimit
	}
	return nil
}

// flush writes what is buffered, and flushes the destination if it can
// (an HTTP response).
func (o *output) flush() error {
	if err := o.w.Flush(); err != nil {
		return err
	}
	if f, ok := o.dst.(interface{ Flush() }); ok {
		f.Flush()
	}
	return nil
}
