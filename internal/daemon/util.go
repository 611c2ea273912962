package daemon

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
)

type bytesReader struct{ b []byte }

func (r *bytesReader) reader() io.Reader {
	if r == nil {
		return nil
	}
	return bytes.NewReader(r.b)
}

// Logger makes the daemon's logger: text lines on stderr (the journal under
// systemd), at level debug, info, warn or error.
func Logger(level string) (*slog.Logger, error) {
	var l slog.Level
	switch strings.ToLower(level) {
	case "debug":
		l = slog.LevelDebug
	case "", "info":
		l = slog.LevelInfo
	case "warn", "warning":
		l = slog.LevelWarn
	case "error":
		l = slog.LevelError
	default:
		return nil, fmt.Errorf("log level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: l}
	if os.Getenv("JOURNAL_STREAM") != "" { // the journal stamps time itself
		opts.ReplaceAttr = func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		}
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
}
