#!/usr/bin/env bash
# Every CLI step on full-size real backbones (docs/own-model.md): a 200-image synthetic setting,
# random weights saved by open_clip's own code (RN50 training output, ViT-B-16 plain state dict) and
# by CLIPModel.save_pretrained; finetune (1 epoch), evaluate, discover, mitigate --method ravl, export.
# Writes OUT/times.tsv (step, exit code, wall seconds). Needs the open-clip and hf extras.
#   bash benchmarks/own_model_cli.sh [OUT] [--no-verify]
set -u
OUT=${1:-benchmarks/results/own_model_cli}
VERIFY=${2:-}
PY=${PY:-python}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"
T=$OUT/times.tsv
step() {  # name cmd...
  local name=$1; shift
  local t0 t1 rc
  t0=$(date +%s.%N)
  "$@" > "$OUT/$name.log" 2>&1; rc=$?
  t1=$(date +%s.%N)
  printf "%s\t%s\t%.1f\n" "$name" "$rc" "$(echo "$t1 - $t0" | bc)" | tee -a "$T"
}
[ -f "$OUT/setting/setting.json" ] || step make-benchmark $PY -m ravl make-benchmark --out "$OUT/setting" --n-train 200 --n-eval 200 --quiet
[ -f "$OUT/weights/vit_b_16.pt" ] || step make-weights $PY "$HERE/own_model_weights.py" "$OUT/weights"
for spec in "rn50|open_clip:RN50|$OUT/weights/rn50_epoch_1.pt" "vitb16|open_clip:ViT-B-16|$OUT/weights/vit_b_16.pt" \
            "hf|hf:$OUT/weights/hf-clip-vit-b-16|"; do
  IFS='|' read -r tag model ck <<< "$spec"
  ckargs=(); [ -n "$ck" ] && ckargs=(--checkpoint "$ck")
  step "$tag-finetune" $PY -m ravl finetune --model "$model" "${ckargs[@]}" --data "$OUT/setting/train" --out "$OUT/$tag/ft" --epochs 1 --batch-size 16 --quiet
  step "$tag-evaluate" $PY -m ravl evaluate --checkpoint "$OUT/$tag/ft" --data "$OUT/setting/eval" --split test --json "$OUT/$tag/evaluate.json" --quiet
  step "$tag-discover" $PY -m ravl discover --checkpoint "$OUT/$tag/ft" --data "$OUT/setting/eval" --out "$OUT/$tag/disc" --quiet
  disc=$OUT/$tag/disc/discovery.json
  if ! $PY -c "import json,sys; sys.exit(0 if json.load(open('$disc'))['status'] == 'ok' else 1)"; then
    # one epoch from random weights learns no shortcut: mitigate the planted feature instead
    $PY "$HERE/planted_discovery.py" "$OUT/setting/eval" "$OUT/$tag/planted.json" > /dev/null; disc=$OUT/$tag/planted.json
  fi
  step "$tag-mitigate" $PY -m ravl mitigate --checkpoint "$OUT/$tag/ft" --data "$OUT/setting/train" --discovery "$disc" --method ravl --region-mode roi --out "$OUT/$tag/fixed" --epochs 1 --batch-size 16 --quiet $VERIFY
  step "$tag-export" $PY -m ravl export --checkpoint "$OUT/$tag/ft" --out "$OUT/$tag/exported"
done
