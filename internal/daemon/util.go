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

// Logger makes the daemon's logger: text lines on stderr, at level debug,
// info, warn or error; with journal priorities when stderr is the journal
// (NewLogHandler).
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
	return slog.New(NewLogHandler(os.Stderr, l, JournalStream(os.Stderr))), nil
}
