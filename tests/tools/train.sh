#!/bin/bash
# train.sh: emoe-train on a small separable dataset (tests/mk_train_fixtures):
# every router learns it well above chance, the JSON Lines log has its fields
# (a key for each loss term on in the run, none for the others),
# kill -9 then --resume ends with the same bytes as an uninterrupted run, SIGINT
# and SIGTERM save and exit 130/143, a non-finite loss stops cleanly, --config
# equals the command line, and bad options (2) or bad data (1) write nothing.
. "${EMOE_SRCDIR:-.}/tests/tools/tool-lib.sh"
[ -x "$TOOLS/emoe-train" ] || skip_all "emoe-train is not built"
MK=$TOOLS/../tests/mk_train_fixtures
[ -x "$MK" ] || skip_all "tests/mk_train_fixtures is not built"
"$MK" "$T/tr.npz" 40 1 && "$MK" "$T/va.npz" 16 2 && "$MK" "$T/big.npz" 2 3 32 \
    && "$MK" "$T/small.npz" 10 4 || { echo "cannot make the datasets"; exit 1; }
tiny=(--embed-dim 32 --depth 2 --heads 2 --mlp-ratio 2 --experts 4 --rank 8 --bottleneck 16
      --moe-blocks all --batch 32 --lr 3e-3 --warmup 5 --no-augment)
last_top1() { grep '"type":"eval"' "$1" | tail -1 | sed 's/.*"val_top1":\([0-9.e-]*\).*/\1/'; }
not_same() { ! cmp -s "$1" "$2"; }
lacks() { ! grep -q -- "$1" "$2"; }
above() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a > b) }'; }

# --- every router learns (chance is 0.125)
for r in eigen ermoe softmax "softmax --lbl 0.01" none; do
    mkdir -p "$T/learn"
    run emoe-train -d "$T/tr.npz" -v "$T/va.npz" -o "$T/learn/m.safetensors" "${tiny[@]}" \
        --epochs 8 --router $r --log "$T/learn/log.jsonl" --log-every 5
    check "$r: exits 0" status_is 0
    top1=$(last_top1 "$T/learn/log.jsonl")
    check "$r: validation top-1 $top1 > 0.5" above "$top1" 0.5
    check "$r: model and state only" only_files "$T/learn" m.safetensors m.safetensors.state log.jsonl
    # the log has a key for each loss term on in the run, in the step line and per layer
    case $r in
    eigen|ermoe) on=ortho_loss ;;
    "softmax --lbl 0.01") on=lbl_loss ;;
    *) on= ;;
    esac
    for f in ortho_loss lbl_loss importance_loss load_loss z_loss; do
        if [ "$f" = "$on" ]; then
            check "$r: step has $f" grep -q '"type":"step",.*"aux_loss":[^,]*,"'$f'":[0-9]' \
                "$T/learn/log.jsonl"
            check "$r: layer has $f" grep -q '"layers":\[{"block":0,.*"aux_loss":[^,]*,"'$f'":[0-9]' \
                "$T/learn/log.jsonl"
        else
            check "$r: no $f" lacks "\"$f\":" "$T/learn/log.jsonl"
        fi
    done
    rm -rf "$T/learn"
done

# --- the log and the checkpoint
run emoe-train -d "$T/tr.npz" -v "$T/va.npz" -o "$T/m.safetensors" "${tiny[@]}" --epochs 1 \
    --log - --log-every 2 --best "$T/best.safetensors"
check "log to stdout: exits 0" status_is 0
check "log: step records" stdout_has '^{"type":"step","step":2,"epoch":0.2,"lr":'
for f in loss task_loss aux_loss grad_norm train_acc images_per_s layers; do
    check "log: step has $f" grep -q "\"type\":\"step\".*\"$f\":" "$T/out"
done
for f in cv entropy peak min_share dropped unused; do
    check "log: routing has $f" grep -q "\"layers\":\[{\"block\":0,.*\"$f\":" "$T/out"
