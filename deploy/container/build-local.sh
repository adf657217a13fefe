#!/usr/bin/env bash
# Builds the image on a machine that cannot pull base images, starts it, and asks it for a
# RouteDecision. The base is a Debian root filesystem made by debootstrap and imported with
# podman; the binary is the host's release build (the Containerfile's `runtime-host`
# target). Installs Debian's podman, runc and debootstrap where missing (as root).
#
#   bash deploy/container/build-local.sh            # build, run, check, remove the container
#   KEEP=1 bash deploy/container/build-local.sh     # leave the container running
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
work="$root/target/container"
mkdir -p "$work"

need=()
for tool in podman:podman runc:runc debootstrap:debootstrap; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || [[ -x /usr/sbin/${tool%%:*} ]] || need+=("${tool#*:}")
done
if ((${#need[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" uidmap >/dev/null
fi

# crun (podman's default) refuses this kind of machine's hybrid cgroups; runc with the
# cgroupfs manager and no default ulimits works.
export CONTAINERS_CONF="$work/containers.conf"
cat >"$CONTAINERS_CONF" <<'CONF'
[containers]
default_ulimits = []
[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
CONF
podman=(podman --runtime /usr/sbin/runc)

base=localhost/switchboard-base:bookworm
if ! "${podman[@]}" image exists "$base"; then
  rootfs="$work/rootfs"
  rm -rf "$rootfs"
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  debootstrap --variant=minbase bookworm "$rootfs" "${mirror:-http://deb.debian.org/debian}" >"$work/debootstrap.log"
  # The image needs no package manager caches or logs.
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | "${podman[@]}" import - "$base" >/dev/null
  rm -rf "$rootfs"
fi

cargo build --release --locked --bin switchboard
"${podman[@]}" build --format docker --build-arg BASE="$base" --target runtime-host \
  -t switchboard:local -f deploy/container/Containerfile .

# Loopback ports on the host network; a loopback bind needs no API keys.
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
grpc=$(port)
http=$(port)
name=switchboard-local-check
"${podman[@]}" rm -f "$name" >/dev/null 2>&1 || true
"${podman[@]}" run -d --name "$name" --network host \
  -e SWITCHBOARD_GRPC_ADDR="127.0.0.1:$grpc" -e SWITCHBOARD_HTTP_ADDR="127.0.0.1:$http" \
  -e SWITCHBOARD_ADMIN_ADDR=127.0.0.1:0 -e SWITCHBOARD_METRICS_ADDR=127.0.0.1:0 \
  switchboard:local >/dev/null
cleanup() { [[ -n "${KEEP:-}" ]] || "${podman[@]}" rm -f "$name" >/dev/null 2>&1 || true; }
trap cleanup EXIT

for _ in $(seq 1 120); do
  if "${podman[@]}" exec "$name" /usr/local/bin/switchboard probe --url "http://127.0.0.1:$http/readyz" 2>/dev/null; then
    break
  fi
  sleep 0.5
done
"${podman[@]}" exec "$name" /usr/local/bin/switchboard probe --url "http://127.0.0.1:$http/readyz"
echo "image: $("${podman[@]}" image inspect switchboard:local --format '{{.Id}} {{.Size}}')"
echo "user in the container: $("${podman[@]}" exec "$name" id -u)"
target/release/switchboard route --server "http://127.0.0.1:$grpc" \
  "Write a SQL query that lists the ten largest customers by revenue" | tee "$work/route.txt"
grep -q "sql\|code" "$work/route.txt"
echo "the container answered a RouteDecision"
