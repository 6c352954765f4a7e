#!/bin/bash
# prep-real.sh: emoe-prep on the real datasets of ../shared/data (EMOE_SHARED_DATA):
# MNIST t10k (idx.gz), the CIFAR-100 test split (binary tar.gz, fine and coarse), the
# CIFAR-10 JPEG zip (test split), the ImageNet sample tar (to 32 and 224), the Tiny
# ImageNet zip (val) and the IXI NIfTI volumes with their ages, with bad CSV files.
# Expected figures (label and pixel means) were computed independently with numpy from
# the raw files.  Skips (77) when the data is absent.
. "${EMOE_SRCDIR:-.}/tests/tools/tool-lib.sh"
D=${EMOE_SHARED_DATA:-}
[ -n "$D" ] && [ -d "$D/mnist" ] || skip_all "no shared data (EMOE_SHARED_DATA)"

# stats row of one member: "name dtype [shape] mean" with the mean to 3 decimals
row() { "$TOOLS/emoe-info" --tsv --stats "$1" |
    awk -F'\t' -v m="$2" '$2 == m { v = $8 + 0
        printf "%s %s %s %.3f\n", $2, $3, $4, (v < 0.0005 && v > -0.0005) ? 0 : v }'; }
row_is() {
    got=$(row "$1" "$2")
    [ "$got" = "$3" ] || { echo "# $1: '$got', want '$3'"; return 1; }
}
shape_is() {
    got=$("$TOOLS/emoe-info" --tsv "$1" | awk -F'\t' -v m="$2" '$2 == m { print $3 " " $4 }')
    [ "$got" = "$3" ] || { echo "# $1: $2 is '$got', want '$3'"; return 1; }
}
has_bytes() { LC_ALL=C grep -a -q -- "$2" "$1" || { echo "# $1 lacks '$2'"; return 1; }; }

if [ -f "$D/mnist/t10k-images-idx3-ubyte.gz" ]; then
    run emoe-prep -o "$T/mnist.npz" "$D/mnist/t10k-images-idx3-ubyte.gz"
    check "mnist t10k: exit 0" status_is 0
    check "mnist t10k: images (numpy: mean 33.791)" row_is "$T/mnist.npz" images "images u8 [10000,28,28,1] 33.791"
    check "mnist t10k: labels (numpy: mean 4.443)" row_is "$T/mnist.npz" labels "labels i64 [10000] 4.443"
    check "mnist t10k: 10 classes" shape_is "$T/mnist.npz" classes "S1 [10]"
    run emoe-prep -o "$T/mnist2.npz" --split test "$D/mnist"
    check "mnist folder --split test: the same file" cmp -s "$T/mnist.npz" "$T/mnist2.npz"
fi

C100=$D/cifar-100-split-bins/cifar-100-binary.tar.gz
if [ -f "$C100" ]; then
    run emoe-prep --stats -o "$T/c100.npz" --split test "$C100"
    check "cifar100 test: exit 0" status_is 0
    check "cifar100 test: images (numpy: mean 122.241)" row_is "$T/c100.npz" images "images u8 [10000,32,32,3] 122.241"
    check "cifar100 test: fine labels (numpy: mean 49.5)" row_is "$T/c100.npz" labels "labels i64 [10000] 49.500"
    check "cifar100 test: 100 classes" shape_is "$T/c100.npz" classes "S13 [100]"
    check "cifar100 test: class names" has_bytes "$T/c100.npz" "aquarium_fish"
    check "cifar100 --stats: mean member" shape_is "$T/c100.npz" mean "f32 [3]"
    check "cifar100 --stats: on stderr" stderr_has "^emoe-prep: mean 0\.[0-9]* 0\.[0-9]* 0\.[0-9]*, std "
    run emoe-prep -o "$T/c100c.npz" --split test --label coarse "$C100"
    check "cifar100 coarse labels (numpy: mean 9.5)" row_is "$T/c100c.npz" labels "labels i64 [10000] 9.500"
    check "cifar100 coarse: 20 classes" shape_is "$T/c100c.npz" classes "S30 [20]"
fi

C10=$D/cifar-10-jpg/cifar-10-jpg.zip
if [ -f "$C10" ]; then
    run emoe-prep -o "$T/c10.npz" --split test "$C10"
    check "cifar10 jpg zip test: exit 0" status_is 0
    check "cifar10 jpg zip test: 10000 images 32x32" shape_is "$T/c10.npz" images "u8 [10000,32,32,3]"
    check "cifar10 jpg zip test: 1000 a class (mean label 4.5)" row_is "$T/c10.npz" labels "labels i64 [10000] 4.500"
    check "cifar10 jpg zip test: class names" has_bytes "$T/c10.npz" "automobile"
    check "cifar10 jpg zip test: summary" stderr_has "10000 images (imagefolder 32x32x3, 10 classes), 0 skipped"
    run emoe-prep -o "$T/c10-5.npz" --split test --classes cat,dog --per-class 5 --seed 1 "$C10"
    check "cifar10 5-shot cat,dog: 10 images" shape_is "$T/c10-5.npz" images "u8 [10,32,32,3]"
fi

