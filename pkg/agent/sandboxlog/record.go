package sandboxlog

import (
	"bytes"
	"time"
)

// Records.
//
// The logger stores each piece of output as one line of the file, a record,
// in the format of the CRI's container logs:
//
//	<time> <stream> <tag> <content>
//
// time is when the logger read the output (RFC 3339, UTC, nanoseconds, fixed
// width); stream is "stdout" or "stderr"; tag is F when content ends a line
// of the output (its newline is the record's) and P when it is a part of a
// line that goes on in the stream's next record: a line longer than a
// record may hold, or output the logger read without its newline yet (a
// prompt; the logger never holds output back waiting for one). Content has
// no newline.
//
// Lines that are not records are read as they are, as output of neither
// stream: the files of a log written before records (or by containerd's
// shim, which writes the output raw) stay readable. Such a line takes the
// time of the record before it in the log, or, with none, its file's
// modification time.

// Streams of the output.
const (
	Stdout = "stdout"
	Stderr = "stderr"
)

// Tags of a record.
const (
	tagFull    = 'F'
	tagPartial = 'P'
)

// timeLayout is RFC 3339 with nanoseconds, fixed width (time.RFC3339Nano
// drops trailing zeros); time.RFC3339Nano parses it.
const timeLayout = "2006-01-02T15:04:05.000000000Z07:00"

// recordOverhead bounds the bytes a record adds to its content: the time
// (30 in UTC), the stream, the tag, three spaces and the newline.
const recordOverhead = 64

// maxRecordContent bounds the content of one record (as the CRI's 16 KiB
// lines): longer lines are split into partial records.
const maxRecordContent = 16 << 10

// Record is one piece of a sandbox's output.
type Record struct {
	// Time is when the logger read it.
	Time time.Time
	// Stream is Stdout or Stderr.
	Stream string
	// Partial: the line goes on in the stream's next record.
	Partial bool
	// Content, without a newline.
	Content []byte
}

// appendRecords appends to b the records of data, output read from stream
// at t: one per line, and more for a line longer than maxContent; a last
// piece without a newline is a partial record.
func appendRecords(b []byte, t time.Time, stream string, data []byte, maxContent int) []byte {
	ts := t.UTC().AppendFormat(make([]byte, 0, len(timeLayout)), timeLayout)
	for len(data) > 0 {
		line, rest, full := data, []byte(nil), false
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, rest, full = data[:i], data[i+1:], true
		}
		for len(line) > maxContent {
			b = appendRecord(b, ts, stream, tagPartial, line[:maxContent])
			line = line[maxContent:]
		}
		tag := byte(tagPartial)
		if full {
			tag = tagFull
		}
		b = appendRecord(b, ts, stream, tag, line)
		data = rest
	}
	return b
}

func appendRecord(b, ts []byte, stream string, tag byte, content []byte) []byte {
	b = append(b, ts...)
	b = append(b, ' ')
	b = append(b, stream...)
	b = append(b, ' ', tag, ' ')
	b = append(b, content...)
	return append(b, '\n')
}

// ParseRecord parses a line of a log file (without its newline); ok is
// false when the line is not a record.
func ParseRecord(line []byte) (r Record, ok bool) {
	sp := bytes.IndexByte(line, ' ')
	// The shortest RFC 3339 time is 20 bytes (no fraction, Z), the
	// longest 35 (nanoseconds and an offset).
	if sp < 20 || sp > 35 || line[4] != '-' || line[7] != '-' || line[10] != 'T' {
		return Record{}, false
	}
	t, err := time.Parse(time.RFC3339Nano, string(line[:sp]))
	if err != nil {
		return Record{}, false
	}
	rest := line[sp+1:]
	switch {
	case bytes.HasPrefix(rest, []byte(Stdout+" ")):
		r.Stream = Stdout
	case bytes.HasPrefix(rest, []byte(Stderr+" ")):
		r.Stream = Stderr
	default:
		return Record{}, false
	}
	rest = rest[len(Stdout)+1:]
	if len(rest) == 0 || (rest[0] != tagFull && rest[0] != tagPartial) {
		return Record{}, false
	}
	r.Partial = rest[0] == tagPartial
	rest = rest[1:]
	switch {
	case len(rest) == 0:
	case rest[0] == ' ':
		rest = rest[1:]
	default:
		return Record{}, false
	}
	r.Time, r.Content = t, rest
	return r, true
}
