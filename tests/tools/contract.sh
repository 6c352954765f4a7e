#!/bin/bash
# contract.sh: the command-line contract every emoe-* tool keeps:
# --help to stdout with status 0 (and -h the same), --version naming the tool and the
# libraries, a bad option gives status 2 with "emoe-x: " on stderr and a hint,
# a bad -j value is a usage error, and the man page's SYNOPSIS matches --help.
. "${EMOE_SRCDIR:-.}/tests/tools/tool-lib.sh"

for tool in emoe-info emoe-prep emoe-train emoe-eval emoe-fewshot emoe-heatmap; do
    [ -x "$TOOLS/$tool" ] || continue
    run "$tool" --help
    check "$tool --help exits 0" status_is 0
    check "$tool --help prints usage to stdout" stdout_has "^Usage: $tool "
    check "$tool --help prints nothing on stderr" stderr_empty
    cp "$T/out" "$T/help"
    run "$tool" -h
    check "$tool -h is --help" cmp -s "$T/out" "$T/help"

    run "$tool" --version
    check "$tool --version exits 0" status_is 0
    check "$tool --version names the tool" stdout_has "^$tool (emoe) "
    check "$tool --version names the libraries" stdout_has "OpenBLAS.*libarchive.*libjpeg-turbo.*zlib"

    run "$tool" --no-such-option
    check "$tool: unknown option exits 2" status_is 2
    check "$tool: unknown option is reported as $tool:" stderr_has "^$tool: "
    check "$tool: unknown option gives a hint" stderr_has "Try '$tool --help'"
    check "$tool: unknown option prints nothing on stdout" stdout_empty

    run "$tool" -j abc x
    check "$tool -j abc exits 2" status_is 2
    check "$tool -j abc names the option" stderr_has "threads.*'abc' is not an integer"

    # doc-vs-help: the SYNOPSIS of the man page is the first usage line
    man="$EMOE_SRCDIR/man/$tool.1"
    if [ -f "$man" ]; then
        synopsis=$(sed -n '/^\.SH SYNOPSIS/,/^\.SH/p' "$man" | sed '1d;$d' |
            sed -e 's/^\.B //' -e 's/\\f[BIR]//g' -e 's/\\-/-/g' | tr '\n' ' ' |
            sed -e 's/  */ /g' -e 's/ *$//')
        usage=$(sed -n 's/^Usage: //p' "$T/help" | head -1)
        check "$tool: man SYNOPSIS matches --help ('$synopsis' vs '$usage')" \
            test "$synopsis" = "$usage"
    else
        not_ok "$tool has a man page man/$tool.1"
    fi
done

# OpenBLAS's load-time threads: without a thread count of the user's, a tool runs
# itself again with OPENBLAS_NUM_THREADS=1, so OpenBLAS starts no (spinning) threads.
# emoe-info reading a FIFO waits in read(); its environment and threads are then seen
# in /proc.  With a count of the user's, nothing is changed.
tool_waiting() { # tool_waiting ENV...: start emoe-info - on a FIFO; sets pid
    rm -f "$T/fifo"
    mkfifo "$T/fifo"
    env -u OPENBLAS_NUM_THREADS -u GOTO_NUM_THREADS -u OMP_NUM_THREADS "$@" \
        "$TOOLS/emoe-info" - <"$T/fifo" >/dev/null 2>&1 &
    pid=$!
    exec 9>"$T/fifo"
    for _ in $(seq 50); do # until it waits for input (state S, in read)
        [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" = S ] &&
            tr '\0' '\n' <"/proc/$pid/environ" | grep -q "^EMOE_BLAS_" && break
        sleep 0.1
    done
    sleep 0.3
}
if [ -d /proc/self/task ] && [ "$(nproc)" -gt 1 ] && command -v mkfifo >/dev/null; then
    tool_waiting
    tr '\0' '\n' <"/proc/$pid/environ" >"$T/environ"
    check "no OPENBLAS_NUM_THREADS: the tool runs again with 1" grep -q "^OPENBLAS_NUM_THREADS=1$" "$T/environ"
    check "no OPENBLAS_NUM_THREADS: one thread (OpenBLAS started none)" \
        test "$(ls "/proc/$pid/task" | wc -l)" = 1
    exec 9>&-
    wait "$pid"
    tool_waiting OPENBLAS_NUM_THREADS=2 EMOE_BLAS_TEST_MARK=1
    tr '\0' '\n' <"/proc/$pid/environ" >"$T/environ"
    check "OPENBLAS_NUM_THREADS=2 of the user's: left alone" grep -q "^OPENBLAS_NUM_THREADS=2$" "$T/environ"
    exec 9>&-
    wait "$pid"
else
    ok "OpenBLAS thread re-run # SKIP needs /proc, mkfifo and two CPUs"
fi
done_testing
