// Package transport is the seam between rbd's engines (internal/client,
// internal/target, through internal/ring) and the RDMA connection they run
// on: an Endpoint is one RC connection's queue pair, completion queue,
// protection domain and connection manager identifier, as the engines use
// them. RDMA (this package's Verbs) implements it over internal/verbs; the
// in-memory implementation in internal/transport/memt moves the same work
// requests between two processes' worth of registered buffers in one process,
// and can drop, delay and reorder, so that the engines get fast,
// deterministic host tests.
//
// The work requests, completions, memory regions, events and errors are
// internal/verbs' own types: an implementation reports a peer's reject as a
// *verbs.RejectedError, a failed connect as a *verbs.ConnectError, and an
// endpoint woken or closed under a waiter as verbs.ErrClosed, so that the
// engines' error handling is the same on every transport.
package transport
