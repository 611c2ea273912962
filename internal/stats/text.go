package stats

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// WriteText prints s for humans, as rbdctl -s shows it: a table with one row
// per op (operations, bytes exact and humanized, errors, mean/p50/p99
// latency), the in-flight gauge, the 2015 tool's fields under their old names
// (reqs_started, reqs_completed, immd_writes, immd_reads, stall_sq_full,
// stall_no_slot, max_outstanding_reqs, cq_waits, max_cq_polled), reconnects,
// and the errors by kind. It returns the first write error.
func (s Snapshot) WriteText(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "%-12s\tops\tbytes\t\terrors\tmean\tp50\tp99\t\n", "op")
	for _, o := range s.Ops {
		bytes, human := strconv.FormatUint(o.Bytes, 10), "("+HumanBytes(o.Bytes)+")"
		if o.Op == OpFlush {
			bytes, human = "-", ""
		}
		mean, p50, p99 := "-", "-", "-"
		if o.Latency.Count > 0 {
			mean, p50, p99 = fmtDuration(o.Latency.Mean), fmtDuration(o.Latency.P50), fmtDuration(o.Latency.P99)
		}
		fmt.Fprintf(tw, "%-12s\t%d\t%s\t%s\t%d\t%s\t%s\t%s\t\n", o.Op, o.Ops, bytes, human, o.Errors, mean, p50, p99)
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "\nin_flight\t%d\n", s.InFlight)
	for _, f := range []struct {
		name string
		v    uint64
	}{
		{"reqs_started", s.RequestsStarted},
		{"reqs_completed", s.RequestsCompleted},
		{"immd_writes", s.InlineWrites},
		{"immd_reads", s.InlineReads},
		{"fua_writes", s.FUAWrites},
		{"stall_sq_full", s.StallsSQFull},
		{"stall_no_slot", s.StallsNoSlot},
		{"max_outstanding_reqs", uint64(max(s.MaxInFlight, 0))},
		{"cq_waits", s.CQWaits},
		{"max_cq_polled", s.MaxCQPolled},
		{"reconnects", s.Reconnects},
		{"resent", s.Resent},
		{"sockets_replaced", s.SocketsReplaced},
		{"kernel_resent", s.KernelResent},
	} {
		fmt.Fprintf(tw, "%s\t%d\n", f.name, f.v)
	}
	fmt.Fprintf(tw, "errors\t%s\n", s.errorSummary())
	return tw.Flush()
}

// errorSummary lists the non-zero error kinds summed over ops and the errors
// not tied to a request, as "io=2 transport=1", or "0".
func (s Snapshot) errorSummary() string {
	var byKind [NumErrKinds]uint64
	for _, o := range s.Ops {
		for k, n := range o.ErrorsByKind {
			if k < NumErrKinds {
				byKind[k] += n
			}
		}
	}
	for k, n := range s.OtherErrors {
		if k < NumErrKinds {
			byKind[k] += n
		}
	}
	var b strings.Builder
	for k := ErrNone + 1; k < NumErrKinds; k++ {
		if byKind[k] == 0 {
			continue
		}
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%s=%d", k, byKind[k])
	}
	if b.Len() == 0 {
		return "0"
	}
	return b.String()
}

// HumanBytes formats n bytes with binary units: "512 B", "1.5 KiB",
// "3.0 GiB".
func HumanBytes(n uint64) string {
	const units = "KMGTPE"
	if n < 1024 {
		return strconv.FormatUint(n, 10) + " B"
	}
	v, i := float64(n)/1024, 0
	for v >= 1024 && i < len(units)-1 {
		v /= 1024
		i++
	}
	return strconv.FormatFloat(v, 'f', 1, 64) + " " + units[i:i+1] + "iB"
}

// fmtDuration formats d with three significant digits in ns, µs, ms or s.
func fmtDuration(d time.Duration) string {
	v, unit := float64(d), "ns"
	switch {
	case d >= time.Second:
		v, unit = v/1e9, "s"
	case d >= time.Millisecond:
		v, unit = v/1e6, "ms"
	case d >= time.Microsecond:
		v, unit = v/1e3, "µs"
	default:
		return strconv.FormatInt(int64(d), 10) + unit
	}
	prec := 0
	switch {
	case v < 10:
		prec = 2
	case v < 100:
		prec = 1
	}
	return strconv.FormatFloat(v, 'f', prec, 64) + unit
}
