#!/usr/bin/env bash
# bench/gpu.ts on a lent GPU machine that has no Deno, no network and maybe no Vulkan loader, in one device call.
#
#   bench/gpu-run.sh prepare   here (network, Deno, apt-get): builds the carry folder .gpu-carry/ (ignored by git):
#                              an xz-compressed Deno binary, the node_modules files the check loads, the Vulkan
#                              loader and OpenBLAS .debs, The Verdict and the golden fixtures; then runs `check`.
#   bench/gpu-run.sh check     checks an existing carry: every part present, the working tree that travels
#                              (tracked + untracked files git does not ignore + the carry) under 64 MiB, the
#                              command under 2,000 characters; prints the command and the carry list. Exit 1 if not.
#   bench/gpu-run.sh run       there (cwd = repo root, $OUT = output folder): unpacks, sets up the loader, runs
#                              the hand-off part (below), then bench/gpu.ts in what is left of a time budget; JSON
#                              lines in $OUT/gpu.jsonl, the log in $OUT/gpu-run.log. Ends within GPU_RUN_BUDGET_S
#                              (default 450) + 60 s.
#   bench/gpu-run.sh handoff   the hand-off part alone, here (deno on PATH; $OUT or a temporary folder): the verdict
#                              run, one epoch here, handed off and continued for one more by
#                              scaleout/torch/train_ddp.py on the GPU (one rank, nccl), in fp32 and in bf16
#                              autocast, against our own engine's same epoch: tokens/s, peak memory, eval losses.
#                              Without CUDA it reports "no CUDA device" and skips (GPU_RUN_HANDOFF_CPU=1 runs it on
#                              the CPU with gloo, as a dry run of the part).
#
# Env: GPU_CARRY (default .gpu-carry), GPU_RUN_BUDGET_S, GPU_RUN_STEPS (timed steps per part, default 3),
# GPU_RUN_EXPERIMENT (default experiments/verdict.yaml), GPT_WEBGPU_ALLOW_FALLBACK=1 for a dry run on lavapipe,
# GPU_RUN_HANDOFF_S (the hand-off part's limit, default 150), GPU_RUN_HANDOFF_SET (extra --set values, spaced),
# GPU_RUN_PYTHON (default: the first of python3, /usr/bin/python3 that imports torch).
set -uo pipefail

CARRY=${GPU_CARRY:-.gpu-carry}
LIMIT_BYTES=$((64 * 1024 * 1024))
COMMAND_MAX=2000
# The Vulkan loader and the GL dispatch libraries NVIDIA's Vulkan driver links (the device notes' list), and
# OpenBLAS with its Fortran runtime for the CPU part.
DEBS="libvulkan1 libglvnd0 libglx0 libegl1 libgl1 libopengl0 libgles2 libopenblas0-pthread libgfortran5 libquadmath0"
FIXTURES="gpt2-tiny.json gpt2-tiny.safetensors"
SHARED=${GPT_SHARED_DIR:-../shared}

die() {
  echo "gpu-run.sh: $*" >&2
  exit 1
}

# The one command the device tool runs, and what it carries.
device_command() { echo "bash bench/gpu-run.sh run"; }
carry_list() { echo "[\"$CARRY\"]"; }

# Files of node_modules that Deno reads for bench/gpu.ts, bench/bench.ts and tests/golden_test.ts: the folder
# layout (links, package.json, install markers) everywhere; of TF.js only the Node bundles (dist/*.node.js, the
# wasm binaries); of js-tiktoken only the GPT-2 ranks; the other packages without maps, typings and sources.
# Packages imported by nothing the check runs keep only their package.json (DuckDB, 140 MB of native libraries,
# writes bench.ts's Parquet corpus only).
npm_files() {
  local skip='typescript@|tiktoken@|uplot@|core-js@|@types\+|@webgpu\+types@|@duckdb\+'
  find node_modules -type l
  find node_modules -type f \( -name package.json -o -name .initialized -o -name .setup-cache.bin \)
  find node_modules/.deno -mindepth 1 -maxdepth 1 -type d | grep -Ev "/($skip)" | while read -r pkg; do
    case "$pkg" in
    *@tensorflow+*) find "$pkg" -type f -path '*/dist/*' \( -name '*.node.js' -o -name '*.wasm' \) ;;
    *js-tiktoken@*) find "$pkg" -type f -name '*.js' ! -path '*/ranks/*' -o -path '*/ranks/gpt2.js' ;;
    *) find "$pkg" -type f ! -name '*.map' ! -name '*.ts' ! -name '*.mts' ! -name '*.cts' \
      ! -name '*.md' ! -name package.json ;;
    esac
  done
}