done
check "log: eval record" stdout_has '"type":"eval","step":10,"epoch":1,"val_loss":.*"val_top1":.*"val_top5":.*"best":true'
check "log: save record" stdout_has '"type":"save","step":10,"path":'
check "log: every line is one JSON object" test "$(grep -cv '^{.*}$' "$T/out")" -eq 0
check "not a terminal: nothing on stderr" stderr_empty
check "best kept" test -s "$T/best.safetensors"
if [ -x "$TOOLS/emoe-info" ]; then
    run emoe-info "$T/m.safetensors"
    check "checkpoint: readable" status_is 0
    for k in "model.num_classes = 8" "moe.router = eigen" "moe.blocks = 0,1" "train.step = 10" \
             "data.classes = c0\\\\nc1" "vit.blocks.1.attn.qkv.weight" \
             "branches.1.router.basis.Q"; do
        check "checkpoint: has '$k'" stdout_has "$k"
    done
fi

# --- resume is exact: kill -9 at a random step, SIGINT, SIGTERM; the resumed run
# takes its settings (augmentation, seed, schedule, ...) from its training state
opts=(-d "$T/tr.npz" -v "$T/va.npz")
for a in "${tiny[@]}"; do [ "$a" = --no-augment ] || opts+=("$a"); done
opts+=(--batch 16 --epochs 6 --save-every 1 --seed 7 --crop-padding 2 --hflip --wd 0.01
       --schedule linear --clip 0.5 --label-smoothing 0.1 -j 1)
run emoe-train "${opts[@]}" -o "$T/ref.safetensors"
check "reference run: exits 0" status_is 0
wait_for() { for _ in $(seq 200); do [ -e "$1" ] && return 0; sleep 0.02; done; return 1; }
for how in KILL INT TERM; do
    d=$T/$how
    mkdir -p "$d"
    "$TOOLS/emoe-train" "${opts[@]}" -o "$d/m.safetensors" >"$d/out" 2>"$d/err" </dev/null &
    pid=$!
    wait_for "$d/m.safetensors.state"
    sleep "0.$((RANDOM % 3))$((RANDOM % 10))"
    kill -s "$how" "$pid" 2>/dev/null
    rc=0
    wait "$pid" 2>/dev/null || rc=$?
    case $how in
    KILL) check "kill -9: killed or done ($rc)" test "$rc" -eq 137 -o "$rc" -eq 0 ;;
    INT) check "SIGINT: exits 130 or finished ($rc)" test "$rc" -eq 130 -o "$rc" -eq 0
         [ "$rc" -ne 130 ] || check "SIGINT: says it saved" grep -q "^emoe-train: interrupted at step [0-9]*; saved .*m.safetensors (SIGINT); resume with --resume" "$d/err" ;;
    TERM) check "SIGTERM: exits 143 or finished ($rc)" test "$rc" -eq 143 -o "$rc" -eq 0 ;;
    esac
    run emoe-train --resume "$d/m.safetensors" -d "$T/tr.npz" -v "$T/va.npz"
    check "$how: resume with no options exits 0" status_is 0
    check "$how: resumed model is byte-identical" cmp -s "$d/m.safetensors" "$T/ref.safetensors"
    check "$how: resumed state is byte-identical" cmp -s "$d/m.safetensors.state" "$T/ref.safetensors.state"
    # (kill -9 may leave the temporary of a write in progress; a signal may not)
    [ "$how" = KILL ] || check "$how: no temporary left" only_files "$d" m.safetensors m.safetensors.state out err
done

