#!/usr/bin/env bash
# The GPU measurements of issues 3, 7, 21 and 24, as the device tool runs them.
#
# A session that is lent a GPU gets 15 minutes of device time in all (the machine's start, each
# call and each idle wait count), at most 10 minutes a call. So a measurement is ONE call,
# ordered by what matters and held to a time budget:
#
#   here, once (with network):  bash benchmarks/gpu_session.sh prepare     # fills .gpu/ (git-ignored)
#   issue 7 (measured on an H100 2026-11-26, resolved; kept to re-run):
#     run(command="bash benchmarks/gpu_session.sh issue7", carry=[".gpu"], timeout_s=600)
#       first the GPU-only tests (the trainer's real cuda_graph capture, tests/training/test_step_graph.py;
#       the compiled Triton GroupNorm kernels, tests/accel/test_group_norm_triton.py: a minute or two),
#       then the ways of the Triton GroupNorm kernels (tiled, looped, resident, resident2) timed alone at the
#       U-Net's shapes (half a minute), the fastest at each shape exported as DIFFLAB_GN_PLAN for the rows,
#       then issue 7's rows in priority order (PRIORITY below), each started only if it should
#       end within BUDGET (default 560 s) less GN_RESERVE (0 s) of the call's start, every row
#       profiled into profile.txt; then, if 100 s are left, benchmarks/upsampling.py (the
#       upsampling convolutions' forms in the network); then, if 45 s are left,
#       benchmarks/group_norm.py with every implementation (Inductor's too) against the memory
#       bandwidth, for as long as the call has left. A new throughput.json (one run, one device), unless MERGE=1.
#   issue 3 (resolved 2026-11-26; kept to re-run):
#     run(command="bash benchmarks/gpu_session.sh all", carry=[".gpu"], timeout_s=600)
#       class-conditional MNIST, at most 150 s of training (eager bf16), then the docs artefacts
#       and the trained network in fp16; then throughput rows within BUDGET (default 560 s).
#   issue 24 (DiT; not measured yet):
#     run(command="bash benchmarks/gpu_session.sh issue24", carry=[".gpu"], timeout_s=600)
#       benchmarks/dit_throughput.py: DiT-B/2 on 32x32x4 latents against diffusers' DiTTransformer2DModel,
#       training and guided-sampling rows in priority order (DIT_PRIORITY below), each started only if it
#       should end within BUDGET (default 540 s) of the call's start, every row profiled into dit_profile.txt.
#       A row is ~33 optimizer steps at batch 256 or 4 sampling runs (50 guided DDIM steps, 64 images),
#       seconds on an H100; compiling is most of a row's cost (a guess: 60-100 s a compiled row).
#   issue 26 (improved DDPM; not run yet, a minute):
#     run(command="bash benchmarks/gpu_session.sh issue26", carry=[".gpu"], timeout_s=600)
#       configs/digits_hybrid.yaml for 300 steps under loss vlb (loss-aware draws on the CUDA generator) and
#       loss hybrid with cuda_graph, each sampled with its learned variance and bounded in bits/dim.
#   a second call, if ~2 minutes of device time are left and the machine is still warm:
#     run(command="BUDGET=150 bash benchmarks/gpu_session.sh rest", carry=[".gpu"])
#       the rows the first call skipped or lost (throughput.py --merge --missing), within BUDGET;
#       copy the first call's throughput.json to docs/benchmarks/throughput.json before it.
#
# What comes back ($OUT; at most 8 files, two folders deep, names of [A-Za-z0-9._-]):
#   issue7: throughput.json, group_norm.json, group_norm_kernels.json, gn_plan.json, profile.txt,
#           upsampling.json, session.log (the tests' output first)
#   all:    mnist_cond/{grid.png,loss.png,results.json}, mnist_log.csv, mnist_cond_ema_fp16.safetensors,
#           throughput.json, profile.txt, session.log
#   rest:   throughput.json (merged), profile.txt, session.log
#   issue24: dit_throughput.json, dit_profile.txt, session.log
# throughput.json is rewritten after every row: a call stopped at its limit returns what it measured.
# Single stages for a longer lease: check (tiny smoke run, two compilations), mnist (the full
# configs/mnist_cond.yaml run, about 10 minutes), throughput [throughput.py args].
# Outside the device tool ($OUT unset) results go to out/gpu/.
set -euo pipefail
cd "$(dirname "$0")/.."
stage=${1:?"usage: bash benchmarks/gpu_session.sh prepare|issue7|issue21|issue24|issue26|all|rest|check|mnist|throughput [ARGS]"}
shift  # ARGS: all, mnist: to difflab train (after MNIST_ARGS to mnist_cond_gpu.py); issue24: to dit_throughput.py;
       # others: to throughput.py
