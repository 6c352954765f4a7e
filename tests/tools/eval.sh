#!/bin/bash
# eval.sh: emoe-eval on tiny models and datasets written by tests/mk_eval_fixtures:
# TSV and JSON metrics, per-class accuracy, predictions that agree with the metrics,
# logits equal to the model's own forward, .npy outputs piped into emoe-heatmap and
# emoe-info, DATA from standard input, regression metrics, and bad inputs (exit 1, no
# output file) and usage errors (exit 2).
. "${EMOE_SRCDIR:-.}/tests/tools/tool-lib.sh"
[ -x "$TOOLS/emoe-eval" ] || skip_all "emoe-eval is not built"
MK=$TOOLS/../tests/mk_eval_fixtures
[ -x "$MK" ] || skip_all "tests/mk_eval_fixtures is not built"
X=$T/fx
mkdir -p "$X" && "$MK" "$X" || { echo "# mk_eval_fixtures failed"; exit 1; }
M=$X/moe.safetensors
value() { awk -F'\t' -v k="$1" '$1 == k {print $2}' "$T/out"; }

# ------------------------------------------------------------- TSV metrics
run emoe-eval -m "$M" "$X/test.npz"
check "tsv: exits 0" status_is 0
check "tsv: header" test "$(head -1 "$T/out")" = "$(printf 'metric\tvalue')"
check "tsv: count" test "$(value count)" = 11
check "tsv: top5 is 1 with 3 classes" test "$(value top5)" = 1.000000
check "tsv: has top1 and loss" test -n "$(value top1)" -a -n "$(value loss)"
check "tsv: routing of both MoE layers" test "$(value routing.0.tokens)" = 44 -a "$(value routing.1.experts)" = 3
check "tsv: every line is metric<TAB>value" awk -F'\t' 'NF != 2 {exit 1}' "$T/out"
check "tsv: nothing on stderr" stderr_empty
cp "$T/out" "$T/metrics"

# top-1 equals the fraction of predictions that are right
run emoe-eval -m "$M" --predictions "$X/test.npz"
check "predictions: exits 0" status_is 0
check "predictions: header" test "$(head -1 "$T/out")" = "$(printf 'index\tlabel\tprediction\tprobability')"
check "predictions: one row per image" test "$(wc -l <"$T/out")" -eq 12
right=$(awk -F'\t' 'NR > 1 && $2 == $3 {n++} END {printf "%.6f", n / 11}' "$T/out")
check "predictions: top1 ($right) is the fraction right" grep -q "^top1	$right\$" "$T/metrics"
check "predictions: probabilities in (0, 1]" awk -F'\t' 'NR > 1 && !($4 > 0 && $4 <= 1) {exit 1}' "$T/out"
check "predictions: the metrics go to stderr" stderr_has "^top1	$right"

# per-class
run emoe-eval -m "$M" --per-class "$X/test.npz"
check "per-class: exits 0" status_is 0
check "per-class: named by the dataset's classes" stdout_has "^class.owl.accuracy	"
check "per-class: counts add up to 11" test "$(awk -F'\t' '/^class\..*\.count/ {n += $2} END {print n}' "$T/out")" = 11
check "per-class: the same top-level metrics" test "$(grep -v '^class\.' "$T/out")" = "$(cat "$T/metrics")"

# JSON
run emoe-eval -m "$M" --json --per-class "$X/test.npz"
check "json: exits 0" status_is 0
check "json: one line" test "$(wc -l <"$T/out")" -eq 1
check "json: an object with the metrics" grep -q '^{"model":".*","task":"classify","count":11,"top1":.*,"top5":1,"loss":.*}$' "$T/out"
check "json: per-class with names" stdout_has '"per_class":\[{"class":0,"name":"cat","count":4,'
check "json: routing per layer" stdout_has '"routing":\[{"layer":0,"block":0,"experts":3,"tokens":44,'

# ----------------------------------------------------------------- outputs
run emoe-eval -m "$M" -b 1 -j 1 --logits-out "$T/logits.npy" "$X/test.npz"
check "logits-out: exits 0" status_is 0
check "logits-out: equal to the model's forward" cmp "$T/logits.npy" "$X/ref-logits.npy"
check "logits-out: metrics still on stdout" test "$(cat "$T/out")" = "$(cat "$T/metrics")"

