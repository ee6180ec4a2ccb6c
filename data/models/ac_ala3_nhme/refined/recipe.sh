#!/usr/bin/env bash
# The commands that made this model (written by data/models/start_model.sh).
set -euo pipefail
export OMP_NUM_THREADS=1
.venv/bin/so3krates label data/molecules/ac_ala3_nhme.xyz --out data/datasets/ac_ala3_nhme.extxyz --frames 1200 --torsions 30 --conformer-relax-steps 100 --seed 2 --quiet
.venv/bin/so3krates label data/molecules/ac_ala3_nhme.xyz --out build/models/ac_ala3_nhme-independent.extxyz --frames 100 --torsions 0 --interval 20 --md-steps 600 --seed 102 --quiet
.venv/bin/python data/models/rattle_frames.py ac_ala3_nhme --frames 600
.venv/bin/so3krates train --data data/datasets/ac_ala3_nhme.extxyz --n-train 1000 --n-valid 100 --features 128 --layers 3 --degrees 1,2 --seed 0 --zbl --batch-size 1 --lr 1e-3 --lr-decay-rate 0.1 --lr-decay-steps 40000 --energy-weight 20 --grad-clip 1 --valid-every 2500 --max-steps 50000 --extra-train data/datasets/ac_ala3_nhme.rattled.extxyz --min-distance 0.5 --max-force 250 --out build/models/ac_ala3_nhme-128x3rc --overwrite --quiet

# Refined where the explorer goes (written by data/models/refine_model.sh).
.venv/bin/so3krates refine build/models/ac_ala3_nhme-128x3rc/best data/models/ac_ala3_nhme/structure.xyz --out build/refine-rc/ac_ala3_nhme --rounds 2 --walkers 2 --hops 12 --scheduler threads --displaced 4 --label-weight 3 --steps 4000 --lr 2e-4 --lr-decay 0.1 --energy-weight 100 --batch-size 4
rm -rf build/refine-rc/ac_ala3_nhme.candidate
cp -r build/refine-rc/ac_ala3_nhme/model build/refine-rc/ac_ala3_nhme.candidate
cp data/models/ac_ala3_nhme/structure.xyz build/refine-rc/ac_ala3_nhme.candidate/structure.xyz
.venv/bin/so3krates evaluate build/refine-rc/ac_ala3_nhme.candidate data/datasets/ac_ala3_nhme.extxyz --split test --json build/refine-rc/ac_ala3_nhme.candidate/evaluation-test.json --plots build/refine-rc/ac_ala3_nhme.candidate/plots
.venv/bin/so3krates evaluate build/refine-rc/ac_ala3_nhme.candidate build/models/ac_ala3_nhme-independent.extxyz --json build/refine-rc/ac_ala3_nhme.candidate/evaluation-independent.json
.venv/bin/so3krates stability build/refine-rc/ac_ala3_nhme.candidate build/refine-rc/ac_ala3_nhme.candidate/structure.xyz --temperatures 300,500 --time 100ps --timestep 0.5 --json build/refine-rc/ac_ala3_nhme.candidate/stability.json
.venv/bin/python data/models/collect_metrics.py build/refine-rc/ac_ala3_nhme.candidate --refinement build/refine-rc/ac_ala3_nhme.candidate/refinement --previous data/models/ac_ala3_nhme --start build/models/ac_ala3_nhme-128x3rc/best # exit 0: it replaces data/models/ac_ala3_nhme; 1: it ships beside, as data/models/ac_ala3_nhme/refined; 2: data/models/ac_ala3_nhme/refinement-not-shipped keeps its reports
