# cryptfs: `make install` puts `cryptfs` on PATH, `make demo` runs the device end to end,
# `make test` runs the test suite, `make bench` runs the fio matrix against qemu-storage-daemon
# and a no-crypto ceiling, then the native core against `openssl speed` (about 12 minutes).
# Each installs what is missing first: Debian packages (as root, or with sudo) and a .venv.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
APT    := fuse3 libfuse3-dev pkg-config fio qemu-utils qemu-system-common cryptsetup-bin \
          libjson-c5 util-linux e2fsprogs gcc libssl-dev libgcrypt20-dev nbdkit nbdkit-plugin-python libnbd-bin
SUDO   := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
# where `make install` links the cryptfs command: /usr/local as root, ~/.local otherwise
PREFIX ?= $(shell [ "$$(id -u)" -eq 0 ] && echo /usr/local || echo $$HOME/.local)

.PHONY: deps system install uninstall demo test test-unit bench stress clean

deps: system $(VENV)/.installed

system:
	@missing=$$(for p in $(APT); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		$(SUDO) apt-get update -q && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

$(VENV)/.installed: pyproject.toml setup.py $(wildcard backends/*.c backends/*.h cryptfs/fuse/*.c)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test,bench]'
	@$(PY) -c 'from cryptfs.backends import native; print(native.UNAVAILABLE or "native core built")'
	touch $@

install: deps
	mkdir -p $(PREFIX)/bin
	ln -sf $(CURDIR)/$(VENV)/bin/cryptfs $(PREFIX)/bin/cryptfs
	@echo "cryptfs is $(PREFIX)/bin/cryptfs"

uninstall:
	rm -f $(PREFIX)/bin/cryptfs

demo: deps
	$(PY) examples/demo.py

# every lane, on two workers (a test file stays on one worker: some share module fixtures)
test: deps
	$(PY) -m pytest -q -n 2 --dist loadfile

# the unit lane: no FUSE, no external tools, nothing slow
test-unit: deps
	$(PY) -m pytest -q -m "not fuse and not oracle and not slow"

bench: deps
	$(PY) -m cryptfs bench peers
	$(PY) -m cryptfs bench core

stress: deps
	$(PY) -m cryptfs stress

clean:
	rm -rf $(VENV) .pytest_cache *.egg-info