GPU_DIR=.gpu
MNIST_SRC=${MNIST_SRC:-../shared/data/mnist}
# diffusers (benchmark peer) and what it needs beyond the device image (Python 3.12 there);
# pytest for the GPU-only tests.
WHEELS=(diffusers==0.42.1 importlib_metadata==10.2.0 lazy-importer zipp==3.23.0
        pytest==8.4.2 pluggy==1.6.0 iniconfig==2.1.0 packaging==25.0 pygments==2.19.2)

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
# one benchmark run per machine lease: throughput.py divides only rows of one run, and a second
# call on the same warm machine (rest) joins the first's run; a fresh machine starts a new one
[[ -s /tmp/difflab_bench_run ]] || echo "$(date -u +%Y-%m-%dT%H:%M:%S) $(hostname)" > /tmp/difflab_bench_run
export DIFFLAB_BENCH_RUN=${DIFFLAB_BENCH_RUN:-$(cat /tmp/difflab_bench_run)}
python3 -c "import torch, diffusers, difflab; print('torch', torch.__version__, '| diffusers', diffusers.__version__, \
'|', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'NO GPU')"

# rest, throughput: add to the rows of docs/benchmarks/throughput.json (--merge); 'all' starts afresh,
# and so does FRESH=1 (another kind of GPU than the file's: ratios only within one run and device)
if [[ ( $stage =~ ^(rest|throughput)$ && -z ${FRESH:-} || $stage == issue7 && -n ${MERGE:-} )
      && -f docs/benchmarks/throughput.json ]]; then
    cp docs/benchmarks/throughput.json "$OUT/throughput.json"
fi

GN_RESERVE=${GN_RESERVE:-0}  # issue7: seconds of BUDGET kept for the full benchmarks/group_norm.py
CALL_LIMIT=${CALL_LIMIT:-595}  # issue7: the device call's limit (timeout_s=600), less a margin

