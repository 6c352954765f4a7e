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
done_testing
