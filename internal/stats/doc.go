// Package stats counts what rbd's data paths do and exports it: per-device
// counters on the initiator (rbdi), per-export and per-session counters on the
// target (rbdt), a Prometheus collector over their snapshots, and the text
// table that rbdctl -s prints.
//
// # Counters
//
// A Counters holds, for one device, export or session: requests started and
// completed, requests in flight and the most seen at once, per operation (read,
// write, flush, trim, write_zeroes) the completed operations, the bytes they
// moved, their errors by kind and a fixed-bucket latency histogram, and the
// fields of the 2015 ancestor: inline ("immediate") reads and writes, stalls on
// a full send queue or on no free request slot, completion-channel waits, the
// most completions polled at once, and reconnects. Every method that the data
// path calls (Start, Done, the Add methods, ObservePolled) is a handful of
// atomic operations: no locks, no allocation, safe from any number of
// goroutines. The usual request looks like
//
//	start := c.Start(stats.OpRead)
//	// ... post, wait for the completion ...
//	c.Done(stats.OpRead, n, start, stats.ErrNone) // or the error's kind
//
// Latency is measured from Start's Stamp (a monotonic-clock reading) to Done
// and counted in 22 fixed buckets, 1-2-5 steps from 1µs to 10s, plus an
// overflow bucket, with the sum in nanoseconds.
//
// Counters are monotonic and there is no Reset: the ancestor's "write to clear"
// is replaced by rate() and increase() in Prometheus, and by taking the
// difference of two snapshots. The two maxima (in flight, completions polled at
// once) are high-water marks since the Counters was created.
//
// Snapshot copies a Counters into a plain, JSON-friendly struct (snake_case
// field names) that also carries each operation's mean and approximate p50
// and p99 latency; Snapshot.WriteText prints it for humans, using the 2015
// tool's names (reqs_started, immd_writes, stall_sq_full, max_cq_polled, ...)
// for the fields it had.
//
// # Prometheus
//
// A Collector is a registry of Counters by key (Add, Remove) that builds
// constant metrics from fresh snapshots at scrape time, so the series of a
// removed device disappear with it (Entries gives the same snapshots to a
// control socket). Every series carries the constant label
// role ("initiator" or "target") and a fixed set of identity labels per role:
// device, target and export on the initiator; export and session on the
// target. On the target, export-level series have session="" (which
// Prometheus treats as no session label) and session-level series carry the
// session's ordinal on its export ("1", "2", ...; never the session id, a
// credential), so aggregate with {session=""} or {session!=""}, never over
// both. No label ever carries an unbounded value such as an offset or an id.
//
// The metric names are
//
//	rbd_requests_started_total                counter
//	rbd_requests_completed_total              counter
//	rbd_ops_total{op}                         counter
//	rbd_bytes_total{op}                       counter (read, write, trim, write_zeroes)
//	rbd_errors_total{op,kind}                 counter (op="none": not tied to a request)
//	rbd_inflight_requests                     gauge
//	rbd_inflight_requests_max                 gauge
//	rbd_request_duration_seconds{op}          histogram
//	rbd_inline_ops_total{op}                  counter (read, write)
//	rbd_fua_writes_total                      counter
//	rbd_stalls_total{reason}                  counter (sq_full, no_slot)
//	rbd_cq_waits_total                        counter
//	rbd_cq_polled_max                         gauge
//	rbd_reconnects_total                      counter
//	rbd_resent_total                          counter
//	rbd_nbd_sockets_replaced_total            counter
//	rbd_kernel_resent_writes_total            counter
//	rbd_device_info{<info labels>}            gauge, always 1
//	rbd_device_size_bytes                     gauge
//	rbd_device_state{state}                   gauge, 1 for the current state
//	rbd_build_info{version,goversion}         gauge, always 1
//
// docs/metrics.md describes each for operators, with the daemons' info
// labels (InitiatorInfoLabels, TargetInfoLabels) and states.
//
// NewRegistry puts a Collector on a private registry together with the Go and
// process collectors, Handler serves a registry with promhttp (OpenMetrics
// negotiated), and ServeListener runs an HTTP server for /metrics until its
// context ends.
package stats
