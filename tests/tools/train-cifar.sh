#!/bin/bash
# train-cifar.sh: EMoE (eigen router) with a small ViT on the real CIFAR-10 JPEGs
# (../shared/data; skipped when absent): one epoch over the 50,000 training images
# beats 35% top-1 on 2,000 test images (200 per class).  About 1.5 minutes of CPU:
# a patch-8 ViT (D 64, depth 3) keeps it within the CI budget.
. "${EMOE_SRCDIR:-.}/tests/tools/tool-lib.sh"
zip=${EMOE_SHARED_DATA:-/nonexistent}/cifar-10-jpg/cifar-10-jpg.zip
[ -r "$zip" ] || skip_all "no CIFAR-10 JPEGs ($zip)"
[ -x "$TOOLS/emoe-train" ] && [ -x "$TOOLS/emoe-prep" ] || skip_all "emoe-train or emoe-prep is not built"

run emoe-prep -q --split train -o "$T/train.npz" "$zip"
check "prep train: exits 0" status_is 0
run emoe-prep -q --split test --per-class 200 -o "$T/test.npz" "$zip"
check "prep test: exits 0" status_is 0
run emoe-train -d "$T/train.npz" -v "$T/test.npz" -o "$T/m.safetensors" --router eigen \
    --embed-dim 64 --depth 3 --heads 4 --patch 8 --experts 4 --rank 16 --bottleneck 32 \
    --moe-blocks last2 --batch 32 --lr 3e-3 --warmup 20 --epochs 1 --no-augment \
    --log "$T/log.jsonl" --log-every 500
check "train: exits 0" status_is 0
top1=$(grep '"type":"eval"' "$T/log.jsonl" | tail -1 | sed 's/.*"val_top1":\([0-9.e-]*\).*/\1/')
echo "# validation top-1 after one epoch: $top1"
check "one epoch beats 35% top-1 ($top1)" awk -v a="$top1" 'BEGIN { exit !(a > 0.35) }'
check "routing statistics logged" grep -q '"type":"eval".*"layers":\[{"block":1,.*"cv":' "$T/log.jsonl"
done_testing
