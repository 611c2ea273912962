// Package version says which build of rbd a program is: the version the
// Makefile stamps in with -ldflags "-X rbd/internal/version.Version=..."
// (git describe --always --dirty), else the VCS revision go build records
// in the binary's build information, and the Go version it was built with.
// rbdt, rbdi and rbdctl print it for --version, and both daemons export it
// as the rbd_build_info metric.
package version
