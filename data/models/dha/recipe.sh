#!/usr/bin/env bash
# The commands that made this model (written by data/models/make_model.sh).
set -euo pipefail
export OMP_NUM_THREADS=1
.venv/bin/so3krates label data/molecules/dha.xyz --out data/datasets/dha.extxyz --frames 1200 --torsions 30 --conformer-relax-steps 100 --seed 3 --quiet
.venv/bin/so3krates label data/molecules/dha.xyz --out build/models/dha-independent.extxyz --frames 100 --torsions 0 --interval 20 --md-steps 600 --seed 103 --quiet
.venv/bin/so3krates train --data data/datasets/dha.extxyz --n-train 1000 --n-valid 100 --features 64 --layers 2 --degrees 1,2 --seed 0 --batch-size 1 --lr 1e-3 --lr-decay-rate 0.1 --lr-decay-steps 35000 --valid-every 2500 --max-steps 45000 --out build/models/dha --overwrite --quiet
rm -rf data/models/dha.new
cp -r build/models/dha/best data/models/dha.new
cp build/models/dha/log.jsonl build/models/dha/train_config.json data/models/dha.new/
cp data/datasets/dha.relaxed.xyz data/models/dha.new/structure.xyz
rm -rf data/models/dha
mv data/models/dha.new data/models/dha
.venv/bin/so3krates evaluate data/models/dha data/datasets/dha.extxyz --split test --json data/models/dha/evaluation-test.json --plots data/models/dha/plots
.venv/bin/so3krates evaluate data/models/dha build/models/dha-independent.extxyz --json data/models/dha/evaluation-independent.json
.venv/bin/so3krates stability data/models/dha data/models/dha/structure.xyz --temperatures 300,500 --time 100ps --timestep 0.5 --json data/models/dha/stability.json
.venv/bin/python data/models/collect_metrics.py data/models/dha
