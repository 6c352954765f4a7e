#!/bin/bash
# prep.sh: emoe-prep on small datasets this script builds itself (JPEGs from
# tests/mk_prep_jpeg, archives with tar, gzip and zip (zip parts only when zip is
# installed), idx and CIFAR records with printf): image folders (folder, .tar, .tar.gz,
# .zip, --subdir), MNIST idx (plain, .gz), CIFAR-10/100 binaries (tar.gz, .bin), ImageNet
# training and validation tars, Tiny ImageNet, synthetic; the selections, --stats, -o -,
# and bad input (a corrupt JPEG is skipped with a warning naming the member, --strict
# makes it an error; a truncated archive, an unknown layout or a missing label file is an
# error naming the file, with no output file), NIfTI volumes (written with printf) with a
# CSV of targets.
. "${EMOE_SRCDIR:-.}/tests/tools/tool-lib.sh"
MKJPEG=$TOOLS/../tests/mk_prep_jpeg
[ -x "$MKJPEG" ] || skip_all "tests/mk_prep_jpeg is not built"

# tsv row of one member of a .npz: "name<TAB>dtype<TAB>[shape]"
member() { "$TOOLS/emoe-info" --tsv "$1" | awk -F'\t' -v m="$2" '$2 == m { print $2 "\t" $3 "\t" $4 }'; }
member_is() { # member_is FILE NAME "DTYPE<TAB>[SHAPE]"
    got=$(member "$1" "$2")
    [ "$got" = "$2	$3" ] || { echo "# $1: member $2 is '$got', want '$2	$3'"; return 1; }
}
# mean of a member (emoe-info --tsv --stats), rounded to 3 decimals
member_mean() { "$TOOLS/emoe-info" --tsv --stats "$1" |
    awk -F'\t' -v m="$2" '$2 == m { v = $8 + 0; printf "%.3f\n", (v < 0.0005 && v > -0.0005) ? 0 : v }'; }
mean_is() {
    got=$(member_mean "$1" "$2")
    [ "$got" = "$3" ] || { echo "# $1: mean of $2 is '$got', want '$3'"; return 1; }
}
# class names are stored as fixed-width bytes, uncompressed: look for them in the file
has_bytes() { LC_ALL=C grep -a -q -- "$2" "$1" || { echo "# $1 lacks '$2'"; return 1; }; }

# ------------------------------------------------------------ an image folder
# pets/{ant,cat,dog}/NN.jpg: 4 images a class, 40x30 or 30x40, red = class code
mkdir -p "$T/src/pets"
code=0
for cls in ant cat dog; do
    mkdir -p "$T/src/pets/$cls"
    for k in 0 1 2 3; do
        if [ $((k % 2)) = 0 ]; then w=40 h=30; else w=30 h=40; fi
        "$MKJPEG" "$T/src/pets/$cls/0$k.jpg" $w $h $((40 + 80 * code)) $((50 * k)) ||
            { echo "# mk_prep_jpeg failed"; exit 1; }
    done
    code=$((code + 1))
done
"$MKJPEG" "$T/src/pets/cat/gray.jpg" 20 20 128 0 gray
(cd "$T/src" && tar cf "$T/pets.tar" pets && tar czf "$T/pets.tar.gz" pets)

run emoe-prep -o "$T/folder.npz" --size 16 "$T/src/pets"
check "folder: exit 0" status_is 0
check "folder: images u8 [13,16,16,3]" member_is "$T/folder.npz" images "u8	[13,16,16,3]"
check "folder: labels i64 [13]" member_is "$T/folder.npz" labels "i64	[13]"
check "folder: three class names" member_is "$T/folder.npz" classes "S3	[3]"
check "folder: class names in order" has_bytes "$T/folder.npz" "antcatdog"
check "folder: labels are the folders (mean of 0,0,0,0,1*5,2*4)" \
    mean_is "$T/folder.npz" labels 1.000
check "folder: summary line" stderr_has "^emoe-prep: $T/folder.npz: 13 images (imagefolder 16x16x3, 3 classes), 0 skipped"
check "folder: no temporary left" only_files "$T" folder.npz pets.tar pets.tar.gz src out err

for a in pets.tar pets.tar.gz; do
    run emoe-prep -o "$T/$a.npz" --size 16 "$T/$a"
    check "$a: exit 0" status_is 0
    check "$a: same listing and statistics as the folder" \
        cmp -s <("$TOOLS/emoe-info" --tsv --stats "$T/folder.npz" | cut -f2-) \
        <("$TOOLS/emoe-info" --tsv --stats "$T/$a.npz" | cut -f2-)
