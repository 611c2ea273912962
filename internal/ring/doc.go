// Package ring is the RC message ring that both daemons use for one
// connection: the receive contexts (a message header and a page-aligned data
// area each, in one registered buffer, so that inline data reaches O_DIRECT
// I/O without a copy), the send headers of the connection's command or
// reply contexts, batched re-posting of receives, posting of sends from any
// goroutine or deferred to the end of a poll batch, and the completion loop:
// poll in batches, flush what the batch produced in one post each, and sleep
// on the completion channel only when the CQ is empty — armed for solicited
// messages only where the peer marks its messages solicited, so that send
// completions never wake a thread. The loop sleeps on the netpoller
// (verbs.CQ.WaitEvent): a thread blocked in poll(2) would hold its P, and
// the Go runtime answers that with sysmon polling and P hand-offs, several
// thread wake-ups per I/O; with the daemons' sysmon kept awake
// (internal/daemon.TuneRuntime) the netpoller wait measured 1.3-1.6x the
// IOPS at queue depth 1 with a third of the context switches, in one guest
// boot (bench/results/ab-sysmon-20261202-034550.log). RBD_CQ_WAIT=thread in the
// environment makes the loop sleep in its own thread
// (verbs.CQ.WaitEventThread) instead, for comparisons.
//
// The ring owns no protocol: the initiator's queues (internal/client) and the
// target's connections (internal/target) decode the messages and decide what
// to send. It lives as long as its endpoint (queue pair, CQ, protection
// domain); the request state above it (slots, pending commands) does not.
package ring