# --- the softmax router's noise (and the V-MoE load loss that needs it) resumes exactly:
# the noise of training step n depends only on (seed, branch, n)
nopts=("${opts[@]}" --router softmax --router-noise --lbl 0.01 --load-loss 0.005)
run emoe-train "${nopts[@]}" -o "$T/nref.safetensors"
check "noise reference run: exits 0" status_is 0
d=$T/noise
mkdir -p "$d"
"$TOOLS/emoe-train" "${nopts[@]}" -o "$d/m.safetensors" >"$d/out" 2>"$d/err" </dev/null &
pid=$!
wait_for "$d/m.safetensors"
kill -s KILL "$pid" 2>/dev/null
rc=0
wait "$pid" 2>/dev/null || rc=$?
check "noise: kill -9 interrupted the run ($rc)" test "$rc" -eq 137
run emoe-train --resume "$d/m.safetensors" -d "$T/tr.npz" -o "$d/m.safetensors"
check "noise: resume with no options exits 0" status_is 0
check "noise: resumed model is byte-identical" cmp -s "$d/m.safetensors" "$T/nref.safetensors"
check "noise: resumed state is byte-identical" cmp -s "$d/m.safetensors.state" "$T/nref.safetensors.state"
run emoe-train "${nopts[@]}" --seed 8 -o "$T/nref8.safetensors"
check "noise: another seed gives other weights" not_same "$T/nref8.safetensors" "$T/nref.safetensors"

# --- resume: a setting that contradicts the stored one is an error; the length may change
cp "$T/nref.safetensors" "$T/x.safetensors" && cp "$T/nref.safetensors.state" "$T/x.safetensors.state"
for args in "--lr 0.01|--lr 0.01 contradicts the run being resumed: .*x.safetensors.state has option.lr = 0.0030000000000000001" \
            "--batch 8|--batch 8 contradicts .* has option.batch = 16" \
            "--no-augment|--no-augment contradicts .* has option.no-augment = 0" \
            "--lbl 0.02|--lbl 0.0199999996 contradicts .* has option.lbl = 0.00999999978" \
            "--schedule cosine|--schedule cosine contradicts .* has option.schedule = linear" \
            "--seed 8|--seed 8 contradicts .* has option.seed = 7"; do
    run emoe-train --resume "$T/x.safetensors" -d "$T/tr.npz" ${args%%|*}
    check "resume + contradicting '${args%%|*}': exits 2" status_is 2
    check "resume + contradicting '${args%%|*}': names both values" stderr_has "${args#*|}"
done
check "resume contradictions: nothing written" cmp -s "$T/x.safetensors" "$T/nref.safetensors"
run emoe-train --resume "$T/x.safetensors" -d "$T/tr.npz" --lr 3e-3 --seed 7 --router-noise
check "resume + agreeing options: exits 0" status_is 0
check "resume + agreeing options: nothing left to do, same bytes" cmp -s "$T/x.safetensors" "$T/nref.safetensors"
run emoe-train --resume "$T/x.safetensors" -d "$T/tr.npz" --epochs 7 --log "$T/x.log"
check "resume --epochs 7 (longer): exits 0" status_is 0
check "resume --epochs 7: 20 more steps" grep -q '"type":"save","step":140,' "$T/x.log"
run emoe-train --resume "$T/x.safetensors" -d "$T/tr.npz" -j 2 --epochs 8
check "resume -j 2 (another thread count): exits 0" status_is 0
check "resume -j 2: warns" stderr_has "-j 2 differs from the 1 threads of the run being resumed"
# other training data than the run's: an error naming both, nothing written
cp "$T/x.safetensors" "$T/x.before"
run emoe-train --resume "$T/x.safetensors" -d "$T/va.npz"
check "resume on other data: exits 1" status_is 1
check "resume on other data: says so" stderr_has "^emoe-train: .*va.npz: not the training data of the run being resumed (.* x u8\\[.*\\], crc32 [0-9a-f]*; .*x.safetensors.state has "
check "resume on other data: model unchanged" cmp -s "$T/x.safetensors" "$T/x.before"
# the state written but the model not yet (killed inside the first save): say so
mkdir -p "$T/first"
cp "$T/x.safetensors.state" "$T/first/m.safetensors.state"
run emoe-train --resume "$T/first/m.safetensors" -d "$T/tr.npz"
check "resume with only the state file: exits 1" status_is 1
check "resume with only the state file: says why" stderr_has "m.safetensors: No such file or directory (its training state exists: the run was stopped during its first save"