IN=$D/imagenet-sample-images-subset/imagenet-sample.tar
if [ -f "$IN" ]; then
    run emoe-prep -o "$T/in32.npz" --size 32 "$IN"
    check "imagenet tar to 32: exit 0" status_is 0
    check "imagenet tar to 32: 200 images" shape_is "$T/in32.npz" images "u8 [200,32,32,3]"
    check "imagenet tar: one image a class (mean label 99.5)" row_is "$T/in32.npz" labels "labels i64 [200] 99.500"
    check "imagenet tar: wnids as classes" has_bytes "$T/in32.npz" "n01440764n01496331"
    run emoe-prep -o "$T/in224.npz" --size 224 --limit 20 "$IN"
    check "imagenet tar to 224: 20 images" shape_is "$T/in224.npz" images "u8 [20,224,224,3]"
    # a copy whose first photo does not start like a JPEG (tar block 1 is its header)
    cp "$IN" "$T/in-bad.tar" && chmod u+w "$T/in-bad.tar"
    printf 'XX' | dd of="$T/in-bad.tar" bs=1 seek=1024 conv=notrunc 2>/dev/null
    run emoe-prep -o "$T/in-bad.npz" --size 32 "$T/in-bad.tar"
    check "imagenet with a corrupt photo: exit 0" status_is 0
    check "imagenet with a corrupt photo: the member is named" \
        stderr_has "^emoe-prep: $T/in-bad.tar: member 'n01440764/n01440764_tench.JPEG': corrupt JPEG"
    check "imagenet with a corrupt photo: 199 images, 1 skipped" stderr_has "199 images (imagefolder 32x32x3, .*), 1 skipped"
    check "imagenet with a corrupt photo: 199 images written" shape_is "$T/in-bad.npz" images "u8 [199,32,32,3]"
    # the tench class lost its only photo, but keeps its name and label 0
    check "imagenet with a corrupt photo: still 200 classes" stderr_has "199 images (imagefolder 32x32x3, 200 classes), 1 skipped"
    run emoe-prep --strict -o "$T/in-strict.npz" --size 32 "$T/in-bad.tar"
    check "imagenet with a corrupt photo --strict: exit 1, no file" status_is 1
    check "imagenet --strict: no output" no_file "$T/in-strict.npz"
    rm -f "$T/in-bad.tar"
fi

TIN=$D/tiny-imagenet-200-subset/tiny-imagenet-200.zip
if [ -f "$TIN" ]; then
    run emoe-prep -o "$T/tin.npz" --split val "$TIN"
    check "tinyimagenet val: exit 0" status_is 0
    check "tinyimagenet val: 10000 images 64x64" shape_is "$T/tin.npz" images "u8 [10000,64,64,3]"
    check "tinyimagenet val: 200 classes" shape_is "$T/tin.npz" classes "S121 [200]"
    check "tinyimagenet val: class names from words.txt" has_bytes "$T/tin.npz" "goldfish, Carassius auratus"
    check "tinyimagenet val: format detected" stderr_has "(tinyimagenet 64x64x3, 200 classes)"
fi

IXI=$D/ixi-t1-brainage-sample
if [ -f "$IXI/IXI_demog_n10.csv" ]; then
    CSV=$IXI/IXI_demog_n10.csv
    run emoe-prep -o "$T/ixi.npz" --size 16 --targets "$CSV" --id-column MRID --target-column Age "$IXI"
    check "nifti + csv: exit 0" status_is 0
    want=$(awk -F, 'NR > 1 { s += $2; n++ } END { printf "%.3f", s / n }' "$CSV")
    check "nifti + csv: ages as targets (mean $want)" row_is "$T/ixi.npz" labels "labels f32 [10] $want"
    check "nifti + csv: volumes f32, normalised (mean 0)" row_is "$T/ixi.npz" images "images f32 [10,16,16,16,1] 0.000"
    { cat "$CSV"; echo "IXI999-XX-9999,50.0,F"; } >"$T/extra.csv"
    run emoe-prep -o "$T/ixi-x.npz" --size 16 --targets "$T/extra.csv" --id-column MRID --target-column Age "$IXI"
    check "csv row without a volume: exit 1" status_is 1
    check "csv row without a volume: names the csv and the id" stderr_has "^emoe-prep: $T/extra.csv: .*IXI999-XX-9999"
    check "csv row without a volume: no output file" no_file "$T/ixi-x.npz"
    grep -v '^IXI013-' "$CSV" >"$T/short.csv"
    run emoe-prep -o "$T/ixi-s.npz" --size 16 --targets "$T/short.csv" --id-column MRID --target-column Age "$IXI"
    check "volume without a target: exit 1" status_is 1
    check "volume without a target: names the volume" stderr_has "IXI013-HH-1212-T1_ds.nii.gz"
    check "volume without a target: no output file" no_file "$T/ixi-s.npz"
    run emoe-prep -o "$T/ixi-c.npz" --size 16 --targets "$CSV" --id-column Subject --target-column Age "$IXI"
    check "unknown csv column: exit 1" status_is 1
    check "unknown csv column: named" stderr_has "Subject"
fi

done_testing
