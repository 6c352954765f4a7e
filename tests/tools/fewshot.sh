#!/bin/bash
# fewshot.sh: emoe-fewshot on committed feature files (tests/gen_fixtures_viz.py):
# the table equals the fixture script's own numpy implementation of the protocol
# (ridge and nearest class mean), and bad inputs give clear errors with status 1.
# The model form (-m) runs on the tiny models of tests/mk_eval_fixtures.
. "${EMOE_SRCDIR:-.}/tests/tools/tool-lib.sh"
[ -x "$TOOLS/emoe-fewshot" ] || skip_all "emoe-fewshot is not built"
F=$FIXTURES
feat=(--train-features "$F/viz_feat_train.npy" --train-labels "$F/viz_lab_train.npy"
      --test-features "$F/viz_feat_test.npy" --test-labels "$F/viz_lab_test.npy")

for probe in ridge ncm; do
    run emoe-fewshot "${feat[@]}" -s 1,5,10 -v --probe "$probe"
    check "$probe: exits 0" status_is 0
    check "$probe: table equals the numpy reference" cmp -s "$T/out" "$F/viz_fewshot_$probe.tsv"
done

run emoe-fewshot "${feat[@]}" -s 5 --seeds 2 -q
check "one shot count: exits 0" status_is 0
check "one shot count: header and one row" test "$(wc -l <"$T/out")" -eq 2
check "one shot count: no seed columns without -v" test "$(head -1 "$T/out")" = "$(printf 'shots\tmean\tstd')"
check "-q: nothing on stderr" stderr_empty

# the same seeds give the same table
run emoe-fewshot "${feat[@]}" -s 1 --seeds 4 -v
cp "$T/out" "$T/first"
run emoe-fewshot "${feat[@]}" -s 1 --seeds 4 -v -j 1
check "deterministic across runs and thread counts" cmp -s "$T/out" "$T/first"

# bad input: clear error, status 1
run emoe-fewshot --train-features "$F/viz_feat_train.npy" --train-labels "$F/viz_lab_train.npy" \
    --test-features "$F/viz_feat_test5.npy" --test-labels "$F/viz_lab_test.npy"
check "width mismatch: exits 1" status_is 1
check "width mismatch: says so" stderr_has "^emoe-fewshot: .*viz_feat_test5.npy: 5 features per sample, but .*viz_feat_train.npy has 8"
check "width mismatch: nothing on stdout" stdout_empty

run emoe-fewshot --train-features "$F/viz_feat_train.npy" --train-labels "$F/viz_lab_test.npy" \
    --test-features "$F/viz_feat_test.npy" --test-labels "$F/viz_lab_test.npy"
check "label count mismatch: exits 1" status_is 1
check "label count mismatch: says so" stderr_has "viz_lab_test.npy: 40 labels for the 60 rows of"

run emoe-fewshot "${feat[@]}" -s 16
check "too many shots: exits 1" status_is 1
check "too many shots: says so" stderr_has "16 shots of 4 classes need more than the 60 training samples"

run emoe-fewshot --train-features "$T/missing.npy" --train-labels "$F/viz_lab_train.npy" \
    --test-features "$F/viz_feat_test.npy" --test-labels "$F/viz_lab_test.npy"
check "unreadable file: exits 1" status_is 1
check "unreadable file: names it" stderr_has "^emoe-fewshot: .*missing.npy: "

printf 'not a numpy file\n' >"$T/junk.npy"
run emoe-fewshot --train-features "$T/junk.npy" --train-labels "$F/viz_lab_train.npy" \
    --test-features "$F/viz_feat_test.npy" --test-labels "$F/viz_lab_test.npy"
check "malformed file: exits 1" status_is 1
check "malformed file: names it" stderr_has "^emoe-fewshot: .*junk.npy"

run emoe-fewshot --train-features "$F/viz_lab_train.npy" --train-labels "$F/viz_lab_train.npy" \
    --test-features "$F/viz_feat_test.npy" --test-labels "$F/viz_lab_test.npy"
check "labels as features: exits 1" status_is 1
check "labels as features: says the shape" stderr_has "features have shape (60,), not \[samples, features\]"

# the model form (-m) on tiny models and datasets from tests/mk_eval_fixtures: the
# same table as the feature files emoe-eval --features-out writes
MK=$TOOLS/../tests/mk_eval_fixtures
if [ -x "$MK" ] && [ -x "$TOOLS/emoe-eval" ]; then
    X=$T/fx
    mkdir -p "$X" && "$MK" "$X" || not_ok "mk_eval_fixtures writes the fixtures"
    M=$X/moe.safetensors
    run emoe-fewshot -m "$M" --train "$X/train.npz" --test "$X/test.npz" -s 1,5,10 -v
    check "-m: exits 0" status_is 0
    check "-m: header and three rows" test "$(wc -l <"$T/out")" -eq 4
    cp "$T/out" "$T/model-table"
    "$TOOLS/emoe-eval" -q -m "$M" --features-out "$T/trf.npy" "$X/train.npz" >/dev/null
    "$TOOLS/emoe-eval" -q -m "$M" --features-out "$T/tef.npy" "$X/test.npz" >/dev/null
    run emoe-fewshot --train-features "$T/trf.npy" --train-labels "$X/train-labels.npy" \
        --test-features "$T/tef.npy" --test-labels "$X/test-labels.npy" -s 1,5,10 -v
    check "-m: the same table as emoe-eval's feature files" cmp -s "$T/out" "$T/model-table"
    run_stdin "$X/test.npz" emoe-fewshot -m "$M" --train "$X/train.npz" --test - -s 1,5,10 -v
    check "-m with --test -: the same table" cmp -s "$T/out" "$T/model-table"

    run emoe-fewshot -m "$M" --train "$X/train.npz" --test "$X/big.npz"
    check "-m, images of another size: exits 1" status_is 1
    check "-m, images of another size: says so" stderr_has "big.npz: images are (16, 16), the model takes (8, 8)"
    run emoe-fewshot -m "$M" --train "$X/reg.npz" --test "$X/test.npz"
    check "-m, regression targets: exits 1" status_is 1
    check "-m, regression targets: says so" stderr_has "reg.npz: labels are f32"
    run emoe-fewshot -m "$M" --train "$X/train.npz" --test "$X/test.npz" -s 11
    check "-m, too many shots: exits 1" status_is 1
    check "-m, too many shots: names the training set" stderr_has "train.npz: "
fi
run emoe-fewshot -m "$T/model.safetensors" --train "$T/a.npz" --test "$T/b.npz"
check "-m, unreadable model: exits 1" status_is 1
check "-m, unreadable model: names it" stderr_has "^emoe-fewshot: .*model.safetensors: "
run emoe-fewshot -m - --train "$T/a.npz" --test "$T/b.npz"
check "-m -: exits 2" status_is 2

# usage errors: status 2
run emoe-fewshot --train-features "$F/viz_feat_train.npy"
check "incomplete feature files: exits 2" status_is 2
check "incomplete feature files: says which" stderr_has "needs all of --train-features"
run emoe-fewshot "${feat[@]}" -m x
check "both forms: exits 2" status_is 2
run emoe-fewshot "${feat[@]}" -s 1,,5
check "bad shot list: exits 2" status_is 2
run emoe-fewshot "${feat[@]}" --probe svm
check "bad probe: exits 2" status_is 2
check "bad probe: names it" stderr_has "'svm' is not ridge or ncm"
done_testing
