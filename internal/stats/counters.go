package stats

import (
	"sync/atomic"
	"time"
)

// Stamp is a point in time on the monotonic clock, in nanoseconds since an
// arbitrary process-wide origin. It is what Start returns and Done takes: eight
// bytes with no pointer, cheap to keep in a request slot.
type Stamp int64

// epoch is the origin of Stamps; time.Since on it reads the monotonic clock.
var epoch = time.Now()

// Now returns the current Stamp. It does not allocate and is safe for
// concurrent use.
func Now() Stamp { return Stamp(time.Since(epoch)) }

// Elapsed returns the time since s (zero if s is in the future).
func (s Stamp) Elapsed() time.Duration {
	d := time.Duration(Now() - s)
	if d < 0 {
		return 0
	}
	return d
}

// NumLatencyBuckets is the number of finite latency-histogram buckets; a
// further bucket counts what exceeds the last bound.
const NumLatencyBuckets = 22

// latencyBounds are the buckets' inclusive upper bounds in nanoseconds: 1-2-5
// steps from 1µs (an RDMA round trip or a page-cache hit on hardware) to 10s.
var latencyBounds = [NumLatencyBuckets]int64{
	1e3, 2e3, 5e3,
	10e3, 20e3, 50e3,
	100e3, 200e3, 500e3,
	1e6, 2e6, 5e6,
	10e6, 20e6, 50e6,
	100e6, 200e6, 500e6,
	1e9, 2e9, 5e9,
	10e9,
}

// LatencyBounds returns the inclusive upper bounds of the latency histogram's
// finite buckets, ascending: 1µs, 2µs, 5µs, 10µs, ... 5s, 10s. The slice is
// a copy.
func LatencyBounds() []time.Duration {
	b := make([]time.Duration, NumLatencyBuckets)
	for i, ns := range latencyBounds {
		b[i] = time.Duration(ns)
	}
	return b
}

// bucketIndex returns the bucket of a latency of ns nanoseconds: the first
// whose bound is at least ns, or NumLatencyBuckets for the overflow bucket.
func bucketIndex(ns int64) int {
	lo, hi := 0, NumLatencyBuckets
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if ns <= latencyBounds[m] {
			hi = m
		} else {
			lo = m + 1
		}
	}
	return lo
}

// cacheLine is the padding unit that keeps groups of fields written by
// different goroutines off each other's cache lines. Pads are a whole line
// because a Counters is only 8-byte aligned.
const cacheLine = 64

type pad [cacheLine]byte

// opCounters are one op's counters. They are written together by Done.
type opCounters struct {
	ops     atomic.Uint64
	bytes   atomic.Uint64
	sumNs   atomic.Uint64
	buckets [NumLatencyBuckets + 1]atomic.Uint64 // not cumulative; last is overflow
	errs    [NumErrKinds]atomic.Uint64           // [ErrNone] unused
	_       pad
}

// Counters are the statistics of one device (initiator), export or session
// (target). The zero value is ready to use; a Counters must not be copied
// after first use. All methods are safe for concurrent use; those the data
// path calls (Start, Done, Add*, ObservePolled) take no lock and do not
// allocate. Counters only ever grow, except the in-flight gauge: there is no
// Reset (see the package documentation).
type Counters struct {
	_ pad
	// Written by every Start and Done.
	started     atomic.Uint64
	completed   atomic.Uint64
	inflight    atomic.Int64
	maxInflight atomic.Int64
	_           pad
	op          [NumOps]opCounters
	// Written by the completion poller.
	cqWaits   atomic.Uint64
	maxPolled atomic.Uint64
	_         pad
	// Written on the submission path, less often than per request.
	inlineReads  atomic.Uint64
	inlineWrites atomic.Uint64
	fuaWrites    atomic.Uint64
	stallSQFull  atomic.Uint64
	stallNoSlot  atomic.Uint64
	reconnects   atomic.Uint64
	resent       atomic.Uint64
	sockReplaced atomic.Uint64
	kernResent   atomic.Uint64
	errs         [NumErrKinds]atomic.Uint64 // not tied to a request; [ErrNone] unused
	_            pad
}

// NewCounters returns zeroed Counters; new(Counters) does the same.
func NewCounters() *Counters { return new(Counters) }

// Start records the start of a request of type op: it counts the request as
// started and in flight, raises the in-flight maximum if needed and returns
// the Stamp to pass to Done. The started and in-flight counts are not per op;
// op keeps Start and Done symmetrical at the call site. Start is lock-free and
// does not allocate.
func (c *Counters) Start(op Op) Stamp {
	c.started.Add(1)
	n := c.inflight.Add(1)
	for m := c.maxInflight.Load(); n > m; m = c.maxInflight.Load() {
		if c.maxInflight.CompareAndSwap(m, n) {
			break
		}
	}
	return Now()
}

