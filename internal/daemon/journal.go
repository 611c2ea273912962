package daemon

import (
	"context"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// JournalStream reports whether f is connected to the systemd journal:
// systemd sets JOURNAL_STREAM to "DEVICE:INODE" of the stream it gave the
// service's stdout and stderr, and f must be that very stream (not a
// redirection to a file or a terminal of a child run by hand).
func JournalStream(f *os.File) bool {
	dev, ino, ok := strings.Cut(os.Getenv("JOURNAL_STREAM"), ":")
	if !ok {
		return false
	}
	d, err1 := strconv.ParseUint(dev, 10, 64)
	i, err2 := strconv.ParseUint(ino, 10, 64)
	if err1 != nil || err2 != nil {
		return false
	}
	fi, err := f.Stat()
	if err != nil {
		return false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && uint64(st.Dev) == d && uint64(st.Ino) == i
}

// Priority is the syslog priority of a log level, as the journal reads it
// from a "<N>" line prefix: error 3, warning 4, info 6, debug 7.
func Priority(l slog.Level) int {
	switch {
	case l >= slog.LevelError:
		return 3
	case l >= slog.LevelWarn:
		return 4
	case l >= slog.LevelInfo:
		return 6
	}
	return 7
}

// NewLogHandler returns the daemons' log handler: text lines on w at level
// and above. For the journal (see JournalStream) each line starts with its
// priority, "<3>" to "<7>", and has no time (the journal stamps it);
// otherwise the lines are plain text with a time.
func NewLogHandler(w io.Writer, level slog.Leveler, journal bool) slog.Handler {
	opts := &slog.HandlerOptions{Level: level}
	if !journal {
		return slog.NewTextHandler(w, opts)
	}
	opts.ReplaceAttr = func(groups []string, a slog.Attr) slog.Attr {
		if len(groups) == 0 && a.Key == slog.TimeKey {
			return slog.Attr{}
		}
		return a
	}
	pw := &priorityWriter{w: w}
	return &journalHandler{inner: slog.NewTextHandler(pw, opts), out: pw}
}

// journalHandler wraps a text handler writing to out, telling out the
// priority of each record before the handler writes its line.
type journalHandler struct {
	inner slog.Handler
	out   *priorityWriter // shared by the handlers WithAttrs and WithGroup derive
}

func (h *journalHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.inner.Enabled(ctx, l)
}

func (h *journalHandler) Handle(ctx context.Context, r slog.Record) error {
	h.out.mu.Lock()
	defer h.out.mu.Unlock()
	h.out.prio = Priority(r.Level)
	return h.inner.Handle(ctx, r)
}

func (h *journalHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &journalHandler{inner: h.inner.WithAttrs(as), out: h.out}
}

func (h *journalHandler) WithGroup(name string) slog.Handler {
	return &journalHandler{inner: h.inner.WithGroup(name), out: h.out}
}

// priorityWriter writes each line (the text handler writes a record in one
// Write) behind "<prio>", in one write so that the line stays whole.
type priorityWriter struct {
	mu   sync.Mutex // held by journalHandler.Handle around the Write
	w    io.Writer
	prio int
	buf  []byte
}

func (p *priorityWriter) Write(b []byte) (int, error) {
	p.buf = append(append(p.buf[:0], '<', byte('0'+p.prio), '>'), b...)
	if _, err := p.w.Write(p.buf); err != nil {
		return 0, err
	}
	return len(b), nil
}
