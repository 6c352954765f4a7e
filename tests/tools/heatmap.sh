#!/bin/bash
# heatmap.sh: emoe-heatmap on committed routing tensors (tests/gen_fixtures_viz.py):
# PNG files pass pngcheck (chunk CRCs, zlib stream) with the size the tool drew,
# SVG files are well-formed XML (xmllint), the text rendering, reading a pipe, and
# clear errors with status 1 (and no output file) for bad input.
. "${EMOE_SRCDIR:-.}/tests/tools/tool-lib.sh"
[ -x "$TOOLS/emoe-heatmap" ] || skip_all "emoe-heatmap is not built"
F=$FIXTURES
have_pngcheck=0; command -v pngcheck >/dev/null && have_pngcheck=1
have_xmllint=0; command -v xmllint >/dev/null && have_xmllint=1

# PNG width and height from the IHDR chunk (bytes 16..23), as "W H"
png_size() { od -An -tu1 -j16 -N8 "$1" | awk '{print $1*16777216+$2*65536+$3*256+$4, $5*16777216+$6*65536+$7*256+$8}'; }
png_ok() { # the signature, and pngcheck's verdict when it is installed
    [ "$(head -c 8 "$1" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ] || return 1
    [ $have_pngcheck = 0 ] || pngcheck -q "$1" >/dev/null
}
xml_ok() { [ $have_xmllint = 0 ] || xmllint --noout "$1"; }

run emoe-heatmap "$F/viz_routing10.npy" -o "$T/map.png" -c "$F/viz_classes10.txt" -t 'CIFAR-10'
check "10 classes, PNG: exits 0" status_is 0
check "10 classes, PNG: decodes (pngcheck)" png_ok "$T/map.png"
size=$(png_size "$T/map.png")
check "10 classes, PNG: a sensible size ($size)" test "${size% *}" -gt 200 -a "${size#* }" -gt 200
check "10 classes, PNG: nothing but the file" only_files "$T" map.png out err
if [ $have_pngcheck = 1 ]; then # the checker itself notices a damaged file
    cp "$T/map.png" "$T/damaged.png"
    printf 'X' | dd of="$T/damaged.png" bs=1 seek=40 conv=notrunc 2>/dev/null
    check "a damaged PNG fails the check" eval '! png_ok "$T/damaged.png"'
    rm -f "$T/damaged.png"
fi

run emoe-heatmap "$F/viz_routing10.npy" -o "$T/one.png" -l 1
check "one layer: exits 0" status_is 0
one=$(png_size "$T/one.png")
check "one layer: one panel is shorter than two (${one#* } < ${size#* })" test "${one#* }" -lt "${size#* }"

run emoe-heatmap "$F/viz_routing10.npy" -o "$T/map.svg" -n class -c "$F/viz_classes10.txt" -t 'a & <b>'
check "SVG: exits 0" status_is 0
check "SVG: well-formed XML (xmllint)" xml_ok "$T/map.svg"
check "SVG: has the class names" grep -q '>automobile</text>' "$T/map.svg"
check "SVG: one rect per cell (2 x 4 x 10)" test "$(grep -c '<title>expert ' "$T/map.svg")" -eq 80

run emoe-heatmap "$F/viz_routing10.npy" -o "$T/npz.svg" -c "$F/viz_classes10.npz"
check "names from a dataset .npz: exits 0" status_is 0
check "names from a dataset .npz: used" grep -q '>automobile</text>' "$T/npz.svg"

run emoe-heatmap "$F/viz_routing200.npy" -o "$T/big.png" -n expert
check "200 classes: exits 0" status_is 0
check "200 classes: decodes" png_ok "$T/big.png"
big=$(png_size "$T/big.png")
check "200 classes: taller than the classes, not huge ($big)" test "${big#* }" -ge 200 -a "${big#* }" -lt 1500 -a "${big% *}" -lt 1500

run_stdin "$F/viz_routing10.npy" emoe-heatmap - -f svg -o -
check "pipe in, SVG to stdout: exits 0" status_is 0
check "pipe in, SVG to stdout: XML" stdout_has '^<svg xmlns='

run emoe-heatmap "$F/viz_routing10.npy" --ascii --width 60
check "--ascii: exits 0" status_is 0
check "--ascii: two layers" test "$(grep -c '^layer ' "$T/out")" -eq 2
check "--ascii: four expert rows a layer" test "$(grep -c '^e[0-3] |' "$T/out")" -eq 8
check "--ascii: fits the width" test "$(awk '{ if (length($0) > m) m = length($0) } END { print m }' "$T/out")" -le 60

# bad input: status 1 and no output file
run emoe-heatmap "$F/viz_routing_rank2.npy" -o "$T/bad.png"
check "wrong rank: exits 1" status_is 1
check "wrong rank: says so" stderr_has "^emoe-heatmap: .*viz_routing_rank2.npy: routing tensor has shape (4, 10), not \[layers, experts, classes\]"
check "wrong rank: no file" no_file "$T/bad.png"

run emoe-heatmap "$F/viz_routing10.npy" -o "$T/bad.png" -l 2
check "missing layer: exits 1" status_is 1
check "missing layer: says so" stderr_has "has 2 layers"
check "missing layer: no file" no_file "$T/bad.png"

printf 'a\nb\nc\n' >"$T/names.txt"
run emoe-heatmap "$F/viz_routing10.npy" -o "$T/bad.png" -c "$T/names.txt"
check "wrong number of names: exits 1" status_is 1
check "wrong number of names: says so" stderr_has "names.txt: 3 class names, but .* has 10 classes"
check "wrong number of names: no file" no_file "$T/bad.png"

run emoe-heatmap "$T/missing.npy" -o "$T/bad.png"
check "unreadable file: exits 1" status_is 1
check "unreadable file: names it" stderr_has "^emoe-heatmap: .*missing.npy"

run emoe-heatmap "$F/viz_routing10.npy" -o "$T/no/such/dir/x.png"
check "unwritable output: exits 1" status_is 1
check "unwritable output: names it" stderr_has "no/such/dir"

# usage errors: status 2
run emoe-heatmap "$F/viz_routing10.npy"
check "no output: exits 2" status_is 2
run emoe-heatmap "$F/viz_routing10.npy" -o "$T/x.jpg"
check "unknown extension: exits 2" status_is 2
check "unknown extension: says so" stderr_has "neither .png nor .svg"
run emoe-heatmap "$F/viz_routing10.npy" -o "$T/x.png" -n rows
check "bad normalisation: exits 2" status_is 2
done_testing
