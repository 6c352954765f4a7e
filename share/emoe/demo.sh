#!/bin/sh
# demo.sh: the end-to-end demo, run by `sh build/setup.sh demo` with the built tools
# on PATH.  Usage: demo.sh OUTDIR
set -eu
out=${1:-emoe-demo}
mkdir -p "$out"
cd "$out"
say() { printf '\n== %s\n' "$*"; }

say "emoe-info --version"
emoe-info --version