done
if command -v zip >/dev/null; then
    (cd "$T/src" && zip -q -r "$T/pets.zip" pets)
    run emoe-prep -o "$T/zip.npz" --size 16 "$T/pets.zip"
    check "zip: exit 0" status_is 0
    check "zip: same listing and statistics as the folder" \
        cmp -s <("$TOOLS/emoe-info" --tsv --stats "$T/folder.npz" | cut -f2-) \
        <("$TOOLS/emoe-info" --tsv --stats "$T/zip.npz" | cut -f2-)
else
    echo "# zip is not installed: zip archives not tested here"
fi
run emoe-prep -j 1 -o "$T/j1.npz" --size 16 "$T/pets.tar"
check "-j 1 writes the same file as all threads" cmp -s "$T/j1.npz" "$T/pets.tar.npz"

# --subdir: the class folders are below a folder inside the archive
mkdir -p "$T/src/deep/data/train"
cp -r "$T/src/pets/ant" "$T/src/pets/dog" "$T/src/deep/data/train/"
mkdir -p "$T/src/deep/data/other/x" && cp "$T/src/pets/cat/00.jpg" "$T/src/deep/data/other/x/"
(cd "$T/src" && tar cf "$T/deep.tar" deep)
run emoe-prep -o "$T/deep.npz" --subdir deep/data/train --size 8 "$T/deep.tar"
check "--subdir: exit 0" status_is 0
check "--subdir: the classes below it only" member_is "$T/deep.npz" images "u8	[8,8,8,3]"
check "--subdir: class names" has_bytes "$T/deep.npz" "antdog"

# mixed sources: a folder and an archive together; each source finds its own class
# folders (the folder's are at its top, the tar's below 'more/'), classes merge by name
mkdir -p "$T/src/more/ant" "$T/src/more/eel"
"$MKJPEG" "$T/src/more/ant/10.jpg" 40 30 40 10
"$MKJPEG" "$T/src/more/eel/00.jpg" 40 30 250 10
(cd "$T/src" && tar cf "$T/more.tar" more)
run emoe-prep -o "$T/mixed.npz" --size 8 "$T/src/pets" "$T/more.tar"
check "folder + tar: exit 0" status_is 0
check "folder + tar: all 15 images" member_is "$T/mixed.npz" images "u8	[15,8,8,3]"
check "folder + tar: classes merged by name, sorted" has_bytes "$T/mixed.npz" "antcatdogeel"
check "folder + tar: four classes" member_is "$T/mixed.npz" classes "S3	[4]"
check "folder + tar: labels (5 x 0, 5 x 1, 4 x 2, 1 x 3)" mean_is "$T/mixed.npz" labels 1.067
run emoe-prep -o "$T/mixed2.npz" --size 8 "$T/more.tar" "$T/src/pets"
check "tar + folder: the same file in the other order" cmp -s "$T/mixed.npz" "$T/mixed2.npz"
mkdir -p "$T/src/empty/sub"
run emoe-prep -o "$T/mixed3.npz" --size 8 "$T/src/pets" "$T/src/empty"
check "a source without images: exit 1" status_is 1
check "a source without images: named" stderr_has "^emoe-prep: $T/src/empty: unknown layout: no JPEG images found"
check "a source without images: no output file" no_file "$T/mixed3.npz"

# ---------------------------------------------------------- channels, stats, stdout
run emoe-prep -o "$T/gray.npz" --size 12 --channels 1 "$T/pets.tar"
check "--channels 1: one channel" member_is "$T/gray.npz" images "u8	[13,12,12,1]"

run emoe-prep --stats -o "$T/stats.npz" --size 16 "$T/pets.tar"
check "--stats: exit 0" status_is 0
check "--stats: mean and std on stderr" stderr_has "^emoe-prep: mean [0-9.]* [0-9.]* [0-9.]*, std [0-9.]* [0-9.]* [0-9.]*$"
check "--stats: mean member f32 [3]" member_is "$T/stats.npz" mean "f32	[3]"
check "--stats: std member f32 [3]" member_is "$T/stats.npz" std "f32	[3]"
check "without --stats: no mean member" test -z "$(member "$T/folder.npz" mean)"
run emoe-prep -q --stats -o "$T/stats-q.npz" --size 16 "$T/pets.tar"
check "--stats -q: only the statistics on stderr" test "$(wc -l <"$T/err")" -eq 1

