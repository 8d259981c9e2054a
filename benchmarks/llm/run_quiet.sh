#!/usr/bin/env bash
# Run the LLM benchmarks one after another, with their defaults, on a quiet machine.
#
# Each script writes its own section of benchmarks/llm/RESULTS.md. Before each, the 1-minute
# load average must fall below MAX_LOAD (0.5) within LOAD_WAIT_S (60 s); if it does not, the
# script runs anyway and the log says so (its section records the load it started at).
# Everything goes to LOG (/tmp/llm_bench.log), with each script's start, end, exit status
# and wall time; a script that fails does not stop the others. Exit status: the number of
# scripts that failed.
#
#   benchmarks/llm/run_quiet.sh                 # all seven, ~65 min
#   benchmarks/llm/run_quiet.sh routing kv_restore   # only these, in this order
#   SMOKE=1 benchmarks/llm/run_quiet.sh         # tiny settings (~8 min), written to
#                                               # /tmp/llm_smoke_RESULTS.md, not RESULTS.md
#
# LiteLLM's proxy for gateway_overhead is looked for at LITELLM (default
# /tmp/litellm-venv/bin/litellm: python3 -m venv /tmp/litellm-venv &&
# /tmp/litellm-venv/bin/pip install 'litellm[proxy]'). Redis must be at 127.0.0.1:6379.
set -u

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
LOG="${LOG:-/tmp/llm_bench.log}"
MAX_LOAD="${MAX_LOAD:-0.5}"
LOAD_WAIT_S="${LOAD_WAIT_S:-60}"
LITELLM="${LITELLM:-/tmp/litellm-venv/bin/litellm}"
SCRIPTS=(gateway_overhead routing routing_long token_limits cold_start weights_cold_start kv_restore)
ROUTING_LONG_ARGS="${ROUTING_LONG_ARGS:---users 8 --think-time 20 --warmup 40 --seconds 120 --unique-seconds 10 --prompt-tokens 64 --max-tokens 128 --turns 8}"
if [ "$#" -gt 0 ]; then
    SCRIPTS=("$@")
fi

log() { echo "$(date -u '+%Y-%m-%d %H:%M:%S UTC') $*" | tee -a "$LOG"; }

load_1m() { cut -d' ' -f1 /proc/loadavg; }

# Wait until the 1-minute load average is below MAX_LOAD, at most LOAD_WAIT_S seconds.
wait_for_quiet() {
    local waited=0
    while awk -v l="$(load_1m)" -v m="$MAX_LOAD" 'BEGIN { exit !(l >= m) }'; do
        if [ "$waited" -ge "$LOAD_WAIT_S" ]; then
            log "load average $(load_1m) still >= $MAX_LOAD after ${LOAD_WAIT_S} s: running anyway"
            return 1
        fi
        sleep 5
        waited=$((waited + 5))
    done
    log "load average $(load_1m) < $MAX_LOAD (waited ${waited} s)"
    return 0
}

cd "$ROOT" || exit 1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
log "=== LLM benchmarks: ${SCRIPTS[*]} (git $(git rev-parse --short HEAD 2>/dev/null))"
failed=0
for name in "${SCRIPTS[@]}"; do
    script="benchmarks/llm/$name.py"
    args=()
    if [ "$name" = routing_long ]; then
        # The routing comparison on conversations with answers longer than the questions
        # (LMSYS-Chat-1M: 69.5-token prompts, 214.5-token answers on average) and more users
        # than replicas, near the engines' capacity; its own section of RESULTS.md.
        script="benchmarks/llm/routing.py"
        args=(--section routing_long --title ", long answers" $ROUTING_LONG_ARGS)
    fi
    if [ ! -f "$script" ]; then
        log "no such benchmark: $script"
        failed=$((failed + 1))
        continue
    fi
    if [ "$name" = gateway_overhead ]; then
        # An empty KV slot folder: a saved prefix of an identical prompt from an earlier run
        # would be restored through the gateway only, which is not the comparison made here.
        args=(--litellm "$LITELLM" --kv-slots empty)
    fi
    if [ -n "${SMOKE:-}" ]; then  # proves the chain works end to end; numbers mean nothing
        case "$name" in
            gateway_overhead) args+=(--rounds 1 --seconds 3 --warmup 1 --max-tokens 8 --concurrency 1 4) ;;
            routing|routing_long) args+=(--rounds 1 --seconds 3 --unique-seconds 3 --warmup 1 --users 2 --turns 2 --max-tokens 8) ;;
            token_limits) args+=(--rounds 1 --streams 6 --seconds 5) ;;
            cold_start) args+=(--rounds 1 --load-seconds 1) ;;
            weights_cold_start) args+=(--rounds 1) ;;
            kv_restore) args+=(--rounds 1 --tokens 300) ;;
        esac
        args+=(--out /tmp/llm_smoke_RESULTS.md)
    fi
    wait_for_quiet
    log "--- start $name: $PYTHON $script ${args[*]}"
    started=$(date +%s)
    "$PYTHON" "$script" "${args[@]}" >>"$LOG" 2>&1
    status=$?
    log "--- end $name: exit $status after $(( $(date +%s) - started )) s"
    if [ "$status" -ne 0 ]; then
        failed=$((failed + 1))
    fi
done
log "=== done: $failed of ${#SCRIPTS[@]} failed"
exit "$failed"
