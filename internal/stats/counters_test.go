package stats

import (
	"encoding/json"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestBucketIndex(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		want int
	}{
		{0, 0},
		{time.Nanosecond, 0},
		{time.Microsecond, 0},
		{time.Microsecond + 1, 1},
		{2 * time.Microsecond, 1},
		{3 * time.Microsecond, 2},
		{10 * time.Microsecond, 3},
		{10*time.Microsecond + 1, 4},
		{35 * time.Microsecond, 5},
		{100 * time.Microsecond, 6},
		{999 * time.Microsecond, 9},
		{time.Millisecond, 9},
		{time.Second, 18},
		{10 * time.Second, 21},
		{10*time.Second + 1, NumLatencyBuckets},
		{time.Hour, NumLatencyBuckets},
	} {
		if got := bucketIndex(int64(tc.d)); got != tc.want {
			t.Errorf("bucketIndex(%v) = %d, want %d", tc.d, got, tc.want)
		}
	}
	b := LatencyBounds()
	if len(b) != NumLatencyBuckets || b[0] != time.Microsecond || b[len(b)-1] != 10*time.Second {
		t.Errorf("LatencyBounds() = %v", b)
	}
	for i := 1; i < len(b); i++ {
		if b[i] <= b[i-1] {
			t.Errorf("LatencyBounds not ascending at %d: %v", i, b)
		}
	}
}

// TestHistogramPlacement records exact latencies, bounds included (a bucket's
// bound is inclusive, as Prometheus's le).
func TestHistogramPlacement(t *testing.T) {
	var c Counters
	lat := []struct {
		d      time.Duration
		bucket int // index into the finite buckets, NumLatencyBuckets = overflow
	}{
		{500 * time.Nanosecond, 0},
		{15 * time.Microsecond, 4},
		{20 * time.Microsecond, 4},
		{20*time.Microsecond + 1, 5},
		{700 * time.Microsecond, 9},
		{3 * time.Second, 20},
		{10 * time.Second, 21},
		{20 * time.Second, NumLatencyBuckets},
		{-time.Second, 0}, // a start in the future counts as 0
	}
	var want [NumLatencyBuckets + 1]uint64
	var sum time.Duration
	for _, l := range lat {
		c.record(OpWrite, 4096, int64(l.d), ErrNone)
		want[l.bucket]++
		sum += max(l.d, 0)
	}
	h := c.Snapshot().Ops[OpWrite].Latency
	if h.Count != uint64(len(lat)) {
		t.Fatalf("Count = %d, want %d", h.Count, len(lat))
	}
	var cum uint64
	for i, b := range h.Buckets {
		cum += want[i]
		if b.UpperBound != LatencyBounds()[i] || b.Count != cum {
			t.Errorf("bucket %d: le %v count %d, want le %v count %d", i, b.UpperBound, b.Count, LatencyBounds()[i], cum)
		}
	}
	if h.Sum != sum || h.Mean != sum/time.Duration(len(lat)) {
		t.Errorf("Sum %v Mean %v, want %v %v", h.Sum, h.Mean, sum, sum/time.Duration(len(lat)))
	}
	// 9 observations, 4 of them up to 20µs: the median (rank 4.5) is halfway
	// through (20µs, 50µs], which holds the fifth alone; p99 (rank 8.91) is
	// in the overflow bucket, so it is the last bound.
	if want := 35 * time.Microsecond; h.P50 != want {
		t.Errorf("P50 = %v, want %v", h.P50, want)
	}
	if h.P99 != 10*time.Second {
		t.Errorf("P99 = %v, want 10s", h.P99)
	}
}

