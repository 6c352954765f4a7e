#!/bin/sh
# setup.sh: set up a fresh Debian 12 machine (as root) and build emoe, then either
# run the end-to-end demo or the test suite.  From a clean clone:
#     sh build/setup.sh demo     # install what is missing, build, run the demo
#     sh build/setup.sh check    # install what is missing, build, run make check
# The build goes to _build/ (out of tree); nothing is installed system-wide.
set -eu
cd "$(dirname "$0")/.."
top=$(pwd)
what=${1:-check}

# Debian packages: compiler and autotools, the four libraries, Check for the tests.
packages="gcc make autoconf automake libtool pkg-config libopenblas-dev libarchive-dev
libjpeg62-turbo-dev zlib1g-dev check"
missing=""
for p in $packages; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed' ||
        missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "setup: installing:$missing"
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: need root to install packages (or install them first):$missing" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

jobs=$(nproc 2>/dev/null || echo 2)
[ -x configure ] && [ configure -nt configure.ac ] && [ Makefile.in -nt Makefile.am ] ||
    autoreconf --install --force >/dev/null 2>&1 || autoreconf --install --force
mkdir -p _build
cd _build
[ -f Makefile ] || ../configure ${EMOE_CONFIGURE_FLAGS:-}
make -j"$jobs" >/dev/null

case $what in
demo)
    PATH="$top/_build/tools:$PATH" sh "$top/share/emoe/demo.sh" "$top/_build/demo"
    ;;
check)
    make -j"$jobs" check
    ;;
*)
    echo "usage: sh build/setup.sh demo|check" >&2
    exit 2
    ;;
esac
