# rbd: userspace RDMA block initiator/target. `make help` lists the targets.
GO      ?= go
# Go from go.dev/dl lives in /usr/local/go/bin, which root's PATH often lacks;
# the scripts (test/vm/e2e.sh) run go too, hence PATH rather than GO.
ifeq ($(shell command -v $(GO) 2>/dev/null),)
export PATH := $(PATH):/usr/local/go/bin
endif
PREFIX  ?= /usr/local
DESTDIR ?=
BINS    := rbdt rbdi rbdctl
# --version and rbd_build_info (internal/version): git describe when this is a
# git checkout, else the VCS information go build records, else "unknown".
VERSION ?= $(shell git describe --always --dirty 2>/dev/null)
LDFLAGS := $(if $(VERSION),-X rbd/internal/version.Version=$(VERSION))
export CGO_ENABLED := 1

# `make install` layout (rbdt(8), rbdi(8), rbdctl(8) describe it). All three
# programs are for root (the control sockets are root-only): sbin, section 8.
SBINDIR ?= $(PREFIX)/sbin
MANDIR  ?= $(PREFIX)/share/man
DOCDIR  ?= $(PREFIX)/share/doc/rbd
# The daemons' configuration, named in the units: /etc/rbd whatever PREFIX.
CONFDIR ?= /etc/rbd
# systemd reads system units from /usr/local/lib/systemd/system ("installed by
# the administrator") and /usr/lib/systemd/system, but from no other
# PREFIX/lib: with any other PREFIX the units go to /etc/systemd/system.
UNITDIR ?= $(if $(filter /usr /usr/local,$(PREFIX)),$(PREFIX)/lib/systemd/system,/etc/systemd/system)
INSTALL ?= install

.PHONY: all build deps unit e2e test demo bench vm clean help install uninstall

all: build

build: ## build rbdt, rbdi and rbdctl into bin/
	@mkdir -p bin
	$(if $(wildcard cmd/*),$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/ $(addprefix ./,$(wildcard cmd/*)))

deps: ## install the Debian packages build, tests, demo and benchmarks need (idempotent)
	@scripts/deps.sh

unit: ## host tests (RDMA and kernel-NBD tests skip here; they run in e2e)
	$(GO) vet ./...
	$(GO) test -count=1 ./...

vm: ## fetch the guest kernel and build siw/rtrs/rnbd and the initramfs (cached)
	test/vm/build.sh

e2e: build vm ## the guest suite, over soft-RoCE and soft-iWARP
	test/vm/e2e.sh

# test and demo are the README's two commands: each installs what it needs
# first (scripts/deps.sh says nothing when all is there), so that they are the
# whole set-up of a fresh machine. The rest of the work runs in a sub-make,
# after the packages are there, even under make -j.
test: ## install what is missing (deps), then unit + e2e: the README's test command
	@scripts/deps.sh
	@$(MAKE) --no-print-directory unit e2e

demo: ## install what is missing (deps), then the seed's scenario end to end (in the guest when this kernel lacks RDMA/NBD)
	@scripts/deps.sh
	@scripts/demo.sh

bench: build vm ## benchmarks in the guest, results into bench/results/
	bench/run.sh

install: build ## install programs, systemd units, man pages, configs (PREFIX=/usr/local, DESTDIR)
	$(INSTALL) -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(UNITDIR) $(DESTDIR)$(MANDIR)/man8 \
		$(DESTDIR)$(DOCDIR)/examples $(DESTDIR)$(CONFDIR)
	$(INSTALL) -m 0755 $(addprefix bin/,$(BINS)) $(DESTDIR)$(SBINDIR)/
	for u in rbdt rbdi; do \
		sed -e 's|@SBINDIR@|$(SBINDIR)|g' -e 's|@CONFDIR@|$(CONFDIR)|g' packaging/systemd/$$u.service \
			>$(DESTDIR)$(UNITDIR)/$$u.service.tmp && \
		chmod 0644 $(DESTDIR)$(UNITDIR)/$$u.service.tmp && \
		mv -f $(DESTDIR)$(UNITDIR)/$$u.service.tmp $(DESTDIR)$(UNITDIR)/$$u.service || exit 1; \
	done
	$(INSTALL) -m 0644 docs/man/rbdt.8 docs/man/rbdi.8 docs/man/rbdctl.8 $(DESTDIR)$(MANDIR)/man8/
	$(INSTALL) -m 0644 packaging/etc/rbdt.toml packaging/etc/rbdi.toml $(DESTDIR)$(DOCDIR)/examples/
	@# the configuration is the administrator's: installed once, never overwritten
	@for c in rbdt rbdi; do \
		if [ -e $(DESTDIR)$(CONFDIR)/$$c.toml ]; then \
			echo "kept $(DESTDIR)$(CONFDIR)/$$c.toml (the example is $(DESTDIR)$(DOCDIR)/examples/$$c.toml)"; \
		else \
			echo "$(INSTALL) -m 0644 packaging/etc/$$c.toml $(DESTDIR)$(CONFDIR)/$$c.toml"; \
			$(INSTALL) -m 0644 packaging/etc/$$c.toml $(DESTDIR)$(CONFDIR)/$$c.toml || exit 1; \
		fi; \
	done
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then \
		echo "systemctl daemon-reload"; systemctl daemon-reload; fi

uninstall: ## remove what install installed (configurations only if unchanged)
	rm -f $(addprefix $(DESTDIR)$(SBINDIR)/,$(BINS))
	rm -f $(DESTDIR)$(UNITDIR)/rbdt.service $(DESTDIR)$(UNITDIR)/rbdi.service
	rm -f $(DESTDIR)$(MANDIR)/man8/rbdt.8 $(DESTDIR)$(MANDIR)/man8/rbdi.8 $(DESTDIR)$(MANDIR)/man8/rbdctl.8
	@for c in rbdt rbdi; do \
		if cmp -s $(DESTDIR)$(CONFDIR)/$$c.toml $(DESTDIR)$(DOCDIR)/examples/$$c.toml; then \
			echo "rm -f $(DESTDIR)$(CONFDIR)/$$c.toml"; rm -f $(DESTDIR)$(CONFDIR)/$$c.toml; \
		elif [ -e $(DESTDIR)$(CONFDIR)/$$c.toml ]; then \
			echo "kept $(DESTDIR)$(CONFDIR)/$$c.toml (changed)"; \
		fi; \
	done
	rm -f $(DESTDIR)$(DOCDIR)/examples/rbdt.toml $(DESTDIR)$(DOCDIR)/examples/rbdi.toml
	@rmdir $(DESTDIR)$(DOCDIR)/examples $(DESTDIR)$(DOCDIR) $(DESTDIR)$(CONFDIR) 2>/dev/null || true
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then \
		echo "systemctl daemon-reload"; systemctl daemon-reload; fi

clean:
	rm -rf bin

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'
