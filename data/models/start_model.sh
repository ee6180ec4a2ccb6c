#!/usr/bin/env bash
# Train a model to start a refinement from, on a shipped model's data, and record how.
#   data/models/start_model.sh NAME OUT "TRAIN OPTIONS" ["PREPARE COMMAND"]
# Trains on data/datasets/NAME.extxyz (made by data/models/NAME's recipe) into OUT, and leaves in
# OUT/best the model with its log.jsonl, train_config.json and a recipe.sh: the labelling commands
# of data/models/NAME/recipe.sh, then PREPARE COMMAND (run first, when given: what makes the
# files of --extra-train, e.g. "$bin/python data/models/rattle_frames.py NAME --frames 600"), then
# this training. refine_model.sh NAME "..." OUT/best refines it and measures it against the shipped
# data/models/NAME (`make refined-models`).
set -euo pipefail
name=$1 out=$2 train_options=$3 prepare=${4:-}
bin=${BIN:-.venv/bin}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
labels=$(grep -e " label " "data/models/$name/recipe.sh" | head -n 2)  # before a replaced model's recipe moves
if [ -n "$prepare" ]; then
  echo "+ $prepare" >&2
  bash -c "$prepare"
fi
command=("$bin/so3krates" train --data "data/datasets/$name.extxyz" $train_options --out "$out" --overwrite --quiet)
echo "+ ${command[*]}" >&2
"${command[@]}"
cp "$out/log.jsonl" "$out/train_config.json" "$out/best/"
{
  printf '#!/usr/bin/env bash\n# The commands that made this model (written by data/models/start_model.sh).\nset -euo pipefail\nexport OMP_NUM_THREADS=1\n'
  echo "$labels"
  if [ -n "$prepare" ]; then echo "$prepare"; fi
  echo "${command[*]}"
} > "$out/best/recipe.sh"