run emoe-prep -o - --size 16 "$T/pets.tar"
check "-o -: exit 0" status_is 0
check "-o -: the same bytes as a file" cmp -s "$T/out" "$T/pets.tar.npz"
check "-o -: summary names <stdout>" stderr_has "^emoe-prep: <stdout>: 13 images"
"$TOOLS/emoe-prep" -q -o - --size 16 "$T/pets.tar" | cat >"$T/piped.npz"
check "-o - through a real pipe" cmp -s "$T/piped.npz" "$T/pets.tar.npz"
run emoe-prep -q -o "$T/quiet.npz" --size 16 "$T/pets.tar"
check "-q: nothing on stderr" stderr_empty

# ------------------------------------------------------------------ selections
run emoe-prep -o "$T/pc.npz" --size 8 --per-class 2 --seed 7 "$T/pets.tar"
check "--per-class 2: 6 images" member_is "$T/pc.npz" images "u8	[6,8,8,3]"
check "--per-class 2: 2 of each class" mean_is "$T/pc.npz" labels 1.000
run emoe-prep -o "$T/pc2.npz" --size 8 --per-class 2 --seed 7 "$T/pets.tar"
check "--per-class: the same seed gives the same file" cmp -s "$T/pc.npz" "$T/pc2.npz"
ok_differs=0
for s in 1 2 3 4 5; do
    "$TOOLS/emoe-prep" -q -o "$T/pcs.npz" --size 8 --per-class 2 --seed $s "$T/pets.tar"
    cmp -s "$T/pcs.npz" "$T/pc.npz" || ok_differs=1
done
check "--per-class: other seeds pick other images" test $ok_differs = 1
run emoe-prep -o "$T/lim.npz" --size 8 --limit 5 "$T/pets.tar"
check "--limit 5: 5 images" member_is "$T/lim.npz" images "u8	[5,8,8,3]"
run emoe-prep -o "$T/cls.npz" --size 8 --classes dog,ant "$T/pets.tar"
check "--classes dog,ant: 8 images" member_is "$T/cls.npz" images "u8	[8,8,8,3]"
check "--classes dog,ant: 2 classes" member_is "$T/cls.npz" classes "S3	[2]"
check "--classes dog,ant: classes in the order given" has_bytes "$T/cls.npz" "dogant"
check "--classes dog,ant: dog is label 0 (4 x 0, 4 x 1)" mean_is "$T/cls.npz" labels 0.500
run emoe-prep -o "$T/cls-bad.npz" --size 8 --classes dog,cow "$T/pets.tar"
check "--classes with an unknown class: exit 1" status_is 1
check "--classes with an unknown class: named" stderr_has "cow"
check "--classes with an unknown class: no output" no_file "$T/cls-bad.npz"

# ------------------------------------------------------------------ bad JPEGs
mkdir -p "$T/src/bad"
cp -r "$T/src/pets/ant" "$T/src/pets/dog" "$T/src/bad/"
"$MKJPEG" "$T/big.jpg" 200 150 10 10
head -c $(($(wc -c <"$T/big.jpg") - 300)) "$T/big.jpg" >"$T/src/bad/dog/truncated.jpg"
printf 'this is not a JPEG\n' >"$T/src/bad/ant/text.jpg"
(cd "$T/src" && tar czf "$T/bad.tar.gz" bad)
run emoe-prep -o "$T/bad.npz" --size 8 "$T/bad.tar.gz"
check "corrupt JPEGs: exit 0" status_is 0
check "corrupt JPEGs: warning names the archive and member (truncated)" \
    stderr_has "^emoe-prep: $T/bad.tar.gz: member 'bad/dog/truncated.jpg': corrupt JPEG"
check "corrupt JPEGs: warning names the member (not a JPEG)" \
    stderr_has "^emoe-prep: $T/bad.tar.gz: member 'bad/ant/text.jpg': corrupt JPEG"
check "corrupt JPEGs: counted in the summary" stderr_has "8 images (imagefolder 8x8x3, 2 classes), 2 skipped"
check "corrupt JPEGs: the good images are kept" member_is "$T/bad.npz" images "u8	[8,8,8,3]"
run emoe-prep -q -o "$T/bad-q.npz" --size 8 "$T/bad.tar.gz"
check "corrupt JPEGs -q: no warning" stderr_empty
run emoe-prep --strict -o "$T/strict.npz" --size 8 "$T/bad.tar.gz"
check "--strict: exit 1" status_is 1
check "--strict: names the member" stderr_has "^emoe-prep: $T/bad.tar.gz: member 'bad/.*': corrupt JPEG"
check "--strict: no output file" no_file "$T/strict.npz"

