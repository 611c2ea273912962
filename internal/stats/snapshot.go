package stats

import "time"

// Snapshot is a copy of a Counters at one moment, as plain values with
// snake_case JSON names. Each field is read atomically but the fields are
// not read at the same instant, so under load they can disagree by the
// requests that were in progress while Snapshot ran; RequestsStarted is never
// below RequestsCompleted.
type Snapshot struct {
	RequestsStarted   uint64 `json:"requests_started"`
	RequestsCompleted uint64 `json:"requests_completed"`
	// InFlight is the number of requests started and not done.
	InFlight int64 `json:"in_flight"`
	// MaxInFlight is the most requests ever in flight at once (the
	// ancestor's max_outstanding_reqs).
	MaxInFlight int64 `json:"max_in_flight"`
	// Ops holds one entry per Op, indexed by Op.
	Ops          [NumOps]OpStats `json:"ops"`
	InlineReads  uint64          `json:"inline_reads"`
	InlineWrites uint64          `json:"inline_writes"`
	FUAWrites    uint64          `json:"fua_writes"`
	StallsSQFull uint64          `json:"stalls_sq_full"`
	StallsNoSlot uint64          `json:"stalls_no_slot"`
	CQWaits      uint64          `json:"cq_waits"`
	// MaxCQPolled is the most completions one poll returned.
	MaxCQPolled uint64 `json:"max_cq_polled"`
	Reconnects  uint64 `json:"reconnects"`
	Resent      uint64 `json:"resent"`
	// SocketsReplaced and KernelResent: see Counters.AddSocketReplaced and
	// AddResentByKernel (initiator only).
	SocketsReplaced uint64 `json:"sockets_replaced"`
	KernelResent    uint64 `json:"kernel_resent"`
	// OtherErrors counts, by kind, the errors not tied to a request
	// (AddError, and Done with an invalid op); only non-zero kinds appear.
	OtherErrors map[ErrKind]uint64 `json:"other_errors,omitempty"`
}

// OpStats are the statistics of one request type.
type OpStats struct {
	Op Op `json:"op"`
	// Ops counts the completed requests, successful or not.
	Ops uint64 `json:"ops"`
	// Bytes is the total length of the successful requests.
	Bytes uint64 `json:"bytes"`
	// Errors counts the failed requests; ErrorsByKind breaks them down (only
	// non-zero kinds appear).
	Errors       uint64             `json:"errors"`
	ErrorsByKind map[ErrKind]uint64 `json:"errors_by_kind,omitempty"`
	// Latency is the distribution of all completions' latencies.
	Latency Histogram `json:"latency"`
}

// Histogram is a latency distribution over the fixed buckets of
// LatencyBounds, with the mean and approximate quantiles derived from it.
type Histogram struct {
	// Count is the number of observations, including those above the last
	// bucket's bound.
	Count uint64        `json:"count"`
	Sum   time.Duration `json:"sum_ns"`
	// Buckets are cumulative, in ascending order of bound, as in Prometheus:
	// Buckets[i].Count observations took at most Buckets[i].UpperBound.
	Buckets []Bucket      `json:"buckets"`
	Mean    time.Duration `json:"mean_ns"`
	P50     time.Duration `json:"p50_ns"`
	P99     time.Duration `json:"p99_ns"`
}

// Bucket is one cumulative histogram bucket.
type Bucket struct {
	UpperBound time.Duration `json:"le_ns"`
	Count      uint64        `json:"count"`
}

// Snapshot returns the current values of c. It is safe to call concurrently
// with every other method; it allocates and is meant for scrapes and
// rbdctl, not the data path.
func (c *Counters) Snapshot() Snapshot {
	var s Snapshot
	// Completed before started: every request counted as completed has been
	// counted as started by then.
	s.RequestsCompleted = c.completed.Load()
	s.RequestsStarted = c.started.Load()
	s.InFlight = c.inflight.Load()
	s.MaxInFlight = c.maxInflight.Load()
	for op := range NumOps {
		o := &c.op[op]
		st := &s.Ops[op]
		st.Op = op
		st.Ops = o.ops.Load()
		st.Bytes = o.bytes.Load()
		for k := ErrNone + 1; k < NumErrKinds; k++ {
			if n := o.errs[k].Load(); n != 0 {
				if st.ErrorsByKind == nil {
					st.ErrorsByKind = make(map[ErrKind]uint64)
				}
				st.ErrorsByKind[k] = n
				st.Errors += n
			}
		}
		h := &st.Latency
		h.Buckets = make([]Bucket, NumLatencyBuckets)
		for i := range NumLatencyBuckets {
			h.Count += o.buckets[i].Load()
			h.Buckets[i] = Bucket{UpperBound: time.Duration(latencyBounds[i]), Count: h.Count}
		}
		h.Count += o.buckets[NumLatencyBuckets].Load()
		h.Sum = time.Duration(o.sumNs.Load())
		if h.Count > 0 {
			h.Mean = h.Sum / time.Duration(h.Count)
		}
		h.P50 = h.Quantile(0.50)
		h.P99 = h.Quantile(0.99)
	}
	s.InlineReads = c.inlineReads.Load()
	s.InlineWrites = c.inlineWrites.Load()
	s.FUAWrites = c.fuaWrites.Load()
	s.StallsSQFull = c.stallSQFull.Load()
	s.StallsNoSlot = c.stallNoSlot.Load()
	s.CQWaits = c.cqWaits.Load()
	s.MaxCQPolled = c.maxPolled.Load()
	s.Reconnects = c.reconnects.Load()
	s.Resent = c.resent.Load()
	s.SocketsReplaced = c.sockReplaced.Load()
	s.KernelResent = c.kernResent.Load()
	for k := ErrNone + 1; k < NumErrKinds; k++ {
		if n := c.errs[k].Load(); n != 0 {
			if s.OtherErrors == nil {
				s.OtherErrors = make(map[ErrKind]uint64)
			}
			s.OtherErrors[k] = n
		}
	}
	return s
}

// Quantile estimates the q-quantile (0 <= q <= 1) of the distribution the way
// Prometheus's histogram_quantile does: it finds the bucket holding the rank
// and interpolates linearly within it (from 0 for the first bucket). A rank
// beyond the last finite bucket yields that bucket's bound; an empty
// histogram yields 0.
func (h Histogram) Quantile(q float64) time.Duration {
	if h.Count == 0 || len(h.Buckets) == 0 {
		return 0
	}
	q = min(max(q, 0), 1)
	rank := q * float64(h.Count)
	var lower time.Duration
	var below uint64
	for _, b := range h.Buckets {
		if b.Count > below && float64(b.Count) >= rank {
			frac := (rank - float64(below)) / float64(b.Count-below)
			return lower + time.Duration(frac*float64(b.UpperBound-lower))
		}
		lower, below = b.UpperBound, b.Count
	}
	return h.Buckets[len(h.Buckets)-1].UpperBound
}

// TotalErrors returns the sum of all errors: those of every op and those not
// tied to a request.
func (s Snapshot) TotalErrors() uint64 {
	var n uint64
	for _, o := range s.Ops {
		n += o.Errors
	}
	for _, v := range s.OtherErrors {
		n += v
	}
	return n
}
