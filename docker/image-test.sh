#!/usr/bin/env bash
# `make image-test`: build the CPU variant of the repository's Dockerfile for real and run the product inside it.
#
# No Docker engine is needed: buildah builds and runs the image (`--isolation chroot`, `--storage-driver vfs`,
# which work as root in an unprivileged sandbox), on a Debian 12 base made here with debootstrap, from a
# wheelhouse made here with `pip download` (no pip inside the build talks to a package index: the same path
# as an air-gapped build, docs/docker.md). Root and Linux only; not part of `make test`.
#
# Steps (each prints its time):
#   1. base        localhost/debian:bookworm from debootstrap --variant=minbase (reused when it exists)
#   2. wheelhouse  requirements.txt + requirements-hf.txt as py3.11 wheels under $CACHE (reused while both
#                  are unchanged)
#   3. build       buildah bud of ./Dockerfile, CPU build arguments, the wheelhouse as the `wheels` context
#   4. config      non-root numeric user, tini first in the entrypoint, layer count, size
#   5. inside      no compilers or pip cache; entrypoint --dry-run (plain run, PyTorchJob worker); doctor;
#                  a short CPU training as the image's user into a mounted run dir; SIGTERM -> exit 75 +
#                  a checkpoint
#   6. mirror      the builder stage once more, from a PyPI-style index on loopback (PIP_INDEX_URL etc.)
#
# chroot isolation has no PID namespace: tini is not PID 1 there, so it runs with -s (subreaper), and
# signals are sent from a wrapper inside the container (a TERM to `buildah run` does not reach it).
#
# Settings (environment): IMAGE (localhost/torchrunner:test-cpu), BASE (localhost/debian:bookworm),
# DEBIAN_MIRROR (http://deb.debian.org/debian), CACHE (build/image-test), PYTHON (.venv/bin/python, for
# pip download), KEEP_IMAGE (1: keep the built image; 0: remove it at the end), REBUILD (0: reuse an
# existing $IMAGE, to iterate on the checks), MIRROR_CHECK (0: skip step 6).
# The scripts in single quotes below run in the container's bash, which expands them; their arguments come
# after them as "$@".
# shellcheck disable=SC2016
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-localhost/torchrunner:test-cpu}
BASE=${BASE:-localhost/debian:bookworm}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CACHE=${CACHE:-build/image-test}
PYTHON=${PYTHON:-.venv/bin/python}
KEEP_IMAGE=${KEEP_IMAGE:-1}
REBUILD=${REBUILD:-1}
MIRROR_CHECK=${MIRROR_CHECK:-1}
APP_UID=1000
# The image's Python: the wheelhouse must match it (Debian 12: 3.11; Ubuntu 24.04 would be 3.12).
PY_VERSION=3.11

B=(buildah --storage-driver vfs)
t_start=$SECONDS

log() { printf 'image-test: %s\n' "$*"; }
fail() {
  printf 'image-test: FAIL %s\n' "$*" >&2
  exit 1
}
mib() { du -sm "$1" | cut -f1; }
disk_used_mib() { df -Pm "$1" | awk 'NR == 2 { print $3 }'; }

if [[ $(uname -s) != Linux || $(id -u) != 0 ]]; then
  fail "needs root on Linux (buildah --isolation chroot)"
fi
for tool in buildah debootstrap; do
  command -v "$tool" >/dev/null || fail "$tool is not installed (apt-get install -y buildah debootstrap)"
done
mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd)
STORAGE=$("${B[@]}" info --format '{{.store.GraphRoot}}')
mkdir -p "$STORAGE"

# Peak disk use during the build: vfs stores every layer as a full copy, so this is the figure to watch.
disk_before=$(disk_used_mib "$STORAGE")
peak_file=$CACHE/disk-peak
echo "$disk_before" >"$peak_file"
(
  peak=$disk_before
  while sleep 2; do
    now=$(disk_used_mib "$STORAGE")
    if ((now > peak)); then
      peak=$now
      echo "$peak" >"$peak_file"
    fi
  done
) &
sampler=$!
ctr=
work=
server=
cleanup() {
  kill "$sampler" 2>/dev/null || true
  if [[ -n $server ]]; then kill "$server" 2>/dev/null || true; fi
  if [[ -n $ctr ]]; then "${B[@]}" rm "$ctr" >/dev/null 2>&1 || true; fi
  if [[ -n $work ]]; then rm -rf "$work"; fi
}
trap cleanup EXIT