# ------------------------------------------------------------------ bad archives
for a in pets.tar pets.tar.gz; do
    head -c $(($(wc -c <"$T/$a") * 2 / 3)) "$T/$a" >"$T/cut-$a"
    run emoe-prep -o "$T/cut.npz" --size 8 "$T/cut-$a"
    check "truncated $a: exit 1" status_is 1
    check "truncated $a: names the file" stderr_has "^emoe-prep: $T/cut-$a: truncated"
    check "truncated $a: no output file" no_file "$T/cut.npz"
done
if [ -f "$T/pets.zip" ]; then
    head -c $(($(wc -c <"$T/pets.zip") * 2 / 3)) "$T/pets.zip" >"$T/cut.zip"
    run emoe-prep -o "$T/cut.npz" --size 8 "$T/cut.zip"
    check "truncated zip: exit 1" status_is 1
    check "truncated zip: names the file" stderr_has "^emoe-prep: $T/cut.zip: "
    check "truncated zip: no output file" no_file "$T/cut.npz"
fi

mkdir -p "$T/src/notes/a"
printf 'hello\n' >"$T/src/notes/a/readme.txt"
(cd "$T/src" && tar cf "$T/notes.tar" notes)
run emoe-prep -o "$T/notes.npz" "$T/notes.tar"
check "unknown layout: exit 1" status_is 1
check "unknown layout: named" stderr_has "^emoe-prep: $T/notes.tar: unknown layout"
check "unknown layout: no output file" no_file "$T/notes.npz"

printf 'plain text\n' >"$T/plain.txt"
run emoe-prep -o "$T/plain.npz" "$T/plain.txt"
check "unknown format: exit 1" status_is 1
check "unknown format: named" stderr_has "^emoe-prep: $T/plain.txt: unknown format"
check "unknown format: no output file" no_file "$T/plain.npz"

run emoe-prep -o "$T/missing.npz" "$T/no-such.tar"
check "missing source: exit 1" status_is 1
check "missing source: named" stderr_has "^emoe-prep: $T/no-such.tar: No such file"

run emoe-prep -o "$T/nosize.npz" "$T/pets.tar"
check "images of different sizes without --size: exit 1" status_is 1
check "images of different sizes without --size: no output file" no_file "$T/nosize.npz"

# -------------------------------------------------------------------- MNIST idx
mkdir -p "$T/mnist"
{ printf '\0\0\10\3\0\0\0\3\0\0\0\4\0\0\0\4'; head -c 48 /dev/zero | tr '\0' '\100'; } \
    >"$T/mnist/train-images-idx3-ubyte"
printf '\0\0\10\1\0\0\0\3\1\2\3' >"$T/mnist/train-labels-idx1-ubyte"
run emoe-prep -o "$T/mnist.npz" "$T/mnist/train-images-idx3-ubyte"
check "mnist idx: exit 0" status_is 0
check "mnist idx: images u8 [3,4,4,1]" member_is "$T/mnist.npz" images "u8	[3,4,4,1]"
check "mnist idx: labels from the idx1 file (mean 2)" mean_is "$T/mnist.npz" labels 2.000
check "mnist idx: pixels (64)" mean_is "$T/mnist.npz" images 64.000
gzip -n -c "$T/mnist/train-images-idx3-ubyte" >"$T/mnist/t10k-images-idx3-ubyte.gz"
gzip -n -c "$T/mnist/train-labels-idx1-ubyte" >"$T/mnist/t10k-labels-idx1-ubyte.gz"
run emoe-prep -o "$T/mnist-gz.npz" --split test "$T/mnist"
check "mnist folder, gz, --split test: exit 0" status_is 0
check "mnist gz: same as plain" cmp -s "$T/mnist.npz" "$T/mnist-gz.npz"
run emoe-prep -o "$T/mnist-3.npz" --channels 3 --size 8 "$T/mnist/train-images-idx3-ubyte"
check "mnist --channels 3 --size 8" member_is "$T/mnist-3.npz" images "u8	[3,8,8,3]"
rm "$T/mnist/train-labels-idx1-ubyte"
run emoe-prep -o "$T/mnist-nl.npz" "$T/mnist/train-images-idx3-ubyte"
check "mnist without labels: exit 1" status_is 1
check "mnist without labels: names the file" stderr_has "^emoe-prep: $T/mnist/train-images-idx3-ubyte.*label"
check "mnist without labels: no output file" no_file "$T/mnist-nl.npz"

# ------------------------------------------------------------------ CIFAR binary
# record: label byte, then 1024 red, 1024 green, 1024 blue
record() { printf "\\$(printf %03o "$1")"; head -c 3072 /dev/zero | tr '\0' "\\$(printf %03o "$2")"; }
mkdir -p "$T/src/cifar-10-batches-bin"
{ record 0 10; record 9 20; record 3 30; } >"$T/src/cifar-10-batches-bin/data_batch_1.bin"
{ record 1 40; record 2 50; } >"$T/src/cifar-10-batches-bin/test_batch.bin"
printf 'airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n' \
    >"$T/src/cifar-10-batches-bin/batches.meta.txt"
