#!/bin/bash
# contract.sh: the command-line contract every emoe-* tool keeps:
# --help to stdout with status 0 (and -h the same), --version naming the tool and the
# libraries, a bad option gives status 2 with "emoe-x: " on stderr and a hint,
# a bad -j value is a usage error, and the man page's SYNOPSIS matches --help; and a tool
# runs without OpenBLAS's own worker threads.
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

# OpenBLAS's pthread build starts a worker per further CPU when it loads; emoe never
# uses them (it runs OpenBLAS on one thread) and each spins for ~0.1 s of CPU after the
# load, so every tool starts it with OPENBLAS_NUM_THREADS=1.  Seen from outside: a tool
# waiting for its standard input runs one thread.
tool_threads_waiting() { # prints the thread count of emoe-info blocked reading a pipe
    mkfifo "$T/fifo"
    exec 3<>"$T/fifo" # a writer, so that the tool's open does not block
    env -u OPENBLAS_NUM_THREADS "$TOOLS/emoe-info" - <"$T/fifo" >/dev/null 2>&1 3>&- &
    pid=$!
    n=""
    for _ in $(seq 200); do
        w=$(cat "/proc/$pid/wchan" 2>/dev/null) || w=""
        s=$(cut -d' ' -f1 "/proc/$pid/syscall" 2>/dev/null) || s=""
        case "$w" in *pipe_read*) s=0 ;; esac
        if [ "$s" = 0 ] && [ "$(readlink "/proc/$pid/exe")" != "$(command -v bash)" ]; then
            n=$(sed -n 's/^Threads:[[:space:]]*//p' "/proc/$pid/status")
            break
        fi
        sleep 0.05
    done
    exec 3>&-
    wait "$pid" 2>/dev/null
    rm -f "$T/fifo"
    echo "$n"
}
if [ -x "$TOOLS/emoe-info" ] && [ -r /proc/self/status ]; then
    n=$(tool_threads_waiting)
    if [ -z "$n" ]; then
        echo "# skipped: could not see emoe-info waiting in read() (no /proc/PID/wchan or syscall)"
    else
        check "a tool runs without OpenBLAS worker threads (emoe-info waiting on a pipe: $n thread(s))" \
            test "$n" = 1
    fi
fi
done_testing