// TestDoneMeasures checks that Done measures from its start Stamp.
func TestDoneMeasures(t *testing.T) {
	var c Counters
	c.Start(OpRead)
	c.Done(OpRead, 1, Now()-Stamp(700*time.Microsecond), ErrNone)
	h := c.Snapshot().Ops[OpRead].Latency
	if h.Sum < 700*time.Microsecond || h.Sum > time.Second {
		t.Errorf("Sum = %v, want 700µs and a little", h.Sum)
	}
	if h.Buckets[8].Count != 0 || h.Buckets[NumLatencyBuckets-1].Count != 1 {
		t.Errorf("700µs landed in the wrong bucket: %+v", h.Buckets)
	}
	if s := Now() - Stamp(time.Millisecond); s.Elapsed() < time.Millisecond {
		t.Errorf("Elapsed = %v, want at least 1ms", s.Elapsed())
	}
	if (Now() + Stamp(time.Hour)).Elapsed() != 0 {
		t.Error("Elapsed of a future Stamp is not 0")
	}
}

func TestQuantile(t *testing.T) {
	hist := func(counts ...uint64) Histogram {
		var h Histogram
		for i, n := range counts {
			h.Count += n
			h.Buckets = append(h.Buckets, Bucket{UpperBound: time.Duration(latencyBounds[i]), Count: h.Count})
		}
		return h
	}
	for _, tc := range []struct {
		name string
		h    Histogram
		q    float64
		want time.Duration
	}{
		{"empty", Histogram{}, 0.5, 0},
		{"first bucket interpolated", hist(100), 0.5, 500 * time.Nanosecond},
		{"first bucket top", hist(100), 1, time.Microsecond},
		{"second bucket", hist(50, 50), 0.75, 1500 * time.Nanosecond},
		{"skips empty buckets", hist(0, 0, 10), 0, 2 * time.Microsecond},
		{"q clamped", hist(0, 10), 7, 2 * time.Microsecond},
		{"p99 in fourth bucket", hist(1, 1, 1, 97), 0.99, 5*time.Microsecond + 5*time.Microsecond*96/97},
	} {
		got := tc.h.Quantile(tc.q)
		if d := got - tc.want; d < -time.Nanosecond || d > time.Nanosecond {
			t.Errorf("%s: Quantile(%v) = %v, want %v", tc.name, tc.q, got, tc.want)
		}
	}
	overflow := hist(1)
	overflow.Count = 10
	if got := overflow.Quantile(0.5); got != time.Microsecond {
		t.Errorf("overflow: Quantile(0.5) = %v, want the last bound", got)
	}
}