(cd "$T/src" && tar czf "$T/cifar-10-binary.tar.gz" cifar-10-batches-bin)
run emoe-prep -o "$T/c10.npz" "$T/cifar-10-binary.tar.gz"
check "cifar10 tar.gz: exit 0" status_is 0
check "cifar10 tar.gz: train split" member_is "$T/c10.npz" images "u8	[3,32,32,3]"
check "cifar10 tar.gz: labels" mean_is "$T/c10.npz" labels 4.000
check "cifar10 tar.gz: pixels" mean_is "$T/c10.npz" images 20.000
check "cifar10 tar.gz: class names from batches.meta.txt" has_bytes "$T/c10.npz" "automobile"
check "cifar10: format in the summary" stderr_has "(cifar10 32x32x3, 10 classes)"
run emoe-prep -o "$T/c10t.npz" --split test "$T/cifar-10-binary.tar.gz"
check "cifar10 --split test" member_is "$T/c10t.npz" images "u8	[2,32,32,3]"
run emoe-prep -o "$T/c10b.npz" "$T/src/cifar-10-batches-bin/data_batch_1.bin"
check "cifar10 extracted .bin: exit 0" status_is 0
check "cifar10 extracted .bin: the records" member_is "$T/c10b.npz" images "u8	[3,32,32,3]"
run emoe-prep -o "$T/c10s.npz" --size 8 "$T/src/cifar-10-batches-bin/data_batch_1.bin"
check "cifar10 --size 8" member_is "$T/c10s.npz" images "u8	[3,8,8,3]"
head -c 5000 "$T/src/cifar-10-batches-bin/data_batch_1.bin" >"$T/short.bin"
run emoe-prep -f cifar10 -o "$T/short.npz" "$T/short.bin"
check "cifar10 truncated record: exit 1" status_is 1
check "cifar10 truncated record: named" stderr_has "^emoe-prep: $T/short.bin: truncated record"
check "cifar10 truncated record: no output file" no_file "$T/short.npz"

# CIFAR-100: label bytes coarse, fine
record100() { printf "\\$(printf %03o "$1")"; record "$2" "$3"; }
mkdir -p "$T/src/cifar-100-binary"
{ record100 1 5 10; record100 0 7 20; } >"$T/src/cifar-100-binary/test.bin"
for i in $(seq 0 99); do echo "fine$i"; done >"$T/src/cifar-100-binary/fine_label_names.txt"
for i in $(seq 0 19); do echo "coarse$i"; done >"$T/src/cifar-100-binary/coarse_label_names.txt"
(cd "$T/src" && tar czf "$T/cifar-100-binary.tar.gz" cifar-100-binary)
run emoe-prep -o "$T/c100.npz" --split test "$T/cifar-100-binary.tar.gz"
check "cifar100 tar.gz: exit 0" status_is 0
check "cifar100: fine labels (5, 7)" mean_is "$T/c100.npz" labels 6.000
check "cifar100: 100 classes" member_is "$T/c100.npz" classes "S6	[100]"
run emoe-prep -o "$T/c100c.npz" --split test --label coarse "$T/cifar-100-binary.tar.gz"
check "cifar100 --label coarse (1, 0)" mean_is "$T/c100c.npz" labels 0.500
check "cifar100 --label coarse: 20 classes" member_is "$T/c100c.npz" classes "S8	[20]"
run emoe-prep -o "$T/c100t.npz" "$T/cifar-100-binary.tar.gz"
check "cifar100 --split train on a test-only archive: exit 1" status_is 1
check "cifar100 missing split: names the archive" stderr_has "^emoe-prep: $T/cifar-100-binary.tar.gz: no 'train.bin'"
check "cifar100 missing split: no output file" no_file "$T/c100t.npz"
# without the label-name files: an error naming the missing file, no output
mkdir -p "$T/src/c100-lone" "$T/src/c100-nonames/cifar-100-binary"
cp "$T/src/cifar-100-binary/test.bin" "$T/src/c100-lone/test.bin"
run emoe-prep -f cifar100 --split test -o "$T/c100n.npz" "$T/src/c100-lone/test.bin"
check "cifar100 .bin without fine_label_names.txt: exit 1" status_is 1
check "cifar100 .bin without fine_label_names.txt: names the file" \
    stderr_has "^emoe-prep: $T/src/c100-lone/test.bin: missing label file '$T/src/c100-lone/fine_label_names.txt'"
