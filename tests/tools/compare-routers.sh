#!/bin/bash
# compare-routers.sh: share/emoe/compare-routers.sh, the router comparison, runs end
# to end on a tiny synthetic set (1 epoch; about 8 s on 2 cores): five models trained
# (with -a options) and evaluated, one table with a row per router, a heatmap per
# routed model, and a usage error for wrong arguments.
. "${EMOE_SRCDIR:-.}/tests/tools/tool-lib.sh"
for t in emoe-prep emoe-train emoe-eval emoe-heatmap; do
    [ -x "$TOOLS/$t" ] || skip_all "$t is not built"
done
script=$EMOE_SRCDIR/share/emoe/compare-routers.sh
run emoe-prep -f synthetic --size 16 --per-class 20 --seed 1 -q -o "$T/tr.npz"
check "prep: training split" status_is 0
run emoe-prep -f synthetic --size 16 --per-class 10 --seed 2 -q -o "$T/te.npz"
check "prep: test split" status_is 0

rc=0
EMOE_BIN=$TOOLS bash "$script" -e 1 -j 2 -a "--batch 32 --warmup 5 --log-every 2" -o "$T/cr" \
    "$T/tr.npz" "$T/te.npz" \
    >"$T/out" 2>"$T/err" || rc=$?
check "runs to the end" status_is 0
check "table header" stdout_has "^router *top1 *top5 *load_cv *min_share *entropy"
for r in eigen ermoe softmax softmax-lbl none; do
    check "$r: a row with numbers" grep -Eq "^$r +0\.[0-9]+ +[01]\.[0-9]+ " "$T/out"
    check "$r: model written" test -s "$T/cr/$r.safetensors"
done
for r in eigen ermoe softmax softmax-lbl; do
    check "$r: heatmap is a PNG" sh -c "head -c 8 '$T/cr/$r.heatmap.png' | od -An -tx1 | grep -q '89 50 4e 47 0d 0a 1a 0a'"
done
check "none: no heatmap (no routing)" no_file "$T/cr/none.heatmap.png"
check "table.tsv has 5 rows" test "$(tail -n +2 "$T/cr/table.tsv" | wc -l)" -eq 5
# -a reaches every run: batch 32 on 160 images is 5 steps an epoch (the recipes' 128: 2)
for r in eigen ermoe softmax softmax-lbl none; do
    check "$r: -a options used (5 steps)" grep -q '"type":"save","step":5,' "$T/cr/$r.jsonl"
done

rc=0
bash "$script" >"$T/out" 2>"$T/err" || rc=$?
check "no arguments: exit 2" status_is 2
check "no arguments: usage" stderr_has "usage:"
done_testing
