#!/usr/bin/env bash
# The commands that made this model (written by data/models/make_model.sh).
set -euo pipefail
export OMP_NUM_THREADS=1
.venv/bin/so3krates label data/molecules/ethanol.xyz --out data/datasets/ethanol.extxyz --frames 1000 --torsions 20 --conformer-relax-steps 100 --seed 1 --quiet
.venv/bin/so3krates label data/molecules/ethanol.xyz --out build/models/ethanol-independent.extxyz --frames 100 --torsions 0 --interval 20 --md-steps 600 --seed 101 --quiet
.venv/bin/so3krates train --data data/datasets/ethanol.extxyz --n-train 800 --n-valid 100 --features 64 --layers 2 --degrees 1,2 --seed 0 --batch-size 4 --lr 2e-3 --lr-decay-rate 0.1 --lr-decay-steps 100000 --valid-every 2000 --max-steps 150000 --out build/models/ethanol --overwrite --quiet
rm -rf data/models/ethanol.new
cp -r build/models/ethanol/best data/models/ethanol.new
cp build/models/ethanol/log.jsonl build/models/ethanol/train_config.json data/models/ethanol.new/
cp data/datasets/ethanol.relaxed.xyz data/models/ethanol.new/structure.xyz
rm -rf data/models/ethanol
mv data/models/ethanol.new data/models/ethanol
.venv/bin/so3krates evaluate data/models/ethanol data/datasets/ethanol.extxyz --split test --json data/models/ethanol/evaluation-test.json --plots data/models/ethanol/plots
.venv/bin/so3krates evaluate data/models/ethanol build/models/ethanol-independent.extxyz --json data/models/ethanol/evaluation-independent.json
.venv/bin/so3krates stability data/models/ethanol data/models/ethanol/structure.xyz --temperatures 300,500 --time 100ps --timestep 0.5 --json data/models/ethanol/stability.json
.venv/bin/python data/models/collect_metrics.py data/models/ethanol