# --- 1. base image ------------------------------------------------------------------------------------------
if "${B[@]}" inspect --type image "$BASE" >/dev/null 2>&1; then
  log "base: $BASE exists, reused"
else
  t=$SECONDS
  rootfs=$CACHE/rootfs
  rm -rf "$rootfs"
  debootstrap --variant=minbase bookworm "$rootfs" "$DEBIAN_MIRROR" >"$CACHE/debootstrap.log" 2>&1 ||
    fail "debootstrap (log: $CACHE/debootstrap.log)"
  # The sources of Debian's own bookworm image: the release, its updates and the security archive.
  rm -f "$rootfs/etc/apt/sources.list"
  cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $DEBIAN_MIRROR
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${DEBIAN_MIRROR%/debian}/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  c=$("${B[@]}" from scratch)
  cp -a "$rootfs/." "$("${B[@]}" mount "$c")/"
  "${B[@]}" umount "$c" >/dev/null
  "${B[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd bash "$c"
  "${B[@]}" commit -q "$c" "$BASE" >/dev/null
  "${B[@]}" rm "$c" >/dev/null
  rm -rf "$rootfs"
  log "base: $BASE from debootstrap in $((SECONDS - t)) s"
fi

# --- 2. wheelhouse ------------------------------------------------------------------------------------------
# The image's Python version, the host's platform tags (a Linux x86_64/aarch64 host; a wheel for a newer glibc
# than Debian 12's 2.36 would make the build's pip refuse it, loudly). The host's pip configuration applies.
wheels=$CACHE/wheels-py$PY_VERSION-$(cat requirements.txt requirements-hf.txt | sha256sum | cut -c1-12)
if [[ -d $wheels ]]; then
  log "wheelhouse: $wheels exists, reused ($(mib "$wheels") MiB)"
else
  t=$SECONDS
  rm -rf "$wheels.tmp"
  "$PYTHON" -m pip download -q -r requirements-hf.txt -d "$wheels.tmp" --python-version "$PY_VERSION" \
    --only-binary=:all: >"$CACHE/pip-download.log" 2>&1 || {
    tail -20 "$CACHE/pip-download.log" >&2
    fail "pip download of requirements-hf.txt (and requirements.txt) (log: $CACHE/pip-download.log)"
  }
  mv "$wheels.tmp" "$wheels"
  log "wheelhouse: $(find "$wheels" -name '*.whl' | wc -l) wheels, $(mib "$wheels") MiB in $((SECONDS - t)) s"
fi

# --- 3. build -----------------------------------------------------------------------------------------------
# Without --layers (buildah's default) each stage is committed once: the image is the base plus one layer,
# instead of one full copy of the venv per instruction under vfs.
build() {
  if "${B[@]}" inspect --type image "$IMAGE" >/dev/null 2>&1; then
    "${B[@]}" rmi -f "$IMAGE" >/dev/null # a rebuild would leave the old copy dangling
  fi
  "${B[@]}" bud --isolation chroot --layers=false -f Dockerfile -t "$IMAGE" \
    --build-context "wheels=$wheels" \
    --build-arg "BASE_IMAGE=$BASE" \
    --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu \
    --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=/wheels \
    --build-arg "VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)" --build-arg "APP_UID=$APP_UID" \
    --build-arg "VCS_REF=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    . 2>&1 | stamp "$CACHE/build.log"
}
stamp() { # FILE: each line of stdin into FILE with the seconds since $t; FROM/RUN/COPY steps also to stdout
  local line
  : >"$1"
  while IFS= read -r line; do
    printf '%4d s %s\n' $((SECONDS - t)) "$line" >>"$1"
    if [[ $line =~ ^\[[0-9]+/[0-9]+\]\ (STEP\ [0-9]+/[0-9]+:\ (FROM|RUN|COPY)|COMMIT) ]]; then
      printf 'image-test:   %4d s %s\n' $((SECONDS - t)) "${line:0:100}"
    fi
  done
}
t=$SECONDS
if [[ $REBUILD == 0 ]] && "${B[@]}" inspect --type image "$IMAGE" >/dev/null 2>&1; then
  log "build: $IMAGE exists, reused (REBUILD=0)"