prepare() {
  command -v deno >/dev/null || die "prepare: deno not on PATH"
  command -v xz >/dev/null || die "prepare: xz not found (apt-get install xz-utils)"
  mkdir -p "$CARRY/debs" "$CARRY/fixtures"
  local bin version
  bin=$(readlink -f "$(command -v deno)")
  version=$(deno --version | head -1)
  # The Deno binary: xz -9 takes minutes, so it is redone only when the binary changed.
  if [ "$(cat "$CARRY/deno.version" 2>/dev/null)" != "$version" ] || [ ! -s "$CARRY/deno.xz" ]; then
    echo "compressing $bin ($version); a few minutes" >&2
    xz -9 -T0 -c "$bin" >"$CARRY/deno.xz.tmp" && mv "$CARRY/deno.xz.tmp" "$CARRY/deno.xz" || die "xz failed"
    echo "$version" >"$CARRY/deno.version"
  fi
  # node_modules: installed from deno.lock here, then the files the check reads.
  deno install >/dev/null 2>&1 || die "prepare: deno install failed"
  npm_files | sort -u >"$CARRY/npm-files.txt"
  tar -cf - -T "$CARRY/npm-files.txt" | xz -9 -T0 >"$CARRY/node_modules.tar.xz.tmp" &&
    mv "$CARRY/node_modules.tar.xz.tmp" "$CARRY/node_modules.tar.xz" || die "prepare: node_modules tar failed"
  rm "$CARRY/npm-files.txt"
  # The Vulkan loader, and OpenBLAS for the CPU part (the GPU machine's image has neither, as far as known).
  local arch=() have
  [ "$(dpkg --print-architecture)" = amd64 ] ||
    arch=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64)
  for p in $DEBS; do
    have=$(ls "$CARRY/debs/${p}_"*.deb 2>/dev/null | head -1)
    [ -n "$have" ] || (cd "$CARRY/debs" && apt-get "${arch[@]}" download "$p" >/dev/null 2>&1) ||
      die "prepare: apt-get download $p failed"
  done
  local verdict=data/the-verdict.txt
  [ -f $verdict ] || verdict=$SHARED/data/the-verdict.txt
  install -m 644 "$verdict" "$CARRY/the-verdict.txt" || die "prepare: no The Verdict at data/ or $SHARED/data/"
  for f in $FIXTURES; do install -m 644 "$SHARED/fixtures/$f" "$CARRY/fixtures/$f" || die "prepare: fixture $f missing"; done
  check
}

# Bytes that travel: tracked files and untracked ones git does not ignore, plus the carry.
travelling_bytes() {
  local tree carry
  tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat -L -c %s -- 2>/dev/null |
    awk '{s += $1} END {print s + 0}')
  carry=$(find "$CARRY" -type f -printf '%s\n' 2>/dev/null | awk '{s += $1} END {print s + 0}')
  echo "$tree $carry"
}

