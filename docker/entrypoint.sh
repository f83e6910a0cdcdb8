#!/usr/bin/env bash
# Container entrypoint: find out where we run, wait for the master if we are not it, then exec the launcher.
#
#   docker run IMAGE                                        # default CMD: -c configs/cnn.yaml
#   docker run IMAGE -c configs/gpt.yaml train.precision=bf16
#   docker run IMAGE fsdp -c configs/gpt.yaml               # a launch mode as the first word
#   docker run IMAGE doctor | trainer ... | launch ... | bash | python ... | any command on PATH
#
# Steps, for a training run:
#   1. `python -m launch env --json` reads the cluster (plain docker, Kubeflow PyTorchJob v1, Trainer v2,
#      Indexed Job, JobSet, Volcano, Slurm) from the environment; a contradiction, or a world that looks
#      distributed but names no node count (e.g. an Indexed Job pod without LAUNCH_NNODES, an MPI world),
#      stops here with its exit code (2) and one line naming the variable.
#   2. On a node other than 0 of a multi-node job, `python -m launch wait` waits up to ENTRYPOINT_WAIT_S
#      for the rendezvous host to resolve and its port to answer, instead of crash-looping while the master
#      pod is still being scheduled; it exits 69 (EX_UNAVAILABLE) on timeout.
#   3. `exec python -m launch MODE ... "$@"`: the launcher becomes this process (PID 1's only child under
#      tini), so SIGTERM from `docker stop` or the kubelet reaches it, and it forwards it to the workers,
#      which save a checkpoint and exit 75.
#
# Settings (environment):
#   LAUNCH_MODE        single | dp | ddp | fsdp | accelerate (default ddp)
#   NPROC_PER_NODE     processes on this node: N or auto (default: the cluster's value, else auto)
#   MAX_RESTARTS       torchrun --max-restarts (default: the launcher's)
#   RUN_DIR            run.dir for the trainer, e.g. /runs/<job> on a shared volume (appended as run.dir=...
#                      unless the arguments already set run.dir)
#   ENTRYPOINT_WAIT_S  seconds a non-zero node waits for the master (default 300; 0 = do not wait)
#   LAUNCH_LOCAL_ADDR  the address this node advertises to its peers (the launcher's --local-addr): set it where
#                      the pod's or host's name resolves to another network than the one the nodes share
#                      (multi-homed nodes: management NIC + fabric NIC); with GLOO_SOCKET_IFNAME/NCCL_SOCKET_IFNAME
#   NCCL_SOCKET_IFNAME, GLOO_SOCKET_IFNAME, NCCL_IB_HCA  the fabric (`launch k8s render --net-if/--rdma`):
#                      logged here, checked by the launcher's preflight (a missing interface: exit 2), inherited
#                      by every worker
#   PYTHON             interpreter (default python; the tests point it at the repository's .venv)
#   APP_DIR            where the code and configs live (default: this script's parent, /app in the image)
# Exit codes: the launcher's (0 ok, 1 internal, 2 config, 3 non-finite loss, 4 hang, 75 preempted),
# 69 when the master never became reachable, 2 for an unknown command.
set -euo pipefail

PYTHON=${PYTHON:-python}
LAUNCH_MODE=${LAUNCH_MODE:-ddp}
ENTRYPOINT_WAIT_S=${ENTRYPOINT_WAIT_S:-300}

log() { printf 'entrypoint: %s\n' "$*" >&2; }

if [[ ! $ENTRYPOINT_WAIT_S =~ ^[0-9]+$ ]]; then
  log "ENTRYPOINT_WAIT_S='$ENTRYPOINT_WAIT_S': expected whole seconds (0 = do not wait)"
  exit 2
fi