check "cifar100 .bin without fine_label_names.txt: no output file" no_file "$T/c100n.npz"
cp "$T/src/cifar-100-binary/fine_label_names.txt" "$T/src/c100-lone/"
run emoe-prep -f cifar100 --split test --label coarse -o "$T/c100n.npz" "$T/src/c100-lone/test.bin"
check "cifar100 --label coarse without coarse_label_names.txt: exit 1" status_is 1
check "cifar100 --label coarse without coarse_label_names.txt: names the file" \
    stderr_has "missing label file '$T/src/c100-lone/coarse_label_names.txt'"
run emoe-prep -f cifar100 --split test -o "$T/c100n.npz" "$T/src/c100-lone/test.bin"
check "cifar100 .bin with fine_label_names.txt next to it: exit 0" status_is 0
cp "$T/src/cifar-100-binary/test.bin" "$T/src/c100-nonames/cifar-100-binary/"
(cd "$T/src/c100-nonames" && tar czf "$T/c100-nonames.tar.gz" cifar-100-binary)
run emoe-prep -f cifar100 --split test -o "$T/c100n2.npz" "$T/c100-nonames.tar.gz"
check "cifar100 archive without fine_label_names.txt: exit 1" status_is 1
check "cifar100 archive without fine_label_names.txt: names archive and file" \
    stderr_has "^emoe-prep: $T/c100-nonames.tar.gz: missing label file 'fine_label_names.txt'"
check "cifar100 archive without fine_label_names.txt: no output file" no_file "$T/c100n2.npz"

# ------------------------------------------------------------------ ImageNet tars
# training tar: one tar of flat JPEGs per class (wnid.tar) inside the outer tar
mkdir -p "$T/src/in/n01" "$T/src/in/n02" "$T/src/in/val"
for k in 0 1 2; do
    "$MKJPEG" "$T/src/in/n01/n01_$k.JPEG" 50 40 30 $((20 * k))
    "$MKJPEG" "$T/src/in/n02/n02_$k.JPEG" 50 40 200 $((20 * k))
