#!/usr/bin/env bash
# The CIFAR experiments of bench/reproduce.py as one GPU check that fits 15 minutes of one
# H100-class GPU, for a machine without the CIFAR training files (with them, run
# `python bench/reproduce.py all-gpu --data DIR` instead: the full schedules take hours).
#
#   bash bench/gpu_reproduce.sh [DATA] [LOG]
#
# DATA holds CIFAR10/cifar10_test_jpg.zip (shared/data; default $LIGHTNING_CL_DATA or
# ../shared/data). Every line of the log is a figure; each step has its own time limit, so one
# slow step does not take the others with it.
#  1. Real pictures: the three CIFAR-10 experiments with their full schedules on the CIFAR-10
#     stand-in (8,000 training images from the JPEG test split, 2,000 test), and naive
#     fine-tuning under ER-ACE's settings as the reference they must beat.
#  2. Time: a quarter of one epoch of each CIFAR-100 experiment on random pixels of the real
#     size (50,000 images), to tell how long a full schedule takes (x 4 x epochs).
set -u
DATA=${1:-${LIGHTNING_CL_DATA:-../shared/data}}
LOG=${2:-gpu_reproduce.log}
cd "$(dirname "$0")/.."
step() {
    local limit=$1
    shift
    echo "## $*" | tee -a "$LOG"
    timeout "$limit" "${PYTHON:-python3}" bench/reproduce.py "$@" 2>&1 | grep -v -e "Seed set" -e "^$" | tee -a "$LOG"
}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a "$LOG"
step 60 er-ace-scifar10 --cifar10-standin --data "$DATA"
step 60 er-ace-scifar10 --cifar10-standin --data "$DATA" -- --config "$PWD/configs/method/naive.yaml"
step 60 replay-scifar10 --cifar10-standin --data "$DATA"
step 200 derpp-scifar10 --cifar10-standin --data "$DATA"
for name in er-ace-scifar100 replay-scifar100 icarl-scifar100 gem-scifar100 agem-scifar100; do
    step 60 "$name" --fake-cifar -- --trainer.max_epochs=1 --trainer.limit_train_batches=0.25
done