else
  build || {
    tail -40 "$CACHE/build.log" >&2
    fail "buildah bud (log: $CACHE/build.log)"
  }
  log "build: $IMAGE in $((SECONDS - t)) s (log: $CACHE/build.log)"
fi
build_s=$((SECONDS - t))

# --- 4. image config ----------------------------------------------------------------------------------------
config=$("${B[@]}" inspect --type image "$IMAGE")
summary=$(python3 -c '
import json, sys
c = json.load(sys.stdin)["OCIv1"]
cfg = c["config"]
user, entry = cfg.get("User", ""), cfg.get("Entrypoint") or []
uid, _, gid = user.partition(":")
problems = []
if not (uid.isdigit() and int(uid) != 0 and (not gid or (gid.isdigit() and int(gid) != 0))):
    problems.append(f"user {user!r} is not a numeric non-root uid:gid")
if entry[:2] != ["/usr/bin/tini", "--"]:
    problems.append(f"entrypoint {entry} does not start with tini")
cmd, layers = cfg.get("Cmd"), len(c["rootfs"]["diff_ids"])
print(f"user={user} entrypoint={json.dumps(entry)} cmd={json.dumps(cmd)} layers={layers}")
for p in problems:
    print("PROBLEM " + p)
# The entrypoint as declared, with tini as a subreaper (-s): it is not PID 1 under chroot isolation.
print("ENTRY", *entry[:1], "-s", *entry[1:])
' <<<"$config")
log "config: $(grep -v '^ENTRY ' <<<"$summary")"
if [[ $summary == *PROBLEM* ]]; then fail "image config"; fi
read -ra entry <<<"$(sed -n 's/^ENTRY //p' <<<"$summary")"
size=$("${B[@]}" images --format '{{.Size}}' "$IMAGE" | head -1)
log "size: $IMAGE is $size"

# --- 5. inside the image ------------------------------------------------------------------------------------
work=$(mktemp -d "$CACHE/runs.XXXXXX")
chown "$APP_UID:$APP_UID" "$work" # the mounted run dir is writable by the image's uid, not by the image's root
ctr=$("${B[@]}" from -q "$IMAGE")
run() { "${B[@]}" run --isolation chroot --env OMP_NUM_THREADS=1 "$@"; }

check() { # NAME COMMAND...: run, print ok/FAIL with its time, keep the output in $out
  local name=$1 t=$SECONDS rc=0
  shift
  out=$("$@" 2>&1) || rc=$?
  if ((rc != 0)); then
    printf '%s\n' "$out" | tail -30 >&2
    fail "$name (exit $rc)"
  fi
  log "ok   $name ($((SECONDS - t)) s)"
}
expect() { # TEXT PATTERN WHAT
  grep -Eq -- "$2" <<<"$1" || {
    printf '%s\n' "$1" | tail -30 >&2
    fail "$3: no line matching '$2'"
  }
}

# No compilers, no pip cache, no apt lists (as root, to see /root).
check "no compilers, pip cache or apt lists" run --user 0:0 "$ctr" -- bash -c '
  for c in gcc cc g++ c++ clang make cmake; do
    if command -v "$c"; then echo "compiler left: $c"; exit 1; fi
  done
  caches=$(find / -xdev -type d -path "*/.cache/pip" 2>/dev/null)
  if [ -n "$caches" ]; then echo "pip cache left: $caches"; exit 1; fi
  if [ -n "$(find /var/lib/apt/lists -type f ! -name lock 2>/dev/null)" ]; then echo "apt lists left"; exit 1; fi
  id -u app'
expect "$out" "^$APP_UID$" "the app user"

check "entrypoint --dry-run, plain run" run "$ctr" -- "${entry[@]}" --dry-run -c configs/cnn.yaml
expect "$out" "^# ddp: 1 node\(s\) x [0-9]+ process\(es\), node rank 0, from local" "plain dry-run"
expect "$out" "^torchrun .*--standalone" "plain dry-run"
log "     $(grep -m1 '^# ' <<<"$out")"

# A PyTorchJob (Kubeflow v1) worker: RANK is the node rank. A socket inside the container stands in for the
# master's rendezvous store, so the entrypoint's wait for the master really runs.
check "entrypoint --dry-run, PyTorchJob worker" run "$ctr" -- bash -c '
  python - >/tmp/port <<EOF &
import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
print(s.getsockname()[1], flush=True); sys.stdout.close(); time.sleep(60)
EOF
  stand_in=$!
  for _ in $(seq 100); do [ -s /tmp/port ] && break; sleep 0.1; done
  MASTER_ADDR=127.0.0.1 MASTER_PORT=$(cat /tmp/port) WORLD_SIZE=2 RANK=1 PET_NNODES=2 PET_NODE_RANK=1 \
    PET_NPROC_PER_NODE=1 ENTRYPOINT_WAIT_S=30 "$@" --dry-run -c configs/cnn.yaml
  rc=$?; kill $stand_in; exit $rc' bash "${entry[@]}"
expect "$out" "^# ddp: 2 node\(s\) x 1 process\(es\), node rank 1, from pytorchjob-v1" "worker dry-run"
expect "$out" "wait: 127\.0\.0\.1:[0-9]+ is ready" "worker dry-run"
expect "$out" "--rdzv-endpoint[= ]127\.0\.0\.1:[0-9]+" "worker dry-run"
log "     $(grep -m1 '^# ' <<<"$out"); $(grep -m1 -o 'wait: .* is ready' <<<"$out")"

check "doctor" run -v "$work:/runs" "$ctr" -- "${entry[@]}" doctor run.dir=/runs/doctor
printf '%s\n' "$out" | sed 's/^/  doctor| /'

train=(model.name=mlp "model.hidden=[32]" data.name=synthetic_classification data.num_samples=512
  data.num_features=8 data.num_classes=4 train.batch_size=32 optim.name=sgd optim.lr=0.1
  log.tensorboard=false log.plot=false train.eval_every_steps=0 device=cpu)
check "training as uid $APP_UID into a mounted run dir" run -v "$work:/runs" --env RUN_DIR=/runs/train "$ctr" -- \
  "${entry[@]}" single "${train[@]}" train.max_steps=20 log.every_steps=5 checkpoint.every_steps=10
[[ -s $work/train/metrics.jsonl ]] || fail "training wrote no metrics.jsonl"
latest=$(cat "$work/train/checkpoints/latest")
[[ -f $work/train/checkpoints/$latest/manifest.json ]] || fail "training: no checkpoint $latest"
owner=$(stat -c %u "$work/train/metrics.jsonl")
((owner == APP_UID)) || fail "training: metrics.jsonl owned by uid $owner, expected $APP_UID"
log "     run dir: metrics.jsonl ($(wc -l <"$work/train/metrics.jsonl") lines), checkpoint $latest, owner uid $owner"

# SIGTERM from inside: start the entrypoint, wait until two intervals are logged, TERM it, expect 75.
check "SIGTERM -> exit 75 with a checkpoint" run -v "$work:/runs" --env RUN_DIR=/runs/sigterm "$ctr" -- bash -c '
  n=$1; shift; entry=("${@:1:n}"); shift "$n"  # the entrypoint argv, then the training overrides
  "${entry[@]}" single "$@" train.max_steps=1000000 log.every_steps=5 &
  pid=$!
  m=/runs/sigterm/metrics.jsonl
  for _ in $(seq 600); do
    if [ -f $m ] && [ "$(wc -l <$m)" -ge 2 ]; then break; fi
    kill -0 $pid 2>/dev/null || break
    sleep 0.2
  done
  kill -TERM $pid
  rc=0; wait $pid || rc=$?
  echo "entrypoint exit: $rc"
  [ $rc -eq 75 ]' bash "${#entry[@]}" "${entry[@]}" "${train[@]}"
expect "$out" "preempted by signal" "SIGTERM"
log "     $(grep -m1 -o 'preempted by signal.*' <<<"$out"); $(grep -m1 'entrypoint exit' <<<"$out")"
latest=$(cat "$work/sigterm/checkpoints/latest")
[[ -f $work/sigterm/checkpoints/$latest/manifest.json ]] || fail "SIGTERM: no checkpoint $latest"
log "     checkpoint $latest after SIGTERM"

"${B[@]}" rm "$ctr" >/dev/null
ctr=

# --- 6. the mirror path -------------------------------------------------------------------------------------
# The builder stage again, this time with no wheels context and pip pointed at a PEP 503 index (the layout of
# devpi, Artifactory or a PyPI mirror) served on loopback from the same wheels: PIP_INDEX_URL,
# PIP_TRUSTED_HOST and TORCH_INDEX_URL as a user behind a mirror passes them.
if [[ $MIRROR_CHECK != 0 ]]; then
  t=$SECONDS
  index=$work/index
  python3 - "$wheels" "$index" <<'PY'
import html, os, re, sys
wheels, index = sys.argv[1:]
projects = {}
for name in sorted(os.listdir(wheels)):
    projects.setdefault(re.sub(r"[-_.]+", "-", name.split("-")[0]).lower(), []).append(name)
os.makedirs(f"{index}/files")
for project, files in projects.items():
    os.makedirs(f"{index}/simple/{project}")
    links = "".join(f'<a href="../../files/{html.escape(f)}">{html.escape(f)}</a><br>' for f in files)
    with open(f"{index}/simple/{project}/index.html", "w") as out:
        out.write(f"<!DOCTYPE html><html><body>{links}</body></html>")
    for f in files:
        os.link(f"{wheels}/{f}", f"{index}/files/{f}")
PY
  python3 -m http.server 0 --bind 127.0.0.1 --directory "$index" >"$CACHE/index.log" 2>&1 &
  server=$!
  port=
  for _ in $(seq 100); do
    port=$(sed -n 's/^Serving HTTP on 127\.0\.0\.1 port \([0-9]*\).*/\1/p' "$CACHE/index.log")
    if [[ -n $port ]]; then break; fi
    sleep 0.1
  done
  [[ -n $port ]] || fail "mirror: the index server did not start (log: $CACHE/index.log)"
  url=http://127.0.0.1:$port/simple
  mapfile -t before < <("${B[@]}" containers -q)
  rc=0
  "${B[@]}" bud --isolation chroot --layers=false --target builder -f Dockerfile -t "$IMAGE-mirror-builder" \
    --build-arg "BASE_IMAGE=$BASE" --build-arg "PIP_INDEX_URL=$url" --build-arg PIP_TRUSTED_HOST=127.0.0.1 \
    --build-arg "TORCH_INDEX_URL=$url" . 2>&1 | stamp "$CACHE/build-mirror.log" || rc=$?
  kill "$server"
  server=
  # buildah 1.28 leaves the working container of the unused `wheels` stage behind after --target: remove
  # the containers this build created, then its image.
  for c in $("${B[@]}" containers -q); do
    if [[ " ${before[*]} " != *" $c "* ]]; then "${B[@]}" rm "$c" >/dev/null; fi
  done
  "${B[@]}" rmi "$IMAGE-mirror-builder" >/dev/null 2>&1 || true
  if ((rc != 0)); then
    tail -40 "$CACHE/build-mirror.log" >&2
    fail "mirror build (log: $CACHE/build-mirror.log)"
  fi
  served=$(grep -c 'GET /files/' "$CACHE/index.log" || true)
  grep -q "Looking in indexes: $url" "$CACHE/build-mirror.log" || fail "mirror: pip did not use $url"
  ((served == $(find "$wheels" -name '*.whl' | wc -l))) ||
    fail "mirror: the index served $served wheels, expected every wheel of the wheelhouse"
  log "ok   builder stage from a mirror index at $url: $served wheels served ($((SECONDS - t)) s)"
fi

kill "$sampler" 2>/dev/null || true
peak=$(cat "$peak_file")
log "disk: storage $(mib "$STORAGE") MiB ($STORAGE), peak $((peak - disk_before)) MiB above the start" \
  "(df, includes other writers), wheelhouse $(mib "$wheels") MiB"
if [[ $KEEP_IMAGE == 0 ]]; then
  "${B[@]}" rmi "$IMAGE" >/dev/null
  log "removed $IMAGE (KEEP_IMAGE=0)"
else
  log "kept $IMAGE: buildah --storage-driver vfs rmi $IMAGE to free it"
fi
log "all checks passed in $((SECONDS - t_start)) s (build $build_s s, size $size)"