func TestDoneCounts(t *testing.T) {
	var c Counters
	type req struct {
		op    Op
		bytes int
		kind  ErrKind
	}
	for _, r := range []req{
		{OpRead, 4096, ErrNone},
		{OpRead, 8192, ErrNone},
		{OpRead, 4096, ErrTransport},
		{OpWrite, 512, ErrNone},
		{OpWrite, 512, ErrNoSpace},
		{OpFlush, 0, ErrNone},
		{OpTrim, 1 << 20, ErrNone},
		{OpWriteZeroes, 1 << 16, ErrReadOnly},
		{OpWriteZeroes, -1, ErrNone}, // negative length ignored
		{OpWrite, 512, ErrKind(200)}, // unknown kind counts as io
		{Op(9), 512, ErrNone},        // invalid op: an invalid error
	} {
		c.Done(r.op, r.bytes, c.Start(r.op), r.kind)
	}
	c.AddError(ErrInvalid)
	c.AddError(ErrNone) // ignored
	c.AddError(ErrKind(99))
	c.AddInlineRead()
	c.AddInlineWrite()
	c.AddInlineWrite()
	c.AddStallSQFull()
	c.AddStallNoSlot()
	c.AddStallNoSlot()
	c.AddCQWait()
	c.ObservePolled(3)
	c.ObservePolled(16)
	c.ObservePolled(7)
	c.ObservePolled(-1)
	c.AddReconnect()

	s := c.Snapshot()
	want := Snapshot{
		RequestsStarted: 11, RequestsCompleted: 11, InFlight: 0, MaxInFlight: 1,
		InlineReads: 1, InlineWrites: 2, StallsSQFull: 1, StallsNoSlot: 2,
		CQWaits: 1, MaxCQPolled: 16, Reconnects: 1,
		OtherErrors: map[ErrKind]uint64{ErrInvalid: 2, ErrIO: 1},
	}
	wantOps := [NumOps]struct {
		ops, bytes, errs uint64
		byKind           map[ErrKind]uint64
	}{
		OpRead:        {3, 12288, 1, map[ErrKind]uint64{ErrTransport: 1}},
		OpWrite:       {3, 512, 2, map[ErrKind]uint64{ErrNoSpace: 1, ErrIO: 1}},
		OpFlush:       {1, 0, 0, nil},
		OpTrim:        {1, 1 << 20, 0, nil},
		OpWriteZeroes: {2, 0, 1, map[ErrKind]uint64{ErrReadOnly: 1}},
	}
	for op, w := range wantOps {
		o := s.Ops[op]
		if o.Op != Op(op) || o.Ops != w.ops || o.Bytes != w.bytes || o.Errors != w.errs || !reflect.DeepEqual(o.ErrorsByKind, w.byKind) {
			t.Errorf("%v: got ops %d bytes %d errors %d %v, want %d %d %d %v",
				Op(op), o.Ops, o.Bytes, o.Errors, o.ErrorsByKind, w.ops, w.bytes, w.errs, w.byKind)
		}
		if o.Latency.Count != w.ops {
			t.Errorf("%v: latency count %d, want %d", Op(op), o.Latency.Count, w.ops)
		}
	}
	s.Ops = [NumOps]OpStats{}
	if !reflect.DeepEqual(s, want) {
		t.Errorf("snapshot\n got %+v\nwant %+v", s, want)
	}
	if got := c.Snapshot().TotalErrors(); got != 7 {
		t.Errorf("TotalErrors = %d, want 7", got)
	}
}

func TestConcurrent(t *testing.T) {
	const (
		workers = 8
		perG    = 5000
	)
	var c Counters
	var wg sync.WaitGroup
	for g := range workers {
		wg.Go(func() {
			for i := range perG {
				op := Op((g + i) % int(NumOps))
				kind := ErrNone
				if i%10 == 0 {
					kind = ErrRemote
				}
				start := c.Start(op)
				if i%100 == 0 {
					c.AddStallNoSlot()
					c.AddInlineWrite()
					c.AddCQWait()
				}
				c.ObservePolled(i % 32)
				c.Done(op, 512, start, kind)
			}
		})
	}
	wg.Wait()
	s := c.Snapshot()
	const total = workers * perG
	if s.RequestsStarted != total || s.RequestsCompleted != total || s.InFlight != 0 {
		t.Errorf("started %d completed %d in flight %d, want %d %d 0", s.RequestsStarted, s.RequestsCompleted, s.InFlight, total, total)
	}
	if s.MaxInFlight < 1 || s.MaxInFlight > workers {
		t.Errorf("MaxInFlight = %d, want 1..%d", s.MaxInFlight, workers)
	}
	var ops, errs, bytes, hist uint64
	for _, o := range s.Ops {
		ops += o.Ops
		errs += o.Errors
		bytes += o.Bytes
		hist += o.Latency.Count
		if o.Ops != total/uint64(NumOps) {
			t.Errorf("%v: %d ops, want %d", o.Op, o.Ops, total/uint64(NumOps))
		}
	}
	wantErrs := uint64(workers * perG / 10)
	if ops != total || hist != total || errs != wantErrs || bytes != (total-wantErrs)*512 {
		t.Errorf("ops %d hist %d errors %d bytes %d, want %d %d %d %d", ops, hist, errs, bytes, total, total, wantErrs, (total-wantErrs)*512)
	}
	if n := uint64(workers * perG / 100); s.StallsNoSlot != n || s.InlineWrites != n || s.CQWaits != n {
		t.Errorf("stalls %d inline %d cq waits %d, want %d", s.StallsNoSlot, s.InlineWrites, s.CQWaits, n)
	}
	if s.MaxCQPolled != 31 {
		t.Errorf("MaxCQPolled = %d, want 31", s.MaxCQPolled)
	}
}