# Issue 7's rows, most important first, so that one call measures both targets (H200, 2026-11-26:
# a compiled training row costs 50-85 s, a compiled sampling row 25-50 s, cdt ~100 s, an eager
# one 6-18 s):
#   diffusers' best training configuration (bf16 + compile);
#   a cheap eager captured step -- a canary: if capture fails, every captured row (whose options
#   include the canary's) is skipped instead of compiling first;
#   difflab's best training row (measured 1.56x at 1.006x diffusers' own peak memory: the
#   compiled step captured whole, without the EMA copy, i.e. diffusers' work);
#   diffusers' best sampling configuration and difflab's best (Triton GroupNorm, 1.74x), then
#   the candidate: the same with Inductor's freezing (no per-forward weight casts) and the whole
#   run as one graph (cuda_graph="loop"); the network stored in bf16 instead of freezing (half
#   the weights' memory; freezing keeps bf16 copies beside them), with diffusers' network stored
#   in bf16 as a reference of its own -- before the next training row, since sampling is the
#   target not yet met and the first nine rows may not all fit;
#   the headline training row in channels_last with GroupNorm on the NHWC view: the H200 profile
#   of the NCHW headline shows 5.4 ms a step (of 23.1) in cuDNN's NCHW <-> NHWC transposes, and
#   of its channels_last twin 3.4 ms of strided copies and 1.4 ms of 'clone' kernels at 340 us,
#   by their names layout copies around GroupNorm (not confirmed), which the NHWC view avoids;
#   the training row with the partitioner's activation memory budget at 0.9 (margin for the
#   memory bar; its knapsack solve may lengthen the compile);
#   the loop and freezing each alone (their effects) and combo kernels (the casts in a few launches);
#   coordinate-descent tuning of the Triton sampling row;
#   channels_last and EMA variants of the training row; the sampling rows without the Triton
#   kernels or without Inductor (their effects); the NHWC view; the other graph variants; then
#   the cheap eager ladders; then the rest.
PRIORITY=('diffusers/train/bf16+compile' 'difflab/train/bf16+fused+step_graph'
          'difflab/train/bf16+fused+compile_step+step_graph+no_ema'
          'diffusers/sample/bf16+compile'
          'difflab/sample/bf16+cl+compile+graph+gn_triton'
          'difflab/sample/bf16+cl+compile_frozen+loop+gn_triton'
          'diffusers/sample/bf16w+compile' 'difflab/sample/bf16w+cl+compile+loop+gn_triton'
          'difflab/train/bf16+fused+cl+compile_step+step_graph+no_ema+gn_nhwc'
          'difflab/train/bf16+fused+compile_step+step_graph+no_ema+amb0.9'
          'difflab/sample/bf16+cl+compile+loop+gn_triton'
          'difflab/sample/bf16w+cl+compile+graph+gn_triton'
          'difflab/sample/bf16+cl+compile_frozen+graph+gn_triton'
          'difflab/sample/bf16+cl+compile_combo+graph+gn_triton'
          'difflab/sample/bf16+cl+compile_cdt+graph+gn_triton'
          'difflab/train/bf16+fused+cl+compile_step+step_graph+no_ema+gn_nhwc+amb0.9'
          'difflab/train/bf16+fused+cl+compile_step+step_graph+no_ema'
          'difflab/train/bf16+fused+compile_step+step_graph'
          'difflab/sample/bf16+cl+graph+gn_triton' 'difflab/sample/bf16+cl+compile+graph'
          'difflab/train/bf16+fused+cl+compile_step+step_graph'
          'difflab/sample/bf16+cl+compile+graph+gn_nhwc'
          'difflab/sample/bf16+cl+compile_cdt+graph' 'difflab/sample/bf16+cl+compile_frozen+graph'
          'difflab/sample/bf16+cl+gn_triton'
          'difflab/train/bf16+fused+cl+compile_step+graphs'
          'difflab/train/bf16+fused+cl+compile_step' 'difflab/train/bf16+fused+cl+step_graph'
          '*/*/fp32' '*/*/bf16' '*/*/bf16+fused' '*/*/bf16+fused+cl' '*/*/bf16+cl' '*')

# Issue 24's DiT rows, most important first: diffusers' issue reference (bf16 + compile) and difflab's
# candidate best training row (the compiled step captured whole, without the EMA copy: diffusers'
# work) after the cheap eager captured step (the canary: if capture fails, every captured row is
# skipped instead of compiling first); then both libraries' compiled sampling (difflab's whole run
# as one graph, then a graph per call); diffusers' compiled step with fused AdamW (a faster
# reference, if it is); the networks stored in bf16; difflab's step with its EMA (what difflab
# train runs); then the eager rows.
DIT_PRIORITY=('diffusers/train/bf16+compile' 'difflab/train/bf16+fused+step_graph'
              'difflab/train/bf16+fused+compile_step+step_graph+no_ema'
              'diffusers/sample/bf16+compile' 'difflab/sample/bf16+compile+loop'
              'diffusers/train/bf16+compile+fused' 'difflab/sample/bf16+compile+graph'
              'diffusers/sample/bf16w+compile' 'difflab/sample/bf16w+compile+loop'
              'difflab/train/bf16+fused+compile_step+step_graph' '*/*/bf16' '*')

