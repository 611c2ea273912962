// Package packaging holds what installs rbd and runs it under systemd: the
// units (systemd/rbdt.service, systemd/rbdi.service, with @SBINDIR@ and
// @CONFDIR@ for `make install` to substitute) and the example
// configurations (etc/rbdt.toml, etc/rbdi.toml), the Prometheus alert rules
// (prometheus/rbd-alerts.yml, with their promtool unit tests and an example
// scrape configuration), the Grafana dashboard (grafana/rbd-dashboard.json)
// and the Debian package's maintainer scripts (deb/). It has no Go API: its
// tests check the example configurations against the real daemons,
// `make install` against what the installed units expect (with
// `systemd-analyze verify` on the installed tree), every metric, label and
// state that the rules and the dashboard name against what the daemons'
// collectors emit, the rules with promtool, and `make deb`'s package.
package packaging
