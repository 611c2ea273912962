#!/bin/bash
# mkdeb.sh (make deb): build rbd's binary Debian package with dpkg-deb alone
# (no debhelper, no debian/ directory):
#
#   * the tree is `make install DESTDIR=STAGE PREFIX=/usr`: /usr/sbin/rbdt,
#     rbdi, rbdctl; the units in /usr/lib/systemd/system; /etc/rbd/rbdt.toml
#     and rbdi.toml (conffiles: dpkg keeps the administrator's changes);
#     the man pages (gzipped); the bash, zsh and fish completions; the docs
#     and examples in /usr/share/doc/rbd (LICENSE also as copyright); the
#     alert rules and the dashboard in /usr/share/rbd;
#   * DEBIAN/control from packaging/deb/control.in, DEBIAN/conffiles, and
#     the maintainer scripts packaging/deb/postinst, prerm, postrm: systemd
#     daemon-reload on install, upgrade and removal; nothing is enabled,
#     started, stopped or restarted (see those scripts for why).
#
# Environment: DEBOUT, the directory for the .deb (default bin/);
# DEBVERSION, the package version (default 0~gitYYYYMMDD.HASH of HEAD, with
# +dirty for a changed tree); DEBMAINTAINER. It prints the .deb's path.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v dpkg-deb >/dev/null || { echo "mkdeb: dpkg-deb not found (Debian's dpkg package)" >&2; exit 1; }
out=${DEBOUT:-bin}
arch=$(dpkg --print-architecture)
if [ -z "${DEBVERSION:-}" ]; then
	if git rev-parse --git-dir >/dev/null 2>&1; then
		DEBVERSION=0~git$(git log -1 --format=%cd --date=format:%Y%m%d).$(git rev-parse --short=7 HEAD)
		git diff --quiet HEAD -- 2>/dev/null || DEBVERSION=$DEBVERSION+dirty
	else
		DEBVERSION=0~unknown
	fi
fi
# a Debian version starts with a digit and has only these characters
if ! [[ $DEBVERSION =~ ^[0-9][A-Za-z0-9.+~]*$ ]]; then
	echo "mkdeb: DEBVERSION $DEBVERSION is not a Debian version (digits first, then A-Za-z0-9.+~)" >&2
	exit 1
fi
maintainer=${DEBMAINTAINER:-rbd developers <rbd@localhost>}

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root=$stage/root
# the install tree; make's own variables must not leak in from a caller
env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL -u PREFIX -u DESTDIR -u SBINDIR -u MANDIR -u DOCDIR -u CONFDIR -u UNITDIR -u UDEVDIR -u DATADIR \
	make --no-print-directory install DESTDIR="$root" PREFIX=/usr >"$stage/install.log" 2>&1 ||
	{ cat "$stage/install.log" >&2; echo "mkdeb: make install failed" >&2; exit 1; }
gzip -9n "$root"/usr/share/man/man8/*.8
cp LICENSE "$root/usr/share/doc/rbd/copyright"
chmod 0644 "$root/usr/share/doc/rbd/copyright"

mkdir -p "$root/DEBIAN"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s|@VERSION@|$DEBVERSION|" -e "s|@ARCH@|$arch|" -e "s|@SIZE@|$size|" -e "s|@MAINTAINER@|$maintainer|" \
	packaging/deb/control.in >"$root/DEBIAN/control"
(cd "$root" && find etc -type f | sort | sed 's|^|/|') >"$root/DEBIAN/conffiles"
for s in postinst prerm postrm; do
	install -m 0755 packaging/deb/$s "$root/DEBIAN/$s"
done
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -print0 | sort -z | xargs -0 md5sum | sed 's| \./| |') >"$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/control" "$root/DEBIAN/conffiles" "$root/DEBIAN/md5sums"
# directories 0755 whatever the umask; the files keep make install's modes
find "$root" -type d -exec chmod 0755 {} +

mkdir -p "$out"
deb=$out/rbd_${DEBVERSION}_${arch}.deb
dpkg-deb --root-owner-group -Zgzip -z6 --build "$root" "$deb" >/dev/null
echo "$deb"
