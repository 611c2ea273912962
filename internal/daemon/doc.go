// Package daemon holds what rbdt and rbdi share as services: systemd
// readiness and watchdog notification (sd_notify), the root-only control
// socket (HTTP with JSON on a Unix socket, which rbdctl talks to) and the
// logger set-up.
package daemon