# --- a non-finite loss stops cleanly, the previous checkpoint stays readable
mkdir -p "$T/nan"
run emoe-train -d "$T/tr.npz" -o "$T/nan/m.safetensors" "${tiny[@]}" --lr 1e9 --clip 0 \
    --warmup 0 --schedule constant --save-every 1 --epochs 3 --router softmax
check "--lr 1e9: exits 1" status_is 1
check "--lr 1e9: names the step and the term" stderr_has "^emoe-train: step [0-9]*: .* is not finite; stopped"
check "--lr 1e9: no temporary left" only_files "$T/nan" m.safetensors m.safetensors.state
check "--lr 1e9: the checkpoint of step 1 is there" test -s "$T/nan/m.safetensors"
if [ -x "$TOOLS/emoe-info" ]; then
    run emoe-info "$T/nan/m.safetensors"
    check "--lr 1e9: last checkpoint readable" status_is 0
    check "--lr 1e9: it is the last good step's" stdout_has "train.step = [1-9]"
fi

# --- config file equals the command line (command line wins)
cat >"$T/c.conf" <<EOF
# a tiny model
embed-dim = 32
depth = 2
heads = 2
mlp-ratio = 2
experts = 4
rank = 8
bottleneck = 16
moe-blocks = all
batch = 32
lr = 3e-3   # comment after a value
warmup = 5
no-augment = true
epochs = 9
EOF
run emoe-train -d "$T/small.npz" -o "$T/a.safetensors" --config "$T/c.conf" --epochs 1
check "--config: exits 0" status_is 0
run emoe-train -d "$T/small.npz" -o "$T/b.safetensors" "${tiny[@]}" --epochs 1
check "--config: same bytes as the options" cmp -s "$T/a.safetensors" "$T/b.safetensors"
run_stdin "$T/small.npz" emoe-train -d - -o "$T/c.safetensors" "${tiny[@]}" --epochs 1
check "-d -: exits 0" status_is 0
check "-d -: same bytes" cmp -s "$T/a.safetensors" "$T/c.safetensors"
rc=0
cat "$T/small.npz" | "$TOOLS/emoe-train" -d - -o "$T/p.safetensors" "${tiny[@]}" --epochs 1 \
    >"$T/out" 2>"$T/err" || rc=$?
check "-d - from a pipe: exits 0" status_is 0
check "-d - from a pipe: same bytes" cmp -s "$T/a.safetensors" "$T/p.safetensors"

# --- a checkpoint brings its configuration; contradicting it is an error
run emoe-train -d "$T/small.npz" -o "$T/ft.safetensors" --init "$T/a.safetensors" --epochs 1 \
    --freeze-backbone --no-augment
check "--init emoe checkpoint: exits 0" status_is 0
run emoe-train -d "$T/small.npz" -o "$T/ft2.safetensors" --init "$T/a.safetensors" --depth 3
check "--init + contradicting --depth: exits 2" status_is 2
check "--init + contradicting --depth: says so" stderr_has "depth contradicts .*a.safetensors, whose configuration has depth 2"
run emoe-train -d "$T/small.npz" -o "$T/ft2.safetensors" --init "$T/a.safetensors" --router softmax
check "--init + contradicting --router: exits 2" status_is 2
no_file "$T/ft2.safetensors" && ok "contradiction: nothing written" || not_ok "contradiction: nothing written"