func TestMaxInFlight(t *testing.T) {
	var c Counters
	var starts []Stamp
	for range 5 {
		starts = append(starts, c.Start(OpRead))
	}
	c.Done(OpRead, 1, starts[0], ErrNone)
	c.Done(OpRead, 1, starts[1], ErrNone)
	c.Start(OpRead)
	if s := c.Snapshot(); s.InFlight != 4 || s.MaxInFlight != 5 {
		t.Errorf("in flight %d max %d, want 4 5", s.InFlight, s.MaxInFlight)
	}

	// All eight start before any is done, so the maximum is exactly eight
	// above what was in flight.
	const workers = 8
	var started, release sync.WaitGroup
	started.Add(workers)
	release.Add(1)
	var done sync.WaitGroup
	for range workers {
		done.Go(func() {
			st := c.Start(OpWrite)
			started.Done()
			release.Wait()
			c.Done(OpWrite, 1, st, ErrNone)
		})
	}
	started.Wait()
	release.Done()
	done.Wait()
	if s := c.Snapshot(); s.InFlight != 4 || s.MaxInFlight != 4+workers {
		t.Errorf("in flight %d max %d, want 4 %d", s.InFlight, s.MaxInFlight, 4+workers)
	}
}

func TestHotPathDoesNotAllocate(t *testing.T) {
	c := NewCounters()
	for _, tc := range []struct {
		name string
		f    func()
	}{
		{"Start+Done", func() { c.Done(OpRead, 4096, c.Start(OpRead), ErrNone) }},
		{"Done error", func() { c.Done(OpWrite, 4096, c.Start(OpWrite), ErrTransport) }},
		{"Now", func() { _ = Now() }},
		{"AddInlineRead", c.AddInlineRead},
		{"AddInlineWrite", c.AddInlineWrite},
		{"AddStallSQFull", c.AddStallSQFull},
		{"AddStallNoSlot", c.AddStallNoSlot},
		{"AddCQWait", c.AddCQWait},
		{"AddReconnect", c.AddReconnect},
		{"AddError", func() { c.AddError(ErrInvalid) }},
		{"ObservePolled", func() { c.ObservePolled(17) }},
	} {
		if n := testing.AllocsPerRun(1000, tc.f); n != 0 {
			t.Errorf("%s: %v allocations per run, want 0", tc.name, n)
		}
	}
}

func TestSnapshotJSON(t *testing.T) {
	var c Counters
	c.Done(OpRead, 4096, c.Start(OpRead), ErrNone)
	c.Done(OpWrite, 4096, c.Start(OpWrite), ErrIO)
	c.AddError(ErrInvalid)
	s := c.Snapshot()
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`"requests_started":2`, `"max_in_flight":1`, `"op":"read"`, `"op":"write_zeroes"`,
		`"errors_by_kind":{"io":1}`, `"other_errors":{"invalid":1}`, `"le_ns":1000`, `"p99_ns":`,
		`"stalls_sq_full":0`, `"max_cq_polled":0`,
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("JSON lacks %s:\n%s", want, b)
		}
	}
	var back Snapshot
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, s) {
		t.Errorf("JSON round trip\n got %+v\nwant %+v", back, s)
	}
}

func BenchmarkStartDone(b *testing.B) {
	var c Counters
	b.ReportAllocs()
	for b.Loop() {
		c.Done(OpRead, 4096, c.Start(OpRead), ErrNone)
	}
}

func BenchmarkStartDoneParallel(b *testing.B) {
	var c Counters
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			c.Done(OpWrite, 4096, c.Start(OpWrite), ErrNone)
		}
	})
}
