#!/usr/bin/env bash
# The GPU measurements of issues 3 and 7, as the device tool runs them.
#
# The lent machine has PyTorch and most of difflab's dependencies, but no network, no
# diffusers and no ../shared beside the checkout. So, once, here (with network):
#
#     bash benchmarks/gpu_session.sh prepare      # fills .gpu/ (git-ignored): MNIST + wheels
#
# then one device call per stage, each under the tool's 10-minute limit, carrying .gpu:
#
#     run(command="bash benchmarks/gpu_session.sh mnist",  carry=[".gpu"])   # issue 3
#     run(command="bash benchmarks/gpu_session.sh train",  carry=[".gpu"])   # issue 7, training rows
#     # copy the returned throughput.json to docs/benchmarks/throughput.json here, then
#     run(command="bash benchmarks/gpu_session.sh sample", carry=[".gpu"])   # adds the sampling rows
#     run(command="bash benchmarks/gpu_session.sh profile", carry=[".gpu"])  # only if a target is missed
#
# Each stage writes what comes back under $OUT (at most 8 files, two folders deep):
#   mnist:   mnist_cond/{grid.png,loss.png,results.json}, mnist_log.csv, mnist.log,
#            mnist_cond_ema_fp16.safetensors (the trained network; dl.load / --ckpt / --mnist-run read it)
#   train:   throughput.json, train.log        sample: throughput.json (merged), sample.log
#   profile: profile/*.txt (torch.profiler tables), throughput.json (merged), profile.log
# The JSON is rewritten after every row: a stage stopped at the limit returns what it measured;
# rerun only the missing rows with --rows GLOB (e.g. 'difflab/train/*compile*') and --merge.
# Outside the device tool ($OUT unset) results go to out/gpu/.
set -euo pipefail
cd "$(dirname "$0")/.."
stage=${1:?"usage: bash benchmarks/gpu_session.sh prepare|check|mnist|train|sample|profile [ARGS]"}
shift  # ARGS go to the stage's script (mnist: to difflab train, after MNIST_ARGS to mnist_cond_gpu.py)
GPU_DIR=.gpu
MNIST_SRC=${MNIST_SRC:-../shared/data/mnist}
# diffusers (benchmark peer) and what it needs beyond the device image (Python 3.12 there).
WHEELS=(diffusers==0.42.1 importlib_metadata==10.2.0 lazy-importer zipp==3.23.0)

if [[ $stage == prepare ]]; then
    mkdir -p "$GPU_DIR/mnist" "$GPU_DIR/whl"
    cp "$MNIST_SRC"/*-ubyte* "$GPU_DIR/mnist/"
    PIP_CONSTRAINT=/dev/null python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        -d "$GPU_DIR/whl" "${WHEELS[@]}"
    du -sh "$GPU_DIR"; ls "$GPU_DIR"/*
    exit 0
fi

# ---- on the GPU machine
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
if [[ ! -d $GPU_DIR/whl || ! -d $GPU_DIR/mnist ]]; then
    echo "$GPU_DIR/ is missing: run 'bash benchmarks/gpu_session.sh prepare' here first and carry $GPU_DIR" >&2
    exit 2
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$GPU_DIR"/whl/*.whl
export PYTHONPATH=$PWD/src:/tmp/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
python3 -c "import torch, diffusers, difflab; print('torch', torch.__version__, '| diffusers', diffusers.__version__, \
'|', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'NO GPU')"

# throughput.json is written under $OUT after every row (a stage stopped at the limit keeps what
# it measured); --merge keeps the rows of the copy in docs/benchmarks/ that a stage does not measure.
if [[ $stage =~ ^(train|sample|profile)$ && -f docs/benchmarks/throughput.json ]]; then
    cp docs/benchmarks/throughput.json "$OUT/throughput.json"
fi

case $stage in
    check)  # a smoke run on the tiny network: both libraries, autocast, channels_last, the compiled
        # step and the compiled + CUDA-graph sampler (two compilations: a minute or two)
        python3 benchmarks/throughput.py --tiny --out "$OUT/throughput_tiny.json" --rows 'diffusers/*/bf16' \
            'difflab/train/bf16+fused+cl+compile_step' 'difflab/sample/bf16+cl+compile+graph' "$@" 2>&1 \
            | tee "$OUT/check.log"
        ;;
    mnist)  # issue 3: class-conditional MNIST in <= 10 minutes of training, grid + loss + accuracy
        run_dir=${RUN_DIR:-runs/mnist_cond}
        # shellcheck disable=SC2086  # MNIST_ARGS: extra options of mnist_cond_gpu.py, word-split on purpose
        python3 benchmarks/mnist_cond_gpu.py --mnist "$GPU_DIR/mnist" --out-run "$run_dir" --docs "$OUT/mnist_cond" \
            ${MNIST_ARGS:-} --train-args --set "data.kwargs.root=$GPU_DIR/mnist" "$@" 2>&1 | tee "$OUT/mnist.log"
        cp "$run_dir/log.csv" "$OUT/mnist_log.csv"
        # the EMA network in fp16 (13.8 MB): dl.load reads it, so later sessions can evaluate it anywhere
        python3 -m difflab.cli export --ckpt "$run_dir" --out "$OUT/mnist_cond_ema_fp16.safetensors" --dtype fp16
        ;;
    train)
        python3 benchmarks/throughput.py --what train --out "$OUT/throughput.json" "$@" 2>&1 | tee "$OUT/train.log"
        ;;
    sample)  # adds to docs/benchmarks/throughput.json's rows (copy the train stage's file there first)
        python3 benchmarks/throughput.py --what sample --merge --out "$OUT/throughput.json" "$@" 2>&1 \
            | tee "$OUT/sample.log"
        ;;
    profile)  # five rows, one torch.profiler table each (5 files + json + log: within the 8 that come back)
        python3 benchmarks/throughput.py --rows 'difflab/train/bf16+fused+cl+compile*' \
            'diffusers/train/bf16+compile' 'difflab/sample/bf16+cl+compile+graph' 'diffusers/sample/bf16+compile' \
            --profile "$OUT/profile" --merge --out "$OUT/throughput.json" "$@" 2>&1 | tee "$OUT/profile.log"
        ;;
    *)
        echo "unknown stage '$stage': prepare, check, mnist, train, sample or profile" >&2
        exit 2
        ;;
esac
