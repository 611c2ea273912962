# rbd: userspace RDMA block initiator/target. `make help` lists the targets.
GO      ?= go
PREFIX  ?= /usr/local
DESTDIR ?=
BINS    := rbdt rbdi rbdctl
export CGO_ENABLED := 1

.PHONY: all build deps unit e2e test demo bench vm clean help

all: build

build: ## build rbdt, rbdi and rbdctl into bin/
	@mkdir -p bin
	$(if $(wildcard cmd/*),$(GO) build -trimpath -o bin/ $(addprefix ./,$(wildcard cmd/*)))

deps: ## install the Debian packages build, tests, demo and benchmarks need (idempotent)
	@scripts/deps.sh

unit: ## host tests (RDMA and kernel-NBD tests skip here; they run in e2e)
	$(GO) vet ./...
	$(GO) test -count=1 ./...

vm: ## fetch the guest kernel and build siw/rtrs/rnbd and the initramfs (cached)
	test/vm/build.sh

e2e: build vm ## the guest suite, over soft-RoCE and soft-iWARP
	test/vm/e2e.sh

test: unit e2e ## unit + e2e: the README's test command

demo: ## the seed's scenario end to end
	@echo "make demo: not yet: needs rbdt, rbdi and rbdctl (issues 4 and 5)"; exit 1

bench: ## benchmarks into bench/results/
	@echo "make bench: not yet: needs the verbs benchmark (issue 3) and the rbd data path (issues 4, 5)"; exit 1

clean:
	rm -rf bin

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'
