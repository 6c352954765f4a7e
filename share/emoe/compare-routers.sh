#!/bin/bash
# compare-routers.sh: the router comparison of the EMoE paper at CPU scale.
#
#   compare-routers.sh [-e EPOCHS] [-n PER_CLASS] [-o OUTDIR] [-j N] [-a 'OPTIONS']
#                      SOURCE|TRAIN.npz [TEST.npz]
#
# Trains the same ViT (the CPU recipes share/emoe/cifar10-*.conf: vit-micro, branches
# after blocks 3-5, E 8) with the eigen router (EMoE), the ERMoE-style router, the
# softmax router without and with the Switch load-balancing loss, and no branch; then
# evaluates each on the test split and prints one table (top-1, top-5, and the routing
# statistics of METHOD.md section 5 averaged over the MoE layers: load CV, min share,
# normalised entropy), and draws each model's expert x class routing heatmap.
#
# SOURCE is a dataset in its original form that emoe-prep reads with --split train and
# --split test (e.g. cifar-10-jpg.zip or cifar-10-binary.tar.gz); or give two dataset
# .npz files.  -n keeps PER_CLASS training images per class (quick runs); -e sets the
# epochs (default: the recipes' 30); -a adds emoe-train options to every run (after
# the recipe, so they win; split at spaces), e.g. -a '--batch 32 --warmup 20' for a
# short run.  Everything goes to OUTDIR (default ./compare-routers): models, JSON
# Lines logs, routing tensors, heatmaps, table.tsv.
set -euo pipefail
epochs="" per_class="" out=compare-routers threads="" add=""
while getopts "e:n:o:j:a:h" opt; do
    case $opt in
    e) epochs=$OPTARG ;;
    n) per_class=$OPTARG ;;
    o) out=$OPTARG ;;
    j) threads=$OPTARG ;;
    a) add=$OPTARG ;;
    h) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) exit 2 ;;
    esac
done
shift $((OPTIND - 1))
[ $# -ge 1 ] && [ $# -le 2 ] || { echo "usage: $0 [-e EPOCHS] [-n PER_CLASS] [-o OUTDIR] [-j N] [-a 'OPTIONS'] SOURCE|TRAIN.npz [TEST.npz]" >&2; exit 2; }

here=$(cd "$(dirname "$0")" && pwd)
# the recipes: next to this script when installed, or in the source tree
confdir=$here
[ -e "$confdir/cifar10-eigen.conf" ] || { echo "$0: the cifar10-*.conf recipes are not in $here" >&2; exit 1; }
bin=${EMOE_BIN:-}
tool() { if [ -n "$bin" ]; then "$bin/$1" "${@:2}"; else "$@"; fi; }
common=()
[ -n "$threads" ] && common+=(-j "$threads")

mkdir -p "$out"
if [ $# -eq 2 ]; then
    train=$1 test=$2
else
    train=$out/train.npz test=$out/test.npz
    sel=()
    [ -n "$per_class" ] && sel=(--per-class "$per_class")
    [ -e "$train" ] || tool emoe-prep -q "${common[@]}" "${sel[@]}" --split train -o "$train" "$1"
    [ -e "$test" ] || tool emoe-prep -q "${common[@]}" --split test -o "$test" "$1"
fi

runs=(eigen ermoe softmax softmax-lbl none)
extra=()
[ -n "$epochs" ] && extra+=(--epochs "$epochs")
# shellcheck disable=SC2206
[ -n "$add" ] && extra+=($add)
for r in "${runs[@]}"; do
    echo "== training $r" >&2
    tool emoe-train --config "$confdir/cifar10-$r.conf" "${extra[@]}" "${common[@]}" \
        -d "$train" -v "$test" -o "$out/$r.safetensors" --log "$out/$r.jsonl"
    routing=()
    [ "$r" = none ] || routing=(--routing-out "$out/$r.routing.npy")
    tool emoe-eval -q "${common[@]}" -m "$out/$r.safetensors" --tsv "${routing[@]}" \
        "$test" >"$out/$r.eval.tsv"
    if [ "$r" != none ]; then
        tool emoe-heatmap -q -n class -c "$test" -t "$r" -o "$out/$r.heatmap.png" \
            "$out/$r.routing.npy"
    fi
done

# one table: mean of the per-layer statistics
{
    printf 'router\ttop1\ttop5\tload_cv\tmin_share\tentropy\n'
    for r in "${runs[@]}"; do
        awk -F'\t' -v r="$r" '
            $1 == "top1" { t1 = $2 } $1 == "top5" { t5 = $2 }
            $1 ~ /^routing\.[0-9]+\.cv$/ { cv += $2; n++ }
            $1 ~ /^routing\.[0-9]+\.min_share$/ { ms += $2 }
            $1 ~ /^routing\.[0-9]+\.entropy$/ { en += $2 }
            END {
                if (n) printf "%s\t%.4f\t%.4f\t%.3f\t%.4f\t%.3f\n", r, t1, t5, cv / n, ms / n, en / n
                else printf "%s\t%.4f\t%.4f\t-\t-\t-\n", r, t1, t5
            }' "$out/$r.eval.tsv"
    done
} >"$out/table.tsv"
# aligned columns (column(1) is not in every Debian install)
awk -F'\t' '{ printf "%-12s", $1; for (i = 2; i <= NF; i++) printf " %-9s", $i; printf "\n" }' \
    "$out/table.tsv" | sed 's/ *$//'
echo "heatmaps: $out/*.heatmap.png" >&2
