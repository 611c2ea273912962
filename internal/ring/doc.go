// Package ring is the RC message ring that both daemons use for one
// connection: the receive contexts (a message header and a page-aligned data
// area each, in one registered buffer, so that inline data reaches O_DIRECT
// I/O without a copy), the send headers of the connection's command or
// reply contexts, batched re-posting of receives, posting of sends from any
// goroutine or deferred to the end of a poll batch, and the completion loop:
// poll in batches, flush what the batch produced in one post each, and sleep
// on the completion channel only when the CQ is empty — armed for solicited
// messages only where the peer marks its messages solicited, so that send
// completions never wake a thread. The loop sleeps in its own thread (in
// poll(2), verbs.CQ.WaitEventThread) where the endpoint offers it, else on
// the netpoller: measured in one guest boot (bench/ab.sh), sleeping in the
// thread halved the context switches per I/O at queue depth 1 and raised
// IOPS at every depth. RBD_CQ_WAIT=netpoller in the environment turns it
// off, for such comparisons.
//
// The ring owns no protocol: the initiator's queues (internal/client) and the
// target's connections (internal/target) decode the messages and decide what
// to send. It lives as long as its endpoint (queue pair, CQ, protection
// domain); the request state above it (slots, pending commands) does not.
package ring