check() {
  git rev-parse --show-toplevel >/dev/null 2>&1 || die "check: not in a git checkout"
  git check-ignore -q "$CARRY" || die "check: $CARRY is not ignored by git (it would travel twice)"
  local missing=()
  for f in deno.xz node_modules.tar.xz the-verdict.txt; do [ -s "$CARRY/$f" ] || missing+=("$f"); done
  for f in $FIXTURES; do [ -s "$CARRY/fixtures/$f" ] || missing+=("fixtures/$f"); done
  for p in $DEBS; do ls "$CARRY/debs/${p}_"*.deb >/dev/null 2>&1 || missing+=("debs/$p"); done
  [ ${#missing[@]} -eq 0 ] || die "check: $CARRY lacks ${missing[*]} (run bench/gpu-run.sh prepare)"
  local tree carry total cmd
  read -r tree carry <<<"$(travelling_bytes)"
  total=$((tree + carry))
  cmd=$(device_command)
  printf '{"check":"gpu-run carry","tree_bytes":%d,"carry_bytes":%d,"total_bytes":%d,"limit_bytes":%d,' \
    "$tree" "$carry" "$total" "$LIMIT_BYTES"
  printf '"command_chars":%d,"command_max":%d}\n' "${#cmd}" "$COMMAND_MAX"
  [ "$total" -le "$LIMIT_BYTES" ] ||
    die "check: $total bytes would travel ($CARRY: $carry), over the device tool's limit of $LIMIT_BYTES"
  [ "${#cmd}" -lt "$COMMAND_MAX" ] || die "check: the command is ${#cmd} characters, limit $COMMAND_MAX"
  echo "command: $cmd"
  echo "carry: $(carry_list)"
}

# --- run (on the GPU machine) ---

# One JSON line to the results file and stdout; $1 is a JSON object's body.
emit() { echo "{$1}" | tee -a "$OUT/gpu.jsonl"; }
jstr() { printf '"%s"' "$(printf '%s' "$1" | tr -d '\000-\037' | sed 's/\\/\\\\/g; s/"/\\"/g')"; }

unpack() {
  WORK=$(mktemp -d /tmp/gpu-run.XXXXXX)
  if command -v xz >/dev/null; then
    xz -dc "$CARRY/deno.xz" >"$WORK/deno"
  else # python3's lzma, where xz-utils is missing
    python3 -c 'import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
      "$CARRY/deno.xz" "$WORK/deno"
  fi || return 1
  chmod +x "$WORK/deno"
  if command -v xz >/dev/null; then tar -xJf "$CARRY/node_modules.tar.xz"; else
    python3 -c 'import tarfile,sys; tarfile.open(sys.argv[1]).extractall(".")' "$CARRY/node_modules.tar.xz"
  fi || return 1
  for d in "$CARRY"/debs/*.deb; do dpkg -x "$d" "$WORK/root" || return 1; done
  local lib="$WORK/root/usr/lib/x86_64-linux-gnu"
  export LD_LIBRARY_PATH="$lib:$lib/openblas-pthread${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  # NVIDIA's Vulkan and EGL manifests, where the loaders' default folders lack them (containers).
  local nv=/usr/local/nvidia/share icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  if [ -f $icd ] && ! ls /usr/share/vulkan/icd.d/nvidia* /usr/local/share/vulkan/icd.d/nvidia* /etc/vulkan/icd.d/nvidia* >/dev/null 2>&1
  then export VK_DRIVER_FILES=$icd VK_ICD_FILENAMES=$icd; fi
  [ -f $nv/glvnd/egl_vendor.d/10_nvidia.json ] &&
    export __EGL_VENDOR_LIBRARY_FILENAMES=$nv/glvnd/egl_vendor.d/10_nvidia.json
  export PATH="$WORK:$PATH" DENO_DIR="$WORK/deno-dir" DENO_NO_UPDATE_CHECK=1 NO_COLOR=1
  export GPT_FIXTURES_DIR="$PWD/$CARRY/fixtures" PYTHONUNBUFFERED=1
  mkdir -p data && { [ -f data/the-verdict.txt ] || cp "$CARRY/the-verdict.txt" data/the-verdict.txt; }
}

# The hand-off part: our engine trains the experiment's epoch 1 (in a scratch folder), hands it off, and continues
# epoch 2 itself; train_ddp.py continues the same hand-off on one rank in fp32 and in bf16 autocast. One JSON line
# per engine: tokens/s, peak memory and eval losses of epoch 2, and the largest val-loss gap to ours.
handoff_part() {
  local root=$PWD exp=${GPU_RUN_EXPERIMENT:-experiments/verdict.yaml} py dev="no torch"
  for py in ${GPU_RUN_PYTHON:-python3 /usr/bin/python3}; do # the first Python with torch
    dev=$($py -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")' 2>/dev/null) && break
    dev="no torch"
  done
  if [ "$dev" != cuda ] && [ "${GPU_RUN_HANDOFF_CPU:-}" != 1 ]; then
    emit "\"part\":\"torch-handoff\",\"skipped\":$(jstr "${dev/cpu/no CUDA device}")"
    return 0
  fi
  local ho sets=() s
  ho=$(mktemp -d /tmp/gpu-handoff.XXXXXX)
  for s in name=gh ${GPU_RUN_HANDOFF_SET:-}; do sets+=(--set "$s"); done
  ours() { (cd "$ho" && deno run --cached-only --unstable-webgpu -A --config "$root/deno.json" "$root/tasks/$1.ts" \
    "$root/$exp" "${sets[@]}" "${@:2}") >>"$OUT/gpu-run.log" 2>&1; }
  ln -s "$root/data" "$ho/data"
  ours train --set training.epochs=1 && ours handoff --set training.epochs=2 --out "$ho/gh.fp32" &&
    cp -r "$ho/gh.fp32" "$ho/gh.bf16" && ours train --resume --set training.epochs=2 || {
    emit "\"part\":\"torch-handoff\",\"error\":$(jstr "our side failed: $(tail -1 "$OUT/gpu-run.log")")"
    rm -rf "$ho"
    return 1
  }
  local p rc
  for p in fp32 bf16-mixed; do
    MASTER_ADDR=127.0.0.1 MASTER_PORT=$((29500 + RANDOM % 1000)) RANK=0 WORLD_SIZE=1 LOCAL_RANK=0 \
      $py "$root/scaleout/torch/train_ddp.py" "$ho/gh.${p%-mixed}" --precision $p >>"$OUT/gpu-run.log" 2>&1
    rc=$?
    [ $rc -eq 0 ] || emit "\"part\":\"torch-handoff\",\"precision\":\"$p\",\"error\":\"train_ddp.py exit $rc\""
  done
  $py - "$ho" <<'PY' | while read -r line; do emit "${line:1:${#line}-2}"; done
import json, sys
def epoch2(path):  # the evaluations after the log's last header, and that header
    lines = [json.loads(l) for l in open(path) if l.strip()]
    at = max(i for i, r in enumerate(lines) if r.get("type") == "header")
    return lines[at], [r for r in lines[at:] if r.get("type") == "eval"]
ho = sys.argv[1]
_, ours = epoch2(f"{ho}/checkpoints/gh/log.jsonl")
for name, d in (("gpt-ts", f"{ho}/checkpoints/gh"), ("torch-ddp fp32", f"{ho}/gh.fp32"), ("torch-ddp bf16", f"{ho}/gh.bf16")):
    try:
        head, ev = epoch2(f"{d}/log.jsonl")
    except (OSError, ValueError):
        continue
    gap = max((abs(a["val_loss"] - b["val_loss"]) for a, b in zip(ev, ours) if a["step"] == b["step"]), default=None)
    print(json.dumps({"part": "torch-handoff", "engine": name, "precision": head.get("precision"),
                      "device": (head.get("devices") or [head.get("backend")])[0], "steps": [e["step"] for e in ev],
                      "tokens_per_s": ev[-1]["tokens_per_s"] if ev else None,
                      "peak_mem_bytes": ev[-1].get("peak_mem_bytes") if ev else None,
                      "val_losses": [round(e["val_loss"], 4) for e in ev], "max_val_loss_gap_vs_ours": gap}))
PY
  rm -rf "$ho"
}

run() {
  local t0=$SECONDS budget=${GPU_RUN_BUDGET_S:-450}
  export OUT=${OUT:-$(mktemp -d)}
  mkdir -p "$OUT"
  trap 'rm -rf "${WORK:-}"' EXIT # the unpacked Deno and libraries (150 MB); node_modules stays
  : >"$OUT/gpu.jsonl"
  if ! unpack >>"$OUT/gpu-run.log" 2>&1; then
    emit "\"part\":\"setup\",\"error\":$(jstr "unpacking $CARRY failed: $(tail -1 "$OUT/gpu-run.log")")"
    return 1
  fi
  local gpu icds
  gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -1)
  command -v nvidia-smi >/dev/null || gpu="nvidia-smi not found"
  icds=$(ls /usr/share/vulkan/icd.d /etc/vulkan/icd.d 2>/dev/null | grep json | tr '\n' ' ')
  emit "\"part\":\"setup\",\"seconds\":$((SECONDS - t0)),\"host_cpus\":$(nproc),\"deno\":$(jstr "$(deno --version | head -1)"),\"nvidia_smi\":$(jstr "$gpu"),\"vulkan_icds\":$(jstr "${icds:-${VK_DRIVER_FILES:-none}}")"
  # The hand-off part first, within its own limit, out of the budget; then bench/gpu.ts in what is left.
  local t1=$SECONDS
  timeout -k 5 "${GPU_RUN_HANDOFF_S:-150}" bash bench/gpu-run.sh handoff
  local hrc=$?
  [ "$hrc" -ne 124 ] && [ "$hrc" -ne 137 ] || emit "\"part\":\"torch-handoff\",\"error\":\"killed by its time limit\""
  budget=$((budget - (SECONDS - t1)))
  # bench/gpu.ts keeps its own per-part timeouts inside the budget; this outer one is the guard if it hangs.
  timeout -k 10 $((budget + 30)) deno run --cached-only --unstable-webgpu -A bench/gpu.ts \
    --budget-s "$budget" --steps "${GPU_RUN_STEPS:-3}" \
    --experiment "${GPU_RUN_EXPERIMENT:-experiments/verdict.yaml}" 2>>"$OUT/gpu-run.log" |
    tee -a "$OUT/gpu.jsonl"
  local rc=${PIPESTATUS[0]}
  [ "$rc" -ne 124 ] && [ "$rc" -ne 137 ] || emit "\"part\":\"gpu.ts\",\"error\":\"killed by the outer timeout\""
  emit "\"part\":\"end\",\"exit\":$rc,\"wall_s\":$((SECONDS - t0))"
}

case "${1:-}" in
prepare) prepare ;;
check) check ;;
run) run ;;
handoff)
  OUT=${OUT:-$(mktemp -d)}
  mkdir -p "$OUT"
  handoff_part
  ;;
*) die "usage: bench/gpu-run.sh prepare|check|run|handoff" ;;
esac