run emoe-eval -m "$M" -b 4 --logits-out "$T/l4.npy" --features-out "$T/f.npy" \
    --confusion-out "$T/conf.npy" --routing-out "$T/routing.npy" "$X/test.npz"
check "all outputs: exits 0" status_is 0
check "all outputs: no temporaries left" only_files "$T" l4.npy f.npy conf.npy routing.npy \
    logits.npy metrics out err fx
run emoe-info --tsv "$T/l4.npy" "$T/f.npy" "$T/conf.npy" "$T/routing.npy"
check "emoe-info reads them" status_is 0
check "logits are f32 [11,3]" stdout_has "l4.npy	-	f32	\[11,3\]"
check "features are f32 [11,8]" stdout_has "f.npy	-	f32	\[11,8\]"
check "confusion is i64 [3,3]" stdout_has "conf.npy	-	i64	\[3,3\]"
check "routing is f32 [2,3,3]" stdout_has "routing.npy	-	f32	\[2,3,3\]"
run emoe-info --stats --tsv "$T/conf.npy" "$T/routing.npy"
# mean of the confusion matrix: 11 images / 9 cells; of the routing: 2 x 44 tokens / 18
check "confusion counts every image" stdout_has "conf.npy	-	i64	\[3,3\]	72	0	[0-9]*	1.2222222"
check "routing counts every routed token" stdout_has "routing.npy	-	f32	\[2,3,3\]	72	0	[0-9]*	4.8888888"

# pipes: routing into emoe-heatmap and emoe-info
rc=0
"$TOOLS/emoe-eval" -m "$M" --routing-out - "$X/test.npz" 2>"$T/err" |
    "$TOOLS/emoe-heatmap" - -o "$T/map.png" 2>>"$T/err" || rc=$?
check "routing-out - | emoe-heatmap: exits 0" status_is 0
check "routing-out - | emoe-heatmap: writes a PNG" test "$(head -c 8 "$T/map.png" | od -An -c | tr -d ' ')" = "211PNG\r\n032\n"
check "routing-out -: the metrics went to stderr" stderr_has "^routing.1.tokens	44"
rc=0
"$TOOLS/emoe-eval" -q -m "$M" --routing-out - "$X/test.npz" 2>"$T/err" | "$TOOLS/emoe-info" - >"$T/out" || rc=$?
check "routing-out - | emoe-info: exits 0" status_is 0
check "routing-out - | emoe-info: f32 (2, 3, 3)" stdout_has "f32 *(2, 3, 3)"
check "-q with an output on stdout: no metrics" stderr_empty
# a tensor of the wrong rank for emoe-heatmap
rc=0
"$TOOLS/emoe-eval" -q -m "$M" --logits-out - "$X/test.npz" 2>/dev/null |
    "$TOOLS/emoe-heatmap" - -o "$T/bad.png" 2>"$T/err" || rc=$?
check "logits into emoe-heatmap: exits 1" status_is 1
check "logits into emoe-heatmap: says the shape is wrong" stderr_has "^emoe-heatmap: <stdin>: routing tensor has shape (11, 3), not \\[layers"
check "logits into emoe-heatmap: no picture" no_file "$T/bad.png"

# DATA from standard input: the same metrics
run_stdin "$X/test.npz" emoe-eval -m "$M" -
check "stdin: exits 0" status_is 0
check "stdin: the same metrics" test "$(cat "$T/out")" = "$(cat "$T/metrics")"

# ------------------------------------------------------------- regression
run emoe-eval -m "$X/reg.safetensors" "$X/reg.npz"
check "regression: exits 0" status_is 0
check "regression: mae, rmse, r2, loss" test -n "$(value mae)" -a -n "$(value rmse)" -a -n "$(value r2)" -a "$(value loss)" = "$(value mae)"
check "regression: no accuracy" test -z "$(value top1)"
run emoe-eval -m "$X/reg.safetensors" --predictions "$X/reg.npz"
check "regression predictions: exits 0" status_is 0
check "regression predictions: header" test "$(head -1 "$T/out")" = "$(printf 'index\ttarget\tprediction')"
mae=$(awk -F'\t' 'NR > 1 {d = $3 - $2; s += d < 0 ? -d : d} END {printf "%.4g", s / 11}' "$T/out")
got=$(awk -F'\t' '$1 == "mae" {printf "%.4g", $2}' "$T/err")
check "regression: mae ($got) from the predictions ($mae)" test "$mae" = "$got"