mnist() {  # issue 3: train configs/mnist_cond.yaml (with the overrides given), grid + loss + accuracy
    local run_dir=${RUN_DIR:-runs/mnist_cond}
    if [[ -d $run_dir/checkpoints ]]; then  # a second call on the same warm machine: no retraining
        echo "gpu_session: $run_dir holds a run from an earlier call; its artefacts only"
        # shellcheck disable=SC2086  # MNIST_ARGS: extra options of mnist_cond_gpu.py, word-split on purpose
        python3 benchmarks/mnist_cond_gpu.py --mnist "$GPU_DIR/mnist" --ckpt "$run_dir" --docs "$OUT/mnist_cond" \
            ${MNIST_ARGS:-} || return
    else
        # shellcheck disable=SC2086
        python3 benchmarks/mnist_cond_gpu.py --mnist "$GPU_DIR/mnist" --out-run "$run_dir" \
            --docs "$OUT/mnist_cond" ${MNIST_ARGS:-} --train-args --set "data.kwargs.root=$GPU_DIR/mnist" "$@" || return
    fi
    cp "$run_dir/log.csv" "$OUT/mnist_log.csv" || return
    # the EMA network in fp16 (13.8 MB): dl.load reads it, so later sessions can evaluate it anywhere
    python3 -m difflab.cli export --ckpt "$run_dir" --out "$OUT/mnist_cond_ema_fp16.safetensors" --dtype fp16
}