# --- bare timm backbone weights and a reference state_dict (no metadata)
"$MK" --bare "$T/a.safetensors" "$T/bare.safetensors"
"$MK" --state-dict "$T/a.safetensors" "$T/sd.safetensors"
run emoe-train -d "$T/small.npz" -o "$T/fb.safetensors" --init "$T/bare.safetensors" \
    "${tiny[@]}" --epochs 1 --freeze-backbone
check "--init bare backbone + options: exits 0" status_is 0
check "--init bare backbone: backbone frozen (unchanged)" cmp -s \
    <("$TOOLS/emoe-info" --tsv --stats "$T/fb.safetensors" | grep -F 'vit.blocks.0.attn.qkv.weight' | cut -f2-) \
    <("$TOOLS/emoe-info" --tsv --stats "$T/a.safetensors" | grep -F 'vit.blocks.0.attn.qkv.weight' | cut -f2-)
run emoe-train -d "$T/small.npz" -o "$T/fb.safetensors" --init "$T/bare.safetensors" --epochs 1 \
    --embed-dim 48 --depth 2 --heads 2
check "--init bare backbone of another width: exits 1" status_is 1
run emoe-train -d "$T/small.npz" -o "$T/fb2.safetensors" --init "$T/bare.safetensors" \
    "${tiny[@]}" --epochs 1
check "--init bare backbone, not frozen: exits 0" status_is 0
check "--init bare backbone, not frozen: backbone trained" not_same \
    <("$TOOLS/emoe-info" --tsv --stats "$T/fb2.safetensors" | grep -F 'vit.blocks.0.attn.qkv.weight' | cut -f2-) \
    <("$TOOLS/emoe-info" --tsv --stats "$T/a.safetensors" | grep -F 'vit.blocks.0.attn.qkv.weight' | cut -f2-)
run emoe-train -d "$T/small.npz" -o "$T/fs.safetensors" --init "$T/sd.safetensors" \
    --embed-dim 32 --depth 2 --heads 2 --mlp-ratio 2 --epochs 1 --no-augment
check "--init reference state_dict: exits 0 (routing from its tensors)" status_is 0
if [ -x "$TOOLS/emoe-info" ]; then
    run emoe-info "$T/fs.safetensors"
    check "--init reference state_dict: E 4, r 8, F 16 adopted" \
        grep -q "moe.experts = 4" "$T/out"
fi
run emoe-train -d "$T/small.npz" -o "$T/fs2.safetensors" --init "$T/sd.safetensors" \
    --embed-dim 32 --depth 2 --heads 2 --mlp-ratio 2 --epochs 1 --experts 8
check "--init reference state_dict + contradicting --experts: exits 2" status_is 2