# a plain ViT: no routing
run emoe-eval -m "$X/plain.safetensors" "$X/test.npz"
check "plain: exits 0" status_is 0
check "plain: no routing lines" test -z "$(grep '^routing' "$T/out")"

# ------------------------------------------------------- bad input: exit 1
run emoe-eval -m "$M" --logits-out "$T/x.npy" "$X/big.npz"
check "size mismatch: exits 1" status_is 1
check "size mismatch: says so" stderr_has "^emoe-eval: .*big.npz: images are (16, 16), the model takes (8, 8)"
check "size mismatch: no output file" no_file "$T/x.npy"
check "size mismatch: nothing on stdout" stdout_empty

run emoe-eval -m "$M" --routing-out "$T/x.npy" "$X/reg.npz"
check "regression data on a classifier: exits 1" status_is 1
check "regression data on a classifier: says so" stderr_has "reg.npz: labels are f32, the classifier needs integer labels"
check "regression data on a classifier: no output file" no_file "$T/x.npy"

run emoe-eval -m "$X/plain.safetensors" --routing-out "$T/x.npy" "$X/test.npz"
check "routing-out without MoE: exits 1" status_is 1
check "routing-out without MoE: says so" stderr_has "plain.safetensors: --routing-out: the model has no MoE layers"
check "routing-out without MoE: no output file" no_file "$T/x.npy"

run emoe-eval -m "$X/reg.safetensors" --confusion-out "$T/x.npy" "$X/reg.npz"
check "confusion of a regression model: exits 1" status_is 1
check "confusion of a regression model: no output file" no_file "$T/x.npy"

run emoe-eval -m "$M" --logits-out "$T/x.npy" "$T/missing.npz"
check "unreadable data: exits 1" status_is 1
check "unreadable data: names it" stderr_has "^emoe-eval: .*missing.npz: "
check "unreadable data: no output file" no_file "$T/x.npy"

run emoe-eval -m "$T/missing.safetensors" "$X/test.npz"
check "unreadable model: exits 1" status_is 1
check "unreadable model: names it" stderr_has "^emoe-eval: .*missing.safetensors: "

run emoe-eval -m "$X/test.npz" "$X/test.npz" --features-out "$T/x.npy"
check "a dataset as the model: exits 1" status_is 1
check "a dataset as the model: names it" stderr_has "^emoe-eval: .*test.npz: "
check "a dataset as the model: no output file" no_file "$T/x.npy"

printf 'PK\003\004 not really a zip' >"$T/junk.npz"
run emoe-eval -m "$M" "$T/junk.npz"
check "malformed data: exits 1" status_is 1
check "malformed data: names it" stderr_has "^emoe-eval: .*junk.npz"
run emoe-eval -m "$M" "$X/ref-logits.npy"
check "an .npy as data: exits 1" status_is 1

# ----------------------------------------------------- usage errors: exit 2
run emoe-eval "$X/test.npz"
check "no model: exits 2" status_is 2
run emoe-eval -m "$M"
check "no data: exits 2" status_is 2
run emoe-eval -m "$M" "$X/test.npz" "$X/test.npz"
check "two datasets: exits 2" status_is 2
run emoe-eval -m "$M" --logits-out - --routing-out - "$X/test.npz"
check "two outputs on stdout: exits 2" status_is 2
check "two outputs on stdout: says so" stderr_has "both write to standard output"
run emoe-eval -m "$M" --predictions --features-out - "$X/test.npz"
check "predictions and an output on stdout: exits 2" status_is 2
run emoe-eval -m "$M" --logits-out "$X/test.npz" "$X/test.npz"
check "output over the input: exits 2" status_is 2
run emoe-eval -m "$M" --logits-out "$T/a.npy" --features-out "$T/a.npy" "$X/test.npz"
check "one file for two outputs: exits 2" status_is 2
check "usage errors create nothing" no_file "$T/a.npy"
run emoe-eval -m "$M" -b 0 "$X/test.npz"
check "batch 0: exits 2" status_is 2
done_testing
