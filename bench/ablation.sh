#!/usr/bin/env bash
# The MGSD ablation on the synthetic proxy (configs/ablation/*.toml): trains every config for
# every seed with the same data and step budget, evaluates last.safetensors on the held-out
# test cases (all 15 subsets), then aggregates the table (bench/ablation_table.py).
#
#   bench/ablation.sh [SEED...]              # default seeds: 0 1 2
#   CONFIGS="a-dropout d-mgsd" bench/ablation.sh 0 1 2
#   OUT=runs/ablation BIN=target/release/mgsd-train bench/ablation.sh
#   EPOCHS=10 bench/ablation.sh 0 1 2        # a smaller step budget (16 steps per epoch), the
#                                            # same for every config; say so with the results
#
# Finished runs (those with an eval.json) are kept, so the script can be interrupted and rerun;
# an unfinished run directory is started afresh. Runs go one after the other (each uses every
# core); the table is rewritten after each run, so a partial ablation still has one.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/ablation}
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release/mgsd-train}
CONFIGS=${CONFIGS:-"a-dropout b-image c-feature d-mgsd e-mgsd-prenorm"}
EPOCHS=${EPOCHS:-}
SEEDS=("$@")
[ ${#SEEDS[@]} -eq 0 ] && SEEDS=(0 1 2)
if [ ! -x "$BIN" ]; then
    echo "no $BIN: build it first (cargo build --release -p mgsd-train)" >&2
    exit 1
fi
mkdir -p "$OUT"
for seed in "${SEEDS[@]}"; do
    for name in $CONFIGS; do
        src=configs/ablation/$name.toml
        [ -f "$src" ] || { echo "no config $src" >&2; exit 1; }
        dir=$OUT/$name/seed$seed
        if [ -f "$dir/eval.json" ]; then
            echo "$name seed $seed: done already"
            continue
        fi
        rm -rf "$dir"
        mkdir -p "$OUT/$name"
        cfg=$OUT/$name/seed$seed.toml
        sed "s/^seed = 0\$/seed = $seed/" "$src" > "$cfg"
        grep -q "^seed = $seed\$" "$cfg" || { echo "$src: no 'seed = 0' line to rewrite" >&2; exit 1; }
        if [ -n "$EPOCHS" ]; then
            sed -i "s/^epochs = [0-9]*\$/epochs = $EPOCHS/" "$cfg"
            grep -q "^epochs = $EPOCHS\$" "$cfg" || { echo "$src: no 'epochs = N' line" >&2; exit 1; }
        fi
        echo "$(date -u +%FT%TZ) $name seed $seed → $dir"
        start=$(date +%s)
        "$BIN" --quiet --demo-config "$cfg" --run-dir "$dir" > "$OUT/$name/seed$seed.log" 2>&1
        echo "  $(( $(date +%s) - start )) s; $(grep -m1 '^training' "$OUT/$name/seed$seed.log" || true)"
        python3 bench/ablation_table.py "$OUT" > "$OUT/table.md" || true
    done
done
python3 bench/ablation_table.py "$OUT" | tee "$OUT/table.md"
