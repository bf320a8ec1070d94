#!/bin/sh
# Installs libmptcp: the shared library (with its soname symlinks), the
# static library, include/mptcp.h and the pkg-config files mptcp.pc and
# mptcp-static.pc.
#
#   mptcp-ffi/install.sh [--from DIR] [--strip] PREFIX
#
# Builds `cargo build --release -p mptcp-ffi` first, unless --from names a
# directory that already holds libmptcp.so and libmptcp.a (a cargo target
# profile directory such as target/release). Honours DESTDIR (staged
# installs: files go to $DESTDIR$PREFIX, the .pc files name PREFIX) and
# LIBDIR (default PREFIX/lib). --strip removes the debug information the
# release profile keeps (the shared library shrinks from ~16 MB to ~1.3 MB).
# Then:
#
#   PKG_CONFIG_PATH=PREFIX/lib/pkgconfig pkg-config --cflags --libs mptcp
set -eu

usage() {
    echo "usage: $0 [--from DIR] [--strip] PREFIX" >&2
    exit 2
}

from=""
strip_debug=""
while [ $# -gt 0 ]; do
    case "$1" in
        --from) [ $# -ge 2 ] || usage; from="$2"; shift 2 ;;
        --strip) strip_debug=1; shift ;;
        -h|--help) usage ;;
        -*) echo "$0: unknown option $1" >&2; usage ;;
        *) break ;;
    esac
done
[ $# -eq 1 ] || usage
prefix="$1"
case "$prefix" in
    /*) ;;
    *) echo "$0: PREFIX must be an absolute path (pkg-config files record it), got $prefix" >&2; exit 2 ;;
esac

here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
if [ -z "$from" ]; then
    (cd "$root" && cargo build --release -p mptcp-ffi)
    from="${CARGO_TARGET_DIR:-$root/target}/release"
fi
for lib in libmptcp.so libmptcp.a; do
    if [ ! -f "$from/$lib" ]; then
        echo "$0: $from/$lib not found: build with \`cargo build --release -p mptcp-ffi\` or pass --from DIR" >&2
        exit 1
    fi
done

version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -n 1)"
major="${version%%.*}"
libdir="${LIBDIR:-$prefix/lib}"
includedir="$prefix/include"
# What Rust's standard library needs from the system when linked statically
# (`rustc --print native-static-libs` on linux-gnu).
native_libs="-lgcc_s -lutil -lrt -lpthread -lm -ldl -lc"
dest="${DESTDIR:-}"

install -d "$dest$libdir/pkgconfig" "$dest$includedir"
install -m 0755 "$from/libmptcp.so" "$dest$libdir/libmptcp.so.$version"
ln -sf "libmptcp.so.$version" "$dest$libdir/libmptcp.so.$major"
ln -sf "libmptcp.so.$major" "$dest$libdir/libmptcp.so"
install -m 0644 "$from/libmptcp.a" "$dest$libdir/libmptcp.a"
if [ -n "$strip_debug" ]; then
    strip --strip-debug "$dest$libdir/libmptcp.so.$version" "$dest$libdir/libmptcp.a"
fi
install -m 0644 "$root/include/mptcp.h" "$dest$includedir/mptcp.h"
for pc in mptcp mptcp-static; do
    sed -e "s|@PREFIX@|$prefix|g" -e "s|@LIBDIR@|$libdir|g" -e "s|@INCLUDEDIR@|$includedir|g" \
        -e "s|@VERSION@|$version|g" -e "s|@NATIVE_LIBS@|$native_libs|g" \
        "$here/$pc.pc.in" > "$dest$libdir/pkgconfig/$pc.pc"
done
echo "installed libmptcp $version into $dest$prefix (PKG_CONFIG_PATH=$libdir/pkgconfig)"
