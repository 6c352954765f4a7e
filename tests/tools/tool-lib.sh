# tool-lib.sh: a small harness for the shell tests of the emoe-* tools.
# Sourced by each tests/tools/*.sh.  Environment (set by make check):
#   EMOE_TOOLS        folder of the built tools
#   EMOE_TEST_FILES   folder of the committed fixtures
#   EMOE_SHARED_DATA  folder of the real datasets (may be absent)
set -u
TOOLS=${EMOE_TOOLS:?EMOE_TOOLS is not set (run through make check)}
FIXTURES=${EMOE_TEST_FILES:-}
T=$(mktemp -d "${TMPDIR:-/tmp}/emoe-sh-XXXXXX")
trap 'rm -rf "$T"' EXIT
failures=0
count=0

# pass/fail reporting: every check is named; the script exits 1 if any failed.
ok() { count=$((count + 1)); echo "ok $count - $1"; }
not_ok() { count=$((count + 1)); failures=$((failures + 1)); echo "not ok $count - $1"; }
check() { # check NAME COMMAND...: passes when COMMAND succeeds
    name=$1; shift
    if "$@"; then ok "$name"; else not_ok "$name"; fi
}
# run TOOL ARGS...: runs a tool, saving stdout, stderr and status in $T/out, $T/err, $rc
run() {
    rc=0
    "$TOOLS/$1" "${@:2}" >"$T/out" 2>"$T/err" </dev/null || rc=$?
}
# run_stdin FILE TOOL ARGS...: like run, with FILE on standard input
run_stdin() {
    rc=0
    in=$1; shift
    "$TOOLS/$1" "${@:2}" <"$in" >"$T/out" 2>"$T/err" || rc=$?
}
status_is() { [ "$rc" -eq "$1" ] || { echo "# status $rc, want $1; stderr:"; sed 's/^/#   /' "$T/err"; return 1; }; }
stderr_has() { grep -q -- "$1" "$T/err" || { echo "# stderr lacks '$1':"; sed 's/^/#   /' "$T/err"; return 1; }; }
stdout_has() { grep -q -- "$1" "$T/out" || { echo "# stdout lacks '$1':"; sed 's/^/#   /' "$T/out"; return 1; }; }
stdout_empty() { [ ! -s "$T/out" ] || { echo "# stdout not empty:"; head -5 "$T/out" | sed 's/^/#   /'; return 1; }; }
stderr_empty() { [ ! -s "$T/err" ] || { echo "# stderr not empty:"; head -5 "$T/err" | sed 's/^/#   /'; return 1; }; }
no_file() { [ ! -e "$1" ] || { echo "# $1 exists"; return 1; }; }
# the folder holds nothing but the listed names (no temporary left behind)
only_files() {
    dir=$1; shift
    extra=$(cd "$dir" && for f in * .[!.]*; do [ -e "$f" ] || continue; keep=0
        for w in "$@"; do [ "$f" = "$w" ] && keep=1; done; [ $keep = 1 ] || echo "$f"; done)
    [ -z "$extra" ] || { echo "# unexpected files in $dir: $extra"; return 1; }
}
skip_all() { echo "SKIP: $1"; exit 77; }
done_testing() {
    echo "# $count checks, $failures failed"
    [ "$failures" -eq 0 ]
}