case $stage in
    issue7)
        BUDGET=${BUDGET:-560}  # the rows' end (the full group_norm.py gets what is left of CALL_LIMIT)
        # the GPU-only tests, a minute or two: the trainer's CUDA-graph step captured for real (CPU
        # tests use a stand-in replay); the Triton GroupNorm kernels compiled for the GPU (CPU tests
        # run them in the interpreter) against the definition at every odd shape, in the U-Net
        # under Inductor and in a CUDA graph
        timeout 150 python3 -m pytest -q -p no:cacheprovider tests/training/test_step_graph.py tests/accel/test_group_norm_triton.py \
            tests/accel/test_accel_model.py tests/accel/test_upsample.py tests/accel/test_channels.py \
            -k "real_cuda_graph or gpu or (definition and auto) or unet_samples or released or longer or in_place" \
            2>&1 | tee -a "$OUT/session.log" \
            || echo "gpu_session: a GPU test failed or timed out (above)" | tee -a "$OUT/session.log"
        # the Triton GroupNorm kernels for larger images, tiled (three launches, x read twice),
        # looped (one launch, the second read from L2 where it holds the slab) or resident (one
        # launch, one read; resident2: registers capped for two programs an SM), each checked
        # against torch plain and with the time embedding added: the fastest correct one at each of
        # the U-Net's shapes, for every row after (the rule's own choice at a shape is one of the
        # first two, so it needs no timing of its own)
        unset DIFFLAB_GN_KERNEL DIFFLAB_GN_PLAN  # the comparison and the choice start from the rule
        timeout 180 python3 benchmarks/group_norm.py --no-compile \
            --variants triton_tiled triton_looped triton_resident triton_resident2 \
            --out "$OUT/group_norm_kernels.json" 2>&1 | tee -a "$OUT/session.log" \
            || echo "gpu_session: the GroupNorm kernel comparison failed or timed out (above)" | tee -a "$OUT/session.log"
        # the fastest correct way at each shape as a table (DIFFLAB_GN_PLAN); failing that, the
        # fastest single way over the forward pass (DIFFLAB_GN_KERNEL); failing that (auto, or no
        # verdict: the comparison failed, or no way matched torch) the rule in _plan, set from the
        # H200 measurement of 2026-11-26
        if plan=$(python3 benchmarks/group_norm.py --best-per-shape "$OUT/group_norm_kernels.json" "$OUT/gn_plan.json" \
                  2>/dev/null); then
            export DIFFLAB_GN_PLAN=$OUT/gn_plan.json
            echo "gpu_session: DIFFLAB_GN_PLAN (C,G,HW:way) $plan" | tee -a "$OUT/session.log"
        elif kernel=$(python3 benchmarks/group_norm.py --faster-kernel "$OUT/group_norm_kernels.json" 2>/dev/null) \
                && [[ $kernel != auto ]]; then
            export DIFFLAB_GN_KERNEL=$kernel
        fi
        echo "gpu_session: DIFFLAB_GN_KERNEL=${DIFFLAB_GN_KERNEL:-unset}" | tee -a "$OUT/session.log"
        [[ -n ${MERGE:-} ]] && merge=(--merge) || merge=()
        # the rows, keeping GN_RESERVE seconds of the budget for benchmarks/group_norm.py after them
        left=$((BUDGET - GN_RESERVE - SECONDS))
        echo "gpu_session: ${SECONDS} s spent, ${left} s of the ${BUDGET} s budget left for the throughput rows" \
            | tee -a "$OUT/session.log"
        python3 benchmarks/throughput.py --rows "${PRIORITY[@]}" --time-budget "$((left > 1 ? left : 1))" \
            --profile "$OUT/profile.txt" "${merge[@]}" --out "$OUT/throughput.json" "$@" 2>&1 \
            | tee -a "$OUT/session.log"
        # the upsampling convolutions' forms (transposed, the default; sub-pixel; plain) in the
        # network's compiled forward pass, timed in rotating rounds (about 90 s on an H200)
        up_left=$((CALL_LIMIT - 10 - SECONDS))
        if ((up_left >= 100)); then
            timeout "$up_left" python3 benchmarks/upsampling.py --no-compile --out "$OUT/upsampling.json" 2>&1 \
                | tee -a "$OUT/session.log" \
                || echo "gpu_session: benchmarks/upsampling.py failed or timed out (above)" | tee -a "$OUT/session.log"
        fi
        # GroupNorm + SiLU alone at the U-Net's shapes, every implementation (Inductor's too): which
        # reaches the bandwidth (JSON written after every shape; in whatever time the call has left)
        gn_left=$((CALL_LIMIT - 10 - SECONDS))
        if ((gn_left >= 45)); then
            timeout "$gn_left" python3 benchmarks/group_norm.py --out "$OUT/group_norm.json" 2>&1 \
                | tee -a "$OUT/session.log" \
                || echo "gpu_session: benchmarks/group_norm.py failed or timed out (above)" | tee -a "$OUT/session.log"
        else
            echo "gpu_session: ${gn_left} s left, too few for the full benchmarks/group_norm.py" | tee -a "$OUT/session.log"
        fi
        ;;
    issue21)  # after the speed layer moved out of the models and samplers (difflab.accel): the GPU
        # tests of the moved code, then the headline rows again (within noise of the committed
        # figures, docs/benchmarks.md) and the row no session measured yet: the compiled step
        # captured as one CUDA graph WITH its EMA update (the headline training row has none)
        BUDGET=${BUDGET:-540}
        timeout 150 python3 -m pytest -q -p no:cacheprovider tests/training/test_step_graph.py \
            tests/accel/test_group_norm_triton.py tests/accel/test_accel_model.py tests/accel/test_upsample.py \
            tests/accel/test_channels.py -k "real_cuda_graph or gpu or (definition and auto) or unet_samples" \
            2>&1 | tee -a "$OUT/session.log" \
            || echo "gpu_session: a GPU test failed or timed out (above)" | tee -a "$OUT/session.log"
        left=$((BUDGET - SECONDS))
        python3 benchmarks/throughput.py --rows 'diffusers/train/bf16+compile' \
            'difflab/train/bf16+fused+compile_step+step_graph+no_ema' 'difflab/train/bf16+fused+compile_step+step_graph' \
            'diffusers/sample/bf16+compile' 'difflab/sample/bf16w+cl+compile+loop+gn_triton' \
            'difflab/sample/bf16+cl+compile_frozen+loop+gn_triton' 'diffusers/sample/bf16w+compile' \
            --time-budget "$((left > 1 ? left : 1))" --out "$OUT/throughput.json" "$@" 2>&1 | tee -a "$OUT/session.log"
        ;;
    issue26)  # improved DDPM's losses on the GPU (a smoke run, a minute): loss vlb draws its timesteps with
        # the loss-aware sampler on the trainer's CUDA generator; loss hybrid (uniform draws) with the
        # step captured as a CUDA graph (the decoder term then runs on every row, no host read); both
        # sample with their learned variance and give bits/dim
        for loss in vlb hybrid; do
            graph=$([[ $loss == hybrid ]] && echo true || echo false)
            timeout 240 python3 -m difflab.cli train --config configs/digits_hybrid.yaml --out "runs/gpu_$loss" \
                --device cuda --steps 300 --quiet --set "loss=$loss" --set "cuda_graph=$graph" --set sample.every=-1 \
                2>&1 | tee -a "$OUT/session.log" || echo "gpu_session: loss $loss failed (above)" | tee -a "$OUT/session.log"
            timeout 120 python3 -m difflab.cli sample --ckpt "runs/gpu_$loss" --device cuda --sampler ddpm --steps 50 \
                --label all --n 8 --out "$OUT/$loss.png" 2>&1 | tee -a "$OUT/session.log" || true
            DEV=${DEV:-cuda} RUN="runs/gpu_$loss" timeout 120 python3 -c "import os, difflab as dl
