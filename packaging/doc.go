// Package packaging holds what installs rbd and runs it under systemd: the
// units (systemd/rbdt.service, systemd/rbdi.service, with @SBINDIR@ and
// @CONFDIR@ for `make install` to substitute) and the example
// configurations (etc/rbdt.toml, etc/rbdi.toml). It has no Go API: its
// tests check the example configurations against the real daemons and
// `make install` against what the installed units expect (with
// `systemd-analyze verify` on the installed tree).
package packaging