// Done records the completion of a request that Start counted: kind is
// ErrNone for success or the failure's kind. Every completion counts towards
// op's operations and latency histogram (latency is measured from start,
// which may also come from Start on another Counters, e.g. a session's and its
// export's); bytes (the length read, written, trimmed or zeroed) count only on
// success; a failure counts as an error of op and kind. An op of NumOps or
// above counts as an ErrInvalid error not tied to an op, an unknown kind as
// ErrIO. Done is lock-free and does not allocate.
func (c *Counters) Done(op Op, bytes int, start Stamp, kind ErrKind) {
	c.record(op, bytes, int64(Now()-start), kind)
}

// record is Done with the latency d in nanoseconds.
func (c *Counters) record(op Op, bytes int, d int64, kind ErrKind) {
	if d < 0 {
		d = 0
	}
	if op < NumOps {
		o := &c.op[op]
		o.ops.Add(1)
		if kind == ErrNone {
			if bytes > 0 {
				o.bytes.Add(uint64(bytes))
			}
		} else {
			if kind >= NumErrKinds {
				kind = ErrIO
			}
			o.errs[kind].Add(1)
		}
		o.buckets[bucketIndex(d)].Add(1)
		o.sumNs.Add(uint64(d))
	} else {
		c.errs[ErrInvalid].Add(1)
	}
	c.completed.Add(1)
	c.inflight.Add(-1)
}

// AddInlineRead counts a read whose data travelled inline in the reply
// message instead of by RDMA WRITE (the ancestor's immd_reads). It is
// lock-free and does not allocate.
func (c *Counters) AddInlineRead() { c.inlineReads.Add(1) }

// AddInlineWrite counts a write whose data travelled inline in the request
// message instead of by RDMA READ (the ancestor's immd_writes). It is
// lock-free and does not allocate.
func (c *Counters) AddInlineWrite() { c.inlineWrites.Add(1) }

// AddFUAWrite counts a write with forced unit access (on stable storage
// before it completes).
func (c *Counters) AddFUAWrite() { c.fuaWrites.Add(1) }

// AddStallSQFull counts a submission that had to wait because the send queue
// was full (the ancestor's stall_sq_full). It is lock-free and does not
// allocate.
func (c *Counters) AddStallSQFull() { c.stallSQFull.Add(1) }

// AddStallNoSlot counts a submission that had to wait for a free request slot
// (the ancestor's stall_no_slot). It is lock-free and does not allocate.
func (c *Counters) AddStallNoSlot() { c.stallNoSlot.Add(1) }

// AddCQWait counts a time the completion poller found nothing and slept on the
// completion channel (the ancestor's cq_waits). It is lock-free and does not
// allocate.
func (c *Counters) AddCQWait() { c.cqWaits.Add(1) }

// ObservePolled records that one poll returned n completions, keeping the
// largest n seen (the ancestor's max_cq_polled). It is lock-free and does not
// allocate.
func (c *Counters) ObservePolled(n int) {
	if n <= 0 {
		return
	}
	v := uint64(n)
	for m := c.maxPolled.Load(); v > m; m = c.maxPolled.Load() {
		if c.maxPolled.CompareAndSwap(m, v) {
			break
		}
	}
}

// AddReconnect counts a re-established connection. It is lock-free and does
// not allocate.
func (c *Counters) AddReconnect() { c.reconnects.Add(1) }

// AddResent counts commands sent again on a new connection after the one
// they went out on died. It is lock-free and does not allocate.
func (c *Counters) AddResent(n int) { c.resent.Add(uint64(n)) }

// AddSocketReplaced counts a kernel NBD socket that the kernel dropped and
// rbdi replaced. It is lock-free and does not allocate.
func (c *Counters) AddSocketReplaced() { c.sockReplaced.Add(1) }

// AddResentByKernel counts a write the kernel sent again while rbdi still
// held its first copy (withdrawn or waited for first). It is lock-free and
// does not allocate.
func (c *Counters) AddResentByKernel() { c.kernResent.Add(1) }

// AddError counts an error not tied to a request, such as a protocol violation
// (ErrInvalid) or a lost connection (ErrTransport); request failures go
// through Done. ErrNone is ignored and an unknown kind counts as ErrIO. It is
// lock-free and does not allocate.
func (c *Counters) AddError(kind ErrKind) {
	if kind == ErrNone {
		return
	}
	if kind >= NumErrKinds {
		kind = ErrIO
	}
	c.errs[kind].Add(1)
}
