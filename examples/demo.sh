#!/usr/bin/env bash
# `make demo`: build the localization corpus, train a small task-MoE model
# (token-routed encoder, task-routed decoder) on all 16 directions, score every
# direction, extract the en-de sub-network and decode it again.
# Re-running is cheap: every step skips work whose output already exists
# (fairseq-train resumes from checkpoint_last.pt and stops at MAX_UPDATE).
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=${DATA:-data/loc8}
OUT=${OUT:-demo}
MAX_UPDATE=${MAX_UPDATE:-800}
EXTRACT_PAIR=${EXTRACT_PAIR:-en-de}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

if [ ! -f "$DATA/DATA_CARD.md" ]; then
  echo "== building the corpus into $DATA"
  fairseq-taskmoe-prepare-data --out "$DATA"
fi
PAIRS=$(cat "$DATA/lang_pairs.txt")
TASK_FLAGS=(--user-dir fairseq_taskmoe --task translation_multi_simple_epoch_taskmoe
            --lang-pairs "$PAIRS" --encoder-langtok src --decoder-langtok)
mkdir -p "$OUT"

echo "== training transformer_taskmoe_tiny-based model for $MAX_UPDATE updates (log: $OUT/train.log)"
fairseq-train "$DATA" "${TASK_FLAGS[@]}" \
  --arch transformer_taskmoe_tiny --encoder-embed-dim 128 --decoder-embed-dim 128 \
  --encoder-ffn-embed-dim 256 --decoder-ffn-embed-dim 256 --encoder-layers 3 --decoder-layers 3 \
  --share-all-embeddings --moe-expert-count 8 --moe-encoder-routing token --moe-decoder-routing task \
  --criterion label_smoothed_cross_entropy_moe --label-smoothing 0.1 --moe-aux-loss-weight 0.01 \
  --optimizer adam --adam-betas '(0.9,0.98)' --lr 3e-3 --lr-scheduler inverse_sqrt --warmup-updates 300 \
  --dropout 0.1 --max-tokens 6000 --max-update "$MAX_UPDATE" --clip-norm 1.0 \
  --sampling-method temperature --sampling-temperature 1.5 \
  --save-dir "$OUT/ckpt" --no-epoch-checkpoints --save-interval-updates 400 --keep-interval-updates 1 \
  --validate-interval-updates 400 --num-workers 0 --log-format simple --log-interval 50 \
  --seed 1 >"$OUT/train.log" 2>&1 || { tail -30 "$OUT/train.log"; exit 1; }
grep -E "\| valid \|" "$OUT/train.log" | tail -1

CKPT="$OUT/ckpt/checkpoint_last.pt"
echo "== scoring all directions (beam 4, sacrebleu on detokenized text)"
python -m fairseq_taskmoe.evaluate "$CKPT" --data "$DATA" --pairs "$PAIRS" --user-dir fairseq_taskmoe \
  --json "$OUT/scores_full.json"

echo "== extracting the $EXTRACT_PAIR sub-network"
fairseq-taskmoe-extract "$CKPT" --tasks "$EXTRACT_PAIR" --out "$OUT/extract-$EXTRACT_PAIR" --force
python -m fairseq_taskmoe.evaluate "$OUT/extract-$EXTRACT_PAIR/checkpoint.pt" --data "$DATA" \
  --pairs "$EXTRACT_PAIR" --lang-pairs "$PAIRS" --user-dir fairseq_taskmoe \
  --json "$OUT/scores_extracted.json"
python examples/demo_summary.py "$OUT" "$EXTRACT_PAIR"