# --- the committed fixtures: timm-named backbone weights and the same weights as a
# Google ViT .npz (D 16, depth 2, 8x8 images, 5 classes) on 16x16 data with 8 classes:
# the position embedding is resampled, the head left out and trained
if [ -n "$FIXTURES" ] && [ -r "$FIXTURES/model_tiny2d_timm.safetensors" ]; then
    mkdir -p "$T/fx"
    fx=(-d "$T/tr.npz" --freeze-backbone --embed-dim 16 --depth 2 --heads 2 --patch 4
        --experts 4 --rank 8 --bottleneck 16 --moe-blocks all --batch 16 --lr 3e-3
        --schedule constant --no-augment -j 1)
    run emoe-train "${fx[@]}" --max-steps 20 --init "$FIXTURES/model_tiny2d_timm.safetensors" \
        -o "$T/fx/timm.safetensors"
    check "--init timm fixture: exits 0" status_is 0
    run emoe-train "${fx[@]}" --max-steps 20 --init "$FIXTURES/model_tiny2d_google.npz" \
        -o "$T/fx/google.safetensors"
    check "--init Google .npz fixture: exits 0" status_is 0
    check "--init Google .npz: same bytes as from the timm file of the same weights" \
        cmp -s "$T/fx/timm.safetensors" "$T/fx/google.safetensors"
    stats() { "$TOOLS/emoe-info" --tsv --stats "$1" | grep -F "	$2	" | cut -f3-; }
    if [ -x "$TOOLS/emoe-info" ]; then
        check "--init timm + --freeze-backbone: qkv unchanged" cmp -s \
            <(stats "$FIXTURES/model_tiny2d_timm.safetensors" blocks.1.attn.qkv.weight) \
            <(stats "$T/fx/timm.safetensors" vit.blocks.1.attn.qkv.weight)
        check "--init timm: a head for the 8 classes" grep -q "^vit.head.weight	f32	\[8,16\]" \
            <("$TOOLS/emoe-info" --tsv "$T/fx/timm.safetensors" | cut -f2-)
    fi
    # resuming such a run trains the new head too (it was frozen after a resume):
    # 20 steps, then --resume to 40, equals 40 steps (a constant schedule does not
    # depend on the length)
    run emoe-train "${fx[@]}" --max-steps 40 --init "$FIXTURES/model_tiny2d_timm.safetensors" \
        -o "$T/fx/ref.safetensors"
    check "frozen, new head, 40 steps: exits 0" status_is 0
    run emoe-train --resume "$T/fx/timm.safetensors" -d "$T/tr.npz" --max-steps 40
    check "frozen, new head, resumed to 40 steps: exits 0" status_is 0
    check "frozen, new head: the resumed run has the same bytes" \
        cmp -s "$T/fx/timm.safetensors" "$T/fx/ref.safetensors"
    check "frozen, new head: the resumed state has the same bytes" \
        cmp -s "$T/fx/timm.safetensors.state" "$T/fx/ref.safetensors.state"
else
    not_ok "the fixtures model_tiny2d_timm.safetensors and model_tiny2d_google.npz are there"
fi

# --- SIGINT and SIGTERM in a run far from its end: 130 / 143, the message, a
# checkpoint that resumes (the random-moment runs above may finish first)
for how in INT TERM; do
    d=$T/sig$how
    mkdir -p "$d"
    "$TOOLS/emoe-train" -d "$T/tr.npz" -o "$d/m.safetensors" "${tiny[@]}" --epochs 100000 --save-every 5 -j 1 \
        >"$d/out" 2>"$d/err" </dev/null &
    pid=$!
    wait_for "$d/m.safetensors"
    kill -s "$how" "$pid" 2>/dev/null
    rc=0
    wait "$pid" 2>/dev/null || rc=$?
    want=$((128 + $(kill -l "$how")))
    check "SIG$how far from the end: exits $want ($rc)" test "$rc" -eq "$want"
    check "SIG$how: says where it stopped and how to resume" grep -q \
        "^emoe-train: interrupted at step [0-9]*; saved .*m.safetensors (SIG$how); resume with --resume .*m.safetensors$" "$d/err"
    check "SIG$how: model and state only" only_files "$d" m.safetensors m.safetensors.state out err
    run emoe-train --resume "$d/m.safetensors" -d "$T/tr.npz" --max-steps 1
    check "SIG$how: the saved run resumes (ends at once)" status_is 0
done

# --- --eigen-init data: the basis starts from the data covariance (a training run
# with lr 0 keeps it; with random init it differs)
run emoe-train -d "$T/small.npz" -o "$T/eig.safetensors" "${tiny[@]}" --lr 0 --max-steps 1 \
    --eigen-init data --eigen-batches 2