done
(cd "$T/src/in/n01" && tar cf ../n01.tar ./*.JPEG) && (cd "$T/src/in/n02" && tar cf ../n02.tar ./*.JPEG)
(cd "$T/src/in" && tar cf "$T/in-train.tar" n02.tar n01.tar)
run emoe-prep -o "$T/in-train.npz" --size 8 "$T/in-train.tar"
check "imagenet training tar (nested tars): exit 0" status_is 0
check "imagenet training tar: format detected" stderr_has "6 images (imagenet 8x8x3, 2 classes)"
check "imagenet training tar: wnids as classes" has_bytes "$T/in-train.npz" "n01n02"
# validation tar: flat JPEGs, labels from --labels
cp "$T/src/in/n01/n01_0.JPEG" "$T/src/in/val/ILSVRC2012_val_00000001.JPEG"
cp "$T/src/in/n02/n02_0.JPEG" "$T/src/in/val/ILSVRC2012_val_00000002.JPEG"
cp "$T/src/in/n02/n02_1.JPEG" "$T/src/in/val/ILSVRC2012_val_00000003.JPEG"
(cd "$T/src/in/val" && tar cf "$T/in-val.tar" ./*.JPEG)
printf 'ILSVRC2012_val_00000001.JPEG n01\nILSVRC2012_val_00000002.JPEG n02\nILSVRC2012_val_00000003.JPEG n02\n' \
    >"$T/val-labels.txt"
run emoe-prep -f imagenet --labels "$T/val-labels.txt" -o "$T/in-val.npz" --size 8 "$T/in-val.tar"
check "imagenet validation tar --labels: exit 0" status_is 0
check "imagenet validation tar: 3 images" member_is "$T/in-val.npz" images "u8	[3,8,8,3]"
check "imagenet validation tar: labels from the file (0, 1, 1)" mean_is "$T/in-val.npz" labels 0.667
head -2 "$T/val-labels.txt" >"$T/val-short.txt"
run emoe-prep -f imagenet --labels "$T/val-short.txt" -o "$T/in-val2.npz" --size 8 "$T/in-val.tar"
check "imagenet label file without an image's label: exit 1" status_is 1
check "imagenet label file without an image's label: names file and image" \
    stderr_has "^emoe-prep: $T/val-short.txt: .*ILSVRC2012_val_00000003.JPEG"
check "imagenet label file without an image's label: no output file" no_file "$T/in-val2.npz"
run emoe-prep -f imagenet -o "$T/in-val3.npz" --size 8 "$T/in-val.tar"
check "imagenet validation tar without --labels: exit 1" status_is 1
check "imagenet validation tar without --labels: asks for the label file" \
    stderr_has "^emoe-prep: $T/in-val.tar: unknown layout: 3 JPEG images but no class folders; .*label file.*--labels"
check "imagenet validation tar without --labels: no output file" no_file "$T/in-val3.npz"

# ------------------------------------------------------------------ Tiny ImageNet
TI=$T/src/tin/tiny-imagenet-200
mkdir -p "$TI/train/n01/images" "$TI/train/n02/images" "$TI/val/images"
for k in 0 1; do
    "$MKJPEG" "$TI/train/n01/images/n01_$k.JPEG" 64 64 30 0
    "$MKJPEG" "$TI/train/n02/images/n02_$k.JPEG" 64 64 200 0
done
printf 'n01_0.JPEG\t0\t0\t10\t10\n' >"$TI/train/n01/n01_boxes.txt"
"$MKJPEG" "$TI/val/images/val_0.JPEG" 64 64 200 0
"$MKJPEG" "$TI/val/images/val_1.JPEG" 64 64 30 0
"$MKJPEG" "$TI/val/images/val_2.JPEG" 64 64 30 0
printf 'val_0.JPEG\tn02\t0\t0\t5\t5\nval_1.JPEG\tn01\t0\t0\t5\t5\nval_2.JPEG\tn01\t0\t0\t5\t5\n' \
    >"$TI/val/val_annotations.txt"
printf 'n02\nn01\n' >"$TI/wnids.txt"
printf 'n00\tthing\nn01\tgoldfish, Carassius auratus\nn02\tbullfrog\n' >"$TI/words.txt"
run emoe-prep -o "$T/tin.npz" "$TI"
check "tinyimagenet folder: exit 0" status_is 0
check "tinyimagenet folder: train split, 64x64" member_is "$T/tin.npz" images "u8	[4,64,64,3]"
check "tinyimagenet: format detected" stderr_has "(tinyimagenet 64x64x3, 2 classes)"
check "tinyimagenet: class names from words.txt, wnids sorted" has_bytes "$T/tin.npz" "goldfish, Carassius auratus"
run emoe-prep -o "$T/tinv.npz" --split val "$TI"
check "tinyimagenet --split val: labels from val_annotations.txt (1, 0, 0)" \
    mean_is "$T/tinv.npz" labels 0.333
if command -v zip >/dev/null; then
    (cd "$T/src/tin" && zip -q -r "$T/tin.zip" tiny-imagenet-200)
    run emoe-prep -o "$T/tinz.npz" --split val "$T/tin.zip"
    check "tinyimagenet zip --split val: the same as the folder" cmp -s "$T/tinz.npz" "$T/tinv.npz"
fi

# ------------------------------------------------------------------ NIfTI + CSV
# mk_nii FILE N LOW HIGH: a NIfTI-1 .nii of N^3 uint8 voxels, the first half LOW, the
# rest HIGH (a 348-byte header, 4 bytes of no extension, the data)
mk_nii() {
    f=$1 n=$2
    head -c 352 /dev/zero >"$f"
    put() { printf "$2" | dd of="$f" bs=1 seek="$1" conv=notrunc 2>/dev/null; }
    put 0 '\134\001\000\000' # sizeof_hdr 348
    o=$(printf %03o "$n")
    put 40 "\\003\\000\\$o\\000\\$o\\000\\$o\\000\\001\\000" # dim: 3, n, n, n, 1
    put 70 '\002\000\010\000' # datatype uint8, bitpix 8
    put 76 '\000\000\200\077\000\000\200\077\000\000\200\077\000\000\200\077' # pixdim 1
    put 108 '\000\000\260\103' # vox_offset 352.0
    put 344 'n+1\000'
    half=$((n * n * n / 2))
    head -c $half /dev/zero | tr '\0' "\\$(printf %03o "$3")" >>"$f"
    head -c $((n * n * n - half)) /dev/zero | tr '\0' "\\$(printf %03o "$4")" >>"$f"
}
mkdir -p "$T/nii"
mk_nii "$T/nii/sub-01.nii" 6 10 50
mk_nii "$T/nii/sub-02_T1.nii" 6 20 80 && gzip -n "$T/nii/sub-02_T1.nii"
mk_nii "$T/nii/sub-03.nii" 6 5 9
printf 'id,age\nsub-01,30\nsub-02,40\nsub-03,50\n' >"$T/ages.csv"
run emoe-prep -o "$T/nii.npz" --targets "$T/ages.csv" --id-column id --target-column age "$T/nii"
check "nifti folder + csv: exit 0" status_is 0
check "nifti: f32 volumes at their size" member_is "$T/nii.npz" images "f32	[3,6,6,6,1]"
check "nifti: volumes normalised (mean 0)" mean_is "$T/nii.npz" images 0.000
check "nifti: targets from the csv (30, 40, 50)" mean_is "$T/nii.npz" labels 40.000
check "nifti: summary" stderr_has "3 volumes (nifti 6x6x6x1, regression)"
run emoe-prep -o "$T/nii4.npz" --size 4 --targets "$T/ages.csv" --id-column id \
    --target-column age "$T/nii/sub-01.nii" "$T/nii/sub-02_T1.nii.gz" "$T/nii/sub-03.nii"
check "nifti files, .nii.gz, --size 4" member_is "$T/nii4.npz" images "f32	[3,4,4,4,1]"
printf 'id,age\nsub-01,30\nsub-02,40\nsub-03,50\nsub-04,60\n' >"$T/ages-extra.csv"
run emoe-prep -o "$T/nii-x.npz" --targets "$T/ages-extra.csv" --id-column id --target-column age "$T/nii"
check "csv row without a volume: exit 1" status_is 1
check "csv row without a volume: names the csv and the id" stderr_has "^emoe-prep: $T/ages-extra.csv: .*sub-04"
check "csv row without a volume: no output file" no_file "$T/nii-x.npz"
printf 'id,age\nsub-01,30\nsub-02,40\n' >"$T/ages-short.csv"
run emoe-prep -o "$T/nii-s.npz" --targets "$T/ages-short.csv" --id-column id --target-column age "$T/nii"
check "volume without a target: exit 1" status_is 1
check "volume without a target: names the volume" stderr_has "^emoe-prep: .*sub-03.nii"
check "volume without a target: no output file" no_file "$T/nii-s.npz"
head -c 300 "$T/nii/sub-01.nii" >"$T/cut.nii"
run emoe-prep -f nifti -o "$T/nii-c.npz" "$T/cut.nii"
check "truncated NIfTI: exit 1" status_is 1
check "truncated NIfTI: named" stderr_has "^emoe-prep: $T/cut.nii: "
check "truncated NIfTI: no output file" no_file "$T/nii-c.npz"

# ------------------------------------------------------------------ synthetic
run emoe-prep -f synthetic --per-class 3 --seed 5 --size 16 -o "$T/syn.npz"
check "synthetic: exit 0" status_is 0
check "synthetic: 8 classes x 3" member_is "$T/syn.npz" images "u8	[24,16,16,3]"
run emoe-prep -f synthetic --per-class 3 --seed 5 --size 16 -o "$T/syn2.npz"
check "synthetic: deterministic by the seed" cmp -s "$T/syn.npz" "$T/syn2.npz"
run emoe-prep -f synthetic --volumes --limit 2 --size 8 -o "$T/vol.npz"
check "synthetic --volumes: f32 volumes" member_is "$T/vol.npz" images "f32	[2,8,8,8,1]"
check "synthetic --volumes: f32 targets" member_is "$T/vol.npz" labels "f32	[2]"
check "synthetic --volumes: summary says volumes" stderr_has "2 volumes (synthetic 8x8x8x1, regression)"

# ------------------------------------------------------------------ usage errors
run emoe-prep "$T/pets.tar"
check "no -o: exit 2" status_is 2
check "no -o: says so" stderr_has "^emoe-prep: no output file"
run emoe-prep -o "$T/x.npz"
check "no SOURCE: exit 2" status_is 2
run emoe-prep -f bogus -o "$T/x.npz" "$T/pets.tar"
check "--format bogus: exit 2" status_is 2
check "--format bogus: named" stderr_has "unknown format 'bogus'"
run emoe-prep --channels 2 -o "$T/x.npz" "$T/pets.tar"
check "--channels 2: exit 2" status_is 2
run emoe-prep --split dev -o "$T/x.npz" "$T/pets.tar"
check "--split dev: exit 2" status_is 2
run emoe-prep --label medium -o "$T/x.npz" "$T/pets.tar"
check "--label medium: exit 2" status_is 2
run emoe-prep --size 0 -o "$T/x.npz" "$T/pets.tar"
check "--size 0: exit 2" status_is 2
run emoe-prep --targets t.csv -o "$T/x.npz" "$T/pets.tar"
check "--targets without the columns: exit 2" status_is 2
run emoe-prep -f synthetic -o "$T/x.npz" "$T/pets.tar"
check "synthetic with a SOURCE: exit 2" status_is 2
check "usage errors write no file" no_file "$T/x.npz"

done_testing
