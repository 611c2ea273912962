// Package wire is the codec of the rbd protocol (docs/protocol.md): the private
// data of rdma_cm connect, accept and reject, and the fixed 32-byte request and
// reply headers and the OPEN payloads that travel as SEND/RECV messages.
//
// Every decoder checks lengths, magic numbers, reserved fields and value ranges
// and returns an error that says what was wrong; none panics on any input
// (each has a native fuzz target). Encoders write into a caller-supplied
// buffer and do not allocate. All integers are little-endian.
package wire