check "--eigen-init data: exits 0" status_is 0
run emoe-train -d "$T/small.npz" -o "$T/rnd.safetensors" "${tiny[@]}" --lr 0 --max-steps 1
check "--eigen-init random (default): exits 0" status_is 0
if [ -x "$TOOLS/emoe-info" ]; then
    check "--eigen-init data: another basis Q than the random init" not_same \
        <("$TOOLS/emoe-info" --tsv --stats "$T/eig.safetensors" | grep -F 'branches.0.router.basis.Q' | cut -f2-) \
        <("$TOOLS/emoe-info" --tsv --stats "$T/rnd.safetensors" | grep -F 'branches.0.router.basis.Q' | cut -f2-)
    check "--eigen-init data: the rest is the same" cmp -s \
        <("$TOOLS/emoe-info" --tsv --stats "$T/eig.safetensors" | grep -F 'vit.blocks.0.attn.qkv.weight' | cut -f2-) \
        <("$TOOLS/emoe-info" --tsv --stats "$T/rnd.safetensors" | grep -F 'vit.blocks.0.attn.qkv.weight' | cut -f2-)
fi

# --- data and model disagree, corrupt input: exit 1, nothing written
mkdir -p "$T/bad"
run emoe-train -d "$T/big.npz" -o "$T/bad/m.safetensors" --init "$T/a.safetensors"
check "size mismatch: exits 1" status_is 1
check "size mismatch: says so" stderr_has "big.npz: images are (32, 32), the model takes (16, 16)"
run emoe-train -d "$T/tr.npz" -v "$T/big.npz" -o "$T/bad/m.safetensors" "${tiny[@]}"
check "val size mismatch: exits 1" status_is 1
head -c 3000 "$T/tr.npz" >"$T/trunc.npz"
run emoe-train -d "$T/trunc.npz" -o "$T/bad/m.safetensors" "${tiny[@]}"
check "truncated data: exits 1" status_is 1
check "truncated data: names the file" stderr_has "^emoe-train: .*trunc.npz"
run emoe-train -d "$T/tr.npz" -o "$T/bad/m.safetensors" --init "$T/bad/none.safetensors"
check "missing --init file: exits 1" status_is 1
check "missing --init file: names it" stderr_has "^emoe-train: .*none.safetensors: No such file or directory"
head -c 3000 "$T/a.safetensors" >"$T/trunc.safetensors"
run emoe-train -d "$T/small.npz" -o "$T/bad/m.safetensors" --init "$T/trunc.safetensors"
check "truncated --init checkpoint: exits 1" status_is 1
check "truncated --init checkpoint: names it" stderr_has "^emoe-train: .*trunc.safetensors: "
run emoe-train -d "$T/tr.npz" -o "$T/bad/m.safetensors" --resume "$T/bad/m.safetensors"
check "resume of a missing run: exits 1" status_is 1
check "bad cases: nothing written" only_files "$T/bad"

# --- usage errors: exit 2
for args in "--router foo" "--batch 0" "--epochs x" "--lr -1" "--schedule step" "--frobnicate" \
            "--moe-blocks 1,,2" "--task count" "--eigen-init data --router softmax"; do
    run emoe-train -d "$T/tr.npz" -o "$T/bad/m.safetensors" $args
    check "'$args': exits 2" status_is 2
done
run emoe-train -o "$T/bad/m.safetensors"
check "no -d: exits 2" status_is 2
run emoe-train -d "$T/tr.npz"
check "no -o: exits 2" status_is 2
printf 'epochs = 2\nlearning-rate = 3\n' >"$T/bad.conf"
run emoe-train -d "$T/tr.npz" -o "$T/bad/m.safetensors" --config "$T/bad.conf"
check "unknown config key: exits 2" status_is 2
check "unknown config key: names file:line" stderr_has "bad.conf:2: unknown key 'learning-rate'"
printf 'epochs = many\n' >"$T/bad2.conf"
run emoe-train -d "$T/tr.npz" -o "$T/bad/m.safetensors" --config "$T/bad2.conf"
check "bad config value: exits 2" status_is 2
check "bad config value: names file:line" stderr_has "bad2.conf:1: --epochs: 'many' is not an integer"
check "usage errors: nothing written" only_files "$T/bad"
run emoe-train --help
check "--help: exits 0" status_is 0
check "--help: usage line" stdout_has "^Usage: emoe-train "
done_testing