run = dl.load(os.environ['RUN'], device=os.environ['DEV']); x, y = dl.data.load('digits'); dev = os.environ['DEV']
bpd = run.proc.vlb_bits_per_dim(run.ema_model, x[:256].flatten(1).to(dev), y[:256].to(dev), num_timesteps=50, bins=17)
print('gpu_session: $loss bits/dim (digits, 50 strata, 17 levels):', float(bpd.mean()))" 2>&1 | tee -a "$OUT/session.log" || true
        done
        ;;
    issue24)  # DiT-B/2 against diffusers' DiTTransformer2DModel, same run (benchmarks/dit_throughput.py)
        BUDGET=${BUDGET:-540}
        left=$((BUDGET - SECONDS))
        echo "gpu_session: ${SECONDS} s spent, ${left} s of the ${BUDGET} s budget left for the DiT rows" \
            | tee -a "$OUT/session.log"
        python3 benchmarks/dit_throughput.py --rows "${DIT_PRIORITY[@]}" --time-budget "$((left > 1 ? left : 1))" \
            --profile "$OUT/dit_profile.txt" --out "$OUT/dit_throughput.json" "$@" 2>&1 | tee -a "$OUT/session.log"
        ;;
    all)
        BUDGET=${BUDGET:-560}
        # 2,000 steps x 256 images (51 epochs of t10k), eager: no compile time to pay back in a
        # run this short; max_time stops it with a checkpoint should the GPU be slower than thought
        mnist --steps 2000 --max-time 150 --compile none --sample-every 0 "$@" 2>&1 | tee -a "$OUT/session.log" \
            || echo "gpu_session: the MNIST part failed (see above); going on to the throughput rows" \
            | tee -a "$OUT/session.log"
        left=$((BUDGET - SECONDS))
        echo "gpu_session: ${SECONDS} s spent, ${left} s of the ${BUDGET} s budget left for the throughput rows" \
            | tee -a "$OUT/session.log"
        python3 benchmarks/throughput.py --rows "${PRIORITY[@]}" --time-budget "$((left > 1 ? left : 1))" \
            --profile "$OUT/profile.txt" --merge --out "$OUT/throughput.json" 2>&1 | tee -a "$OUT/session.log"
        ;;
    rest)  # what 'all' skipped or lost: copy its throughput.json to docs/benchmarks/ first
        python3 benchmarks/throughput.py --rows "${PRIORITY[@]}" --merge --missing --time-budget "${BUDGET:-150}" \
            --profile "$OUT/profile.txt" --out "$OUT/throughput.json" "$@" 2>&1 | tee -a "$OUT/session.log"
        ;;
    check)  # a smoke run on the tiny network: both libraries, autocast, channels_last, the compiled
        # step and the compiled + CUDA-graph sampler (two compilations: a minute or two)
        python3 benchmarks/throughput.py --tiny --out "$OUT/throughput_tiny.json" --rows 'diffusers/*/bf16' \
            'difflab/train/bf16+fused+cl+compile_step' 'difflab/sample/bf16+cl+compile+graph' "$@" 2>&1 \
            | tee "$OUT/check.log"
        ;;
    mnist)  # the full configs/mnist_cond.yaml run (about 10 minutes: a lease of its own)
        mnist "$@" 2>&1 | tee "$OUT/session.log"
        ;;
    throughput)  # throughput.py with the given arguments, e.g. --rows 'difflab/train/*' --time-budget 300
        python3 benchmarks/throughput.py --merge --out "$OUT/throughput.json" "$@" 2>&1 | tee "$OUT/session.log"
        ;;
    *)
        echo "unknown stage '$stage': prepare, issue7, issue21, issue24, all, rest, check, mnist or throughput" >&2
        exit 2
        ;;
esac
