package daemon

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
)

func devIno(t *testing.T, f *os.File) string {
	t.Helper()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return fmt.Sprintf("%d:%d", st.Dev, st.Ino)
}

func TestJournalStream(t *testing.T) {
	dir := t.TempDir()
	open := func(name string) *os.File {
		f, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	journal, other := open("journal"), open("other")
	for _, tc := range []struct {
		env  string
		f    *os.File
		want bool
	}{
		{devIno(t, journal), journal, true},
		{devIno(t, journal), other, false}, // stderr redirected elsewhere
		{"", journal, false},               // not under systemd
		{"12", journal, false},
		{"x:y", journal, false},
		{devIno(t, journal) + "0", journal, false},
	} {
		t.Setenv("JOURNAL_STREAM", tc.env)
		if got := JournalStream(tc.f); got != tc.want {
			t.Errorf("JOURNAL_STREAM=%q, %s: got %v, want %v", tc.env, filepath.Base(tc.f.Name()), got, tc.want)
		}
	}
}

func TestLogHandler(t *testing.T) {
	timeRE := regexp.MustCompile(`^time=\S+ `)
	for _, tc := range []struct {
		name    string
		journal bool
		level   slog.Level
		log     func(*slog.Logger)
		want    string // the line, without a time
	}{
		{"error", true, slog.LevelInfo, func(l *slog.Logger) { l.Error("lost", "queue", 1) }, "<3>level=ERROR msg=lost queue=1\n"},
		{"warn", true, slog.LevelInfo, func(l *slog.Logger) { l.Warn("slow") }, "<4>level=WARN msg=slow\n"},
		{"info", true, slog.LevelInfo, func(l *slog.Logger) { l.Info("added", "device", "rbdi0") }, "<6>level=INFO msg=added device=rbdi0\n"},
		{"debug", true, slog.LevelDebug, func(l *slog.Logger) { l.Debug("poll") }, "<7>level=DEBUG msg=poll\n"},
		{"debug filtered", true, slog.LevelInfo, func(l *slog.Logger) { l.Debug("poll") }, ""},
		{"between levels", true, slog.LevelDebug, func(l *slog.Logger) { l.Log(context.Background(), slog.LevelWarn+2, "x") }, "<4>level=WARN+2 msg=x\n"},
		{"derived handlers keep the prefix", true, slog.LevelInfo, func(l *slog.Logger) {
			l.With("device", "rbdi1").WithGroup("q").Error("dead", "n", 2)
		}, "<3>level=ERROR msg=dead device=rbdi1 q.n=2\n"},
		{"a message with a newline stays one line", true, slog.LevelInfo, func(l *slog.Logger) { l.Info("a\nb") }, "<6>level=INFO msg=\"a\\nb\"\n"},
		{"terminal: plain, with a time", false, slog.LevelInfo, func(l *slog.Logger) { l.Error("lost") }, "level=ERROR msg=lost\n"},
	} {
		var buf bytes.Buffer
		tc.log(slog.New(NewLogHandler(&buf, tc.level, tc.journal)))
		got := buf.String()
		if !tc.journal && got != "" {
			if !timeRE.MatchString(got) {
				t.Errorf("%s: no time in %q", tc.name, got)
			}
			got = timeRE.ReplaceAllString(got, "")
		}
		if got != tc.want {
			t.Errorf("%s: got %q, want %q", tc.name, got, tc.want)
		}
	}
}

// TestLogHandlerConcurrent: lines logged at once by many goroutines each
// carry their own priority, whole.
func TestLogHandlerConcurrent(t *testing.T) {
	var buf bytes.Buffer
	l := slog.New(NewLogHandler(&buf, slog.LevelDebug, true))
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dl := l.With("g", g)
			for range 200 {
				if g%2 == 0 {
					dl.Error("e")
				} else {
					dl.Debug("d")
				}
			}
		}()
	}
	wg.Wait()
	lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	if len(lines) != 1600 {
		t.Fatalf("%d lines, want 1600", len(lines))
	}
	line := regexp.MustCompile(`^(<3>level=ERROR msg=e g=[0246]|<7>level=DEBUG msg=d g=[1357])$`)
	for _, s := range lines {
		if !line.MatchString(s) {
			t.Fatalf("line %q", s)
		}
	}
}

// TestLogger: the daemons' logger prefixes when stderr is the journal.
func TestLogger(t *testing.T) {
	if _, err := Logger("verbose"); err == nil {
		t.Error("Logger(verbose): no error")
	}
	t.Setenv("JOURNAL_STREAM", devIno(t, os.Stderr))
	if !JournalStream(os.Stderr) {
		t.Fatal("JournalStream(os.Stderr) with its own device and inode: false")
	}
	l, err := Logger("warn")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := l.Handler().(*journalHandler); !ok || l.Enabled(context.Background(), slog.LevelInfo) {
		t.Errorf("Logger(warn) under the journal: handler %T, info enabled %v", l.Handler(), l.Enabled(context.Background(), slog.LevelInfo))
	}
}
