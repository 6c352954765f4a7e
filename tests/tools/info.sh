#!/bin/bash
# info.sh: emoe-info lists .npy, .npz and .safetensors files (fixtures written by numpy
# and by the reference safetensors rules), reads .npy from a pipe, and reports bad files.
. "${EMOE_SRCDIR:-.}/tests/tools/tool-lib.sh"
F=$FIXTURES

run emoe-info "$F/npy_f4.npy"
check "npy: exit 0" status_is 0
check "npy: dtype and shape" stdout_has "f32 *(2, 3, 4) *96$"
check "npy: nothing on stderr" stderr_empty

run emoe-info --tsv --stats "$F/npy_f4.npy"
check "tsv: header" stdout_has "^file	name	dtype	shape	bytes	min	max	mean	std$"
check "tsv: row with statistics" stdout_has "npy_f4.npy	-	f32	\[2,3,4\]	96	-31.25	28.25	"

run_stdin "$F/npy_f4_be_fortran.npy" emoe-info --tsv --stats -
check "stdin: big-endian Fortran .npy from a pipe" stdout_has "^<stdin>	-	f32	\[2,3,4\]	96	-31.25	28.25	"
cat "$F/npy_f4.npy" | "$TOOLS/emoe-info" --tsv - >"$T/out" 2>"$T/err"; rc=$?
check "stdin: through a real pipe" stdout_has "^<stdin>	-	f32	\[2,3,4\]	96$"

for z in stored deflated zip64; do
    run emoe-info --tsv "$F/npz_$z.npz"
    check "npz $z: exit 0" status_is 0
done
run emoe-info "$F/npz_stored.npz"
check "npz: member count" stdout_has "npz_stored.npz: npz, 7 tensors"
check "npz: uint8 images" stdout_has "images *u8 *(2, 4, 4, 3) *96$"
check "npz: int64 labels" stdout_has "labels *i64 *(2,) *16$"
check "npz: class names as fixed-width strings" stdout_has "classes *S5 *(2,) *10$"
run emoe-info --stats "$F/npz_deflated.npz"
check "npz --stats (deflated): exit 0" status_is 0
run emoe-info "$F/npy_strings.npy"
check "npy of strings: listed" stdout_has " S[0-9]* "

run emoe-info "$F/st_mixed.safetensors"
check "safetensors: exit 0" status_is 0
check "safetensors: a tensor" stdout_has "a.f32 *f32 *(2,) *8$"
check "safetensors: a scalar" stdout_has "alpha *f32 *() *4$"
check "safetensors: metadata" stdout_has "emoe.version = 1$"
check "safetensors: newlines in metadata shown as \\n" stdout_has 'data.classes = cat\\ndog$'

# errors: each bad file is named, the good ones are still listed, status 1
run emoe-info "$T/missing.npy"
check "missing file: exit 1" status_is 1
check "missing file: named" stderr_has "^emoe-info: $T/missing.npy: No such file"
check "missing file: nothing on stdout" stdout_empty

head -c 100 "$F/npy_f4.npy" >"$T/trunc.npy"
printf 'hello, world\n' >"$T/text.txt"
head -c 40 "$F/st_mixed.safetensors" >"$T/trunc.safetensors"
run emoe-info "$T/trunc.npy" "$F/npy_i4.npy" "$T/text.txt" "$T/trunc.safetensors"
check "bad files: exit 1" status_is 1
check "truncated .npy: named" stderr_has "^emoe-info: $T/trunc.npy: .*truncated"
check "not a tensor file: named" stderr_has "^emoe-info: $T/text.txt: not a .npy, .npz or .safetensors file"
check "truncated .safetensors: named" stderr_has "^emoe-info: $T/trunc.safetensors: "
check "good file between bad ones still listed" stdout_has "npy_i4.npy: npy, 1 tensor"

run emoe-info "$F/npy_object.npy"
check "object dtype: exit 1" status_is 1
check "object dtype: says so" stderr_has "npy_object.npy: .*object"

run emoe-info
check "no FILE: usage error" status_is 2
done_testing
