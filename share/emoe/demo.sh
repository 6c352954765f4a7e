#!/bin/sh
# demo.sh: the end-to-end demo, run by `sh build/setup.sh demo` with the built tools
# on PATH (or by hand after `make install`).  Usage: demo.sh [OUTDIR]
#
# On the procedural dataset of emoe-prep (8 classes of shapes and textures), it
# trains a small ViT with EMoE eigen-router branches, evaluates it with routing
# statistics, probes its features few-shot, and draws the expert x class heatmap.
# About a minute on 2 cores.
set -eu
out=${1:-emoe-demo}
mkdir -p "$out"
cd "$out"
say() { printf '\n== %s\n' "$*"; }

say "prepare: synthetic 32x32 images, 8 classes (train 3200, test 400)"
emoe-prep -f synthetic --seed 1 --per-class 400 --size 32 --stats -o train.npz
emoe-prep -f synthetic --seed 2 --per-class 50 --size 32 -o test.npz
emoe-info train.npz test.npz

say "train: ViT (D 96, depth 4, patch 8) with eigen-router MoE branches after blocks 1 and 2"
emoe-train -d train.npz -v test.npz -o model.safetensors --log train.jsonl -q \
    --embed-dim 96 --depth 4 --heads 4 --patch 8 --mlp-ratio 2 \
    --router eigen --moe-blocks 1,2 --experts 4 --rank 16 --bottleneck 96 \
    --epochs 6 --batch 32 --lr 1e-3 --warmup 20 --no-augment
echo "validation after each epoch (from train.jsonl):"
grep '"type":"eval"' train.jsonl | sed 's/.*"epoch":\([0-9]*\).*"val_top1":\([0-9.]*\).*/  epoch \1  top-1 \2/'
emoe-info model.safetensors | head -4

say "evaluate: accuracy and per-layer routing statistics (chance is 0.125)"
emoe-eval -m model.safetensors --routing-out routing.npy --features-out features.npy test.npz

say "few-shot linear probe on the model's features (ridge, 3 seeds)"
emoe-fewshot -m model.safetensors --train train.npz --test test.npz --shots 1,5,10,25

say "routing heatmap: experts x classes"
emoe-heatmap routing.npy --classes test.npz --layer all --normalize class \
    --title "EMoE routing on the synthetic test set" -o heatmap.png
emoe-heatmap routing.npy --classes test.npz --layer all --normalize class --ascii

say "done: files in $(pwd)"
ls -l
