// Package daemon holds what rbdt and rbdi share as services: systemd
// readiness and watchdog notification (sd_notify), the root-only control
// socket (HTTP with JSON on a Unix socket, which rbdctl talks to; Go's
// profiles under /debug/pprof/ beside it), the logger set-up, and the Go
// runtime's tuning for the data path (TuneRuntime: sysmon kept out of its
// deep sleep).
package daemon
