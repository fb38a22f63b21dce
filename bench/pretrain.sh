#!/usr/bin/env bash
# How the shipped weights in models/pretrained/ were trained: the project's own `aeflow denoise train`,
# three runs side by side (one GPU holds all three). Then bench/ship_pretrained.py copies the chosen
# model folders into models/pretrained/ as float16 with a model card.
#
#   bench/pretrain.sh MINUTES TRAIN400_DIR [OUT_ROOT]
set -euo pipefail
minutes=${1:?minutes per model}
train400=${2:?folder of Train400}
root=${3:-outputs/pretrain}
mkdir -p "$root"
common=(--model skip_dae --minutes "$minutes" --batch-size 128 --patch 96 --epoch-steps 500 --lr 2e-3)
AEFLOW_OUTPUTS=$root/gray python3 -m flows.cli denoise train --data "$train400" --sigma 0-55 "${common[@]}" > "$root-gray.log" 2>&1 &
AEFLOW_OUTPUTS=$root/gray-s25 python3 -m flows.cli denoise train --data "$train400" --sigma 25 "${common[@]}" > "$root-gray-s25.log" 2>&1 &
# colour: scikit-image's bundled photos (the default training data)
AEFLOW_OUTPUTS=$root/color python3 -m flows.cli denoise train --sigma 0-55 "${common[@]}" > "$root-color.log" 2>&1 &
wait
tail -n 4 "$root"-*.log
