package stats

import (
	"errors"
	"regexp"
	"strings"
	"testing"
	"time"
)

func TestWriteText(t *testing.T) {
	var c Counters
	c.Start(OpRead)
	c.record(OpRead, 1<<20, int64(40*time.Microsecond), ErrNone)
	c.Start(OpWrite)
	c.record(OpWrite, 4096, int64(3*time.Millisecond), ErrTransport)
	c.Start(OpWrite)
	c.AddInlineWrite()
	c.AddStallSQFull()
	c.AddStallNoSlot()
	c.AddStallNoSlot()
	c.AddCQWait()
	c.ObservePolled(9)
	c.AddReconnect()
	c.AddError(ErrInvalid)
	var b strings.Builder
	if err := c.Snapshot().WriteText(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, re := range []string{
		`(?m)^\s*op\s+ops\s+bytes\s+errors\s+mean\s+p50\s+p99\s*$`,
		`(?m)^\s*read\s+1\s+1048576\s+\(1\.0 MiB\)\s+0\s+40\.0µs\s+35\.0µs\s+49\.7µs\s*$`,
		`(?m)^\s*write\s+1\s+0\s+\(0 B\)\s+1\s+3\.00ms\s+`,
		`(?m)^\s*flush\s+0\s+-\s+0\s+-\s+-\s+-\s*$`,
		`(?m)^in_flight\s+1$`,
		`(?m)^reqs_started\s+3$`,
		`(?m)^reqs_completed\s+2$`,
		`(?m)^immd_writes\s+1$`,
		`(?m)^immd_reads\s+0$`,
		`(?m)^stall_sq_full\s+1$`,
		`(?m)^stall_no_slot\s+2$`,
		`(?m)^max_outstanding_reqs\s+1$`,
		`(?m)^cq_waits\s+1$`,
		`(?m)^max_cq_polled\s+9$`,
		`(?m)^reconnects\s+1$`,
		`(?m)^errors\s+transport=1 invalid=1$`,
	} {
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("output lacks %s:\n%s", re, out)
		}
	}
	var empty strings.Builder
	if err := (Snapshot{}).WriteText(&empty); err != nil || !strings.Contains(empty.String(), "errors                0") {
		t.Errorf("empty snapshot: %v\n%s", err, empty.String())
	}
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestWriteTextError(t *testing.T) {
	if err := (Snapshot{}).WriteText(failWriter{}); err == nil {
		t.Error("WriteText to a failing writer succeeded")
	}
}

func TestHumanBytes(t *testing.T) {
	for _, tc := range []struct {
		n    uint64
		want string
	}{
		{0, "0 B"},
		{1023, "1023 B"},
		{1024, "1.0 KiB"},
		{1536, "1.5 KiB"},
		{1 << 20, "1.0 MiB"},
		{3 << 30, "3.0 GiB"},
		{1 << 40, "1.0 TiB"},
		{1<<64 - 1, "16.0 EiB"},
	} {
		if got := HumanBytes(tc.n); got != tc.want {
			t.Errorf("HumanBytes(%d) = %q, want %q", tc.n, got, tc.want)
		}
	}
}

func TestFmtDuration(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		want string
	}{
		{0, "0ns"},
		{999, "999ns"},
		{time.Microsecond, "1.00µs"},
		{45123, "45.1µs"},
		{123456, "123µs"},
		{2500 * time.Microsecond, "2.50ms"},
		{1500 * time.Millisecond, "1.50s"},
		{125 * time.Second, "125s"},
	} {
		if got := fmtDuration(tc.d); got != tc.want {
			t.Errorf("fmtDuration(%v) = %q, want %q", tc.d, got, tc.want)
		}
	}
}