# --- 1. A command instead of a training run ---------------------------------------------------------------
case "${1:-}" in
  single | dp | ddp | fsdp | accelerate)
    LAUNCH_MODE=$1
    shift
    ;;
  trainer | launch)
    exec "$PYTHON" -m "$@"
    ;;
  doctor)
    shift
    exec "$PYTHON" -m launch doctor "$@"
    ;;
  "" | -* | *=*) ;; # launcher options and trainer overrides
  *)
    if command -v -- "$1" >/dev/null 2>&1; then
      exec "$@"
    fi
    log "'$1' is neither a launch mode (single dp ddp fsdp accelerate), a command (trainer launch doctor)," \
      "nor a program on PATH; to train: -c CONFIG [KEY=VALUE ...]"
    exit 2
    ;;
esac

APP_DIR=${APP_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
cd "$APP_DIR"

# --- 2. Where are we? -------------------------------------------------------------------------------------
rc=0
cluster=$("$PYTHON" -m launch env --json) || rc=$?
if ((rc != 0)); then
  log "could not read the cluster environment (the line above says which variable); exit $rc"
  exit "$rc"
fi
# One line, '-' for an empty field: source nnodes node_rank rendezvous-host rendezvous-port
fields=$("$PYTHON" -c '
import json, sys
d = json.load(sys.stdin)
host, port = d.get("master_addr"), d.get("master_port")
if d.get("rdzv_endpoint"):
    host, _, port = d["rdzv_endpoint"].rpartition(":")
print(*(str(v) if v not in (None, "") else "-" for v in (d.get("source"), d.get("nnodes", 1), d.get("node_rank", 0), host, port)))
' <<<"$cluster")
read -r source nnodes node_rank master_host master_port <<<"$fields"
log "cluster: $source, node $node_rank of $nnodes, rendezvous ${master_host}:${master_port}"
net=()
for var in NCCL_SOCKET_IFNAME GLOO_SOCKET_IFNAME NCCL_IB_HCA; do
  if [[ -n ${!var:-} ]]; then
    net+=("$var=${!var}")
  fi
done
if ((${#net[@]} > 0)); then
  log "network: ${net[*]}"
fi

# --- 3. Wait for the master (bounded), so workers do not crash-loop while it starts -----------------------
if ((nnodes > 1 && node_rank != 0 && ENTRYPOINT_WAIT_S > 0)) && [[ $master_host != - ]]; then
  wait_args=(--host "$master_host" --timeout "$ENTRYPOINT_WAIT_S")
  if [[ $master_port != - ]]; then
    wait_args+=(--port "$master_port")
  fi
  # The wait runs in the background so that a SIGTERM during it ends it at once (bash runs traps only
  # between foreground commands); the traps go first so that no signal finds the shell without them.
  waiter=
  trap 'if [[ -n $waiter ]]; then kill -TERM "$waiter" 2>/dev/null; fi; exit 143' TERM
  trap 'if [[ -n $waiter ]]; then kill -TERM "$waiter" 2>/dev/null; fi; exit 130' INT
  log "waiting up to ${ENTRYPOINT_WAIT_S} s for ${master_host}:${master_port}"
  "$PYTHON" -m launch wait "${wait_args[@]}" &
  waiter=$!
  rc=0
  wait "$waiter" || rc=$?
  trap - TERM INT
  if ((rc != 0)); then
    exit "$rc"
  fi
fi

# --- 4. Become the launcher ---------------------------------------------------------------------------------
args=("$LAUNCH_MODE")
if [[ -n ${NPROC_PER_NODE:-} ]]; then
  args+=(--nproc-per-node "$NPROC_PER_NODE")
fi
if [[ -n ${MAX_RESTARTS:-} ]]; then
  args+=(--max-restarts "$MAX_RESTARTS")
fi
overrides=()
if [[ -n ${RUN_DIR:-} ]]; then
  user_run_dir=0
  for arg in "$@"; do
    if [[ $arg == run.dir=* ]]; then
      user_run_dir=1
    fi
  done
  if ((user_run_dir == 0)); then
    overrides+=("run.dir=$RUN_DIR")
  fi
fi
log "exec $PYTHON -m launch ${args[*]} $* ${overrides[*]}"
exec "$PYTHON" -m launch "${args[@]}" "$@" "${overrides[@]}"
