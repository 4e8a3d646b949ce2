#!/usr/bin/env bash
# Provides kube-apiserver, etcd and kubectl for the Kubernetes e2e tests and prints the
# directory that holds them (the envtest `KUBEBUILDER_ASSETS` layout).
#
# - If KUBEBUILDER_ASSETS is set, that directory is used as is.
# - Otherwise kube-apiserver and kubectl 1.20.2 are built once from Debian's `kubernetes` source
#   package and cached outside the repository (keyed by version); etcd comes from Debian's
#   `etcd-server`. Only the first run on a machine pays for the build (~5 minutes on 2 cores).
#
# Debian's vendored reflect2 1.0.1 segfaults under Go 1.19, so it is replaced with Debian's
# reflect2 1.0.2 before building.
set -euo pipefail

KUBE_VERSION=1.20.2
cache="${MERIDIAN_CACHE:-$HOME/.cache/meridian}/kube/$KUBE_VERSION"

log() { echo "e2e/kube: $*" >&2; }

apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "apt-get install ${missing[*]}"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
  fi
}

# The harness generates the apiserver's service-account key with openssl.
command -v openssl >/dev/null || apt_install openssl

if [ -n "${KUBEBUILDER_ASSETS:-}" ]; then
  for bin in kube-apiserver etcd kubectl; do
    [ -x "$KUBEBUILDER_ASSETS/$bin" ] || { log "KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS has no $bin"; exit 1; }
  done
  echo "$KUBEBUILDER_ASSETS"
  exit 0
fi

apt_install etcd-server
if [ -x "$cache/kube-apiserver" ] && [ -x "$cache/kubectl" ]; then
  ln -sf /usr/bin/etcd "$cache/etcd"
  echo "$cache"
  exit 0
fi

apt_install golang-go rsync jq dpkg-dev golang-github-modern-go-reflect2-dev
work="$(mktemp -d "${TMPDIR:-/tmp}/meridian-kube-build.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# A private deb-src copy of the machine's Debian sources, so the system apt config is untouched.
mkdir -p "$work/apt/sources.list.d" "$work/apt/lists/partial"
for src in /etc/apt/sources.list.d/*.sources; do
  [ -e "$src" ] || continue
  grep -q 'debian' "$src" || continue
  sed 's/^Types: deb$/Types: deb-src/' "$src" > "$work/apt/sources.list.d/$(basename "$src")"
done
if [ -f /etc/apt/sources.list ]; then
  sed -n 's/^deb \(.*debian.*\)$/deb-src \1/p' /etc/apt/sources.list > "$work/apt/sources.list.d/list-src.list"
fi
apt_opts=(-o "Dir::Etc::SourceParts=$work/apt/sources.list.d" -o "Dir::Etc::SourceList=/dev/null"
  -o "Dir::State::Lists=$work/apt/lists")
log "fetching Debian's kubernetes source package"
apt-get "${apt_opts[@]}" update -qq >&2
(cd "$work" && apt-get "${apt_opts[@]}" source -qq "kubernetes=1.20.5+really$KUBE_VERSION*" >&2 ||
  apt-get "${apt_opts[@]}" source -qq kubernetes >&2)
srcdir="$(find "$work" -maxdepth 1 -type d -name 'kubernetes-*' | head -n1)"
[ -n "$srcdir" ] || { log "apt-get source kubernetes produced no source tree"; exit 1; }

log "replacing vendored reflect2 with Debian's 1.0.2"
reflect2_src=/usr/share/gocode/src/github.com/modern-go/reflect2
rsync -a --delete --exclude '.git*' --exclude debian "$reflect2_src/" "$srcdir/vendor/github.com/modern-go/reflect2/"
sed -i 's#github.com/modern-go/reflect2 v1\.0\.1#github.com/modern-go/reflect2 v1.0.2#' "$srcdir/go.mod" "$srcdir/vendor/modules.txt"

log "building kube-apiserver and kubectl (first run only)"
(cd "$srcdir" && CGO_ENABLED=0 KUBE_VERBOSE=0 make WHAT="cmd/kube-apiserver cmd/kubectl" >&2)
mkdir -p "$cache"
for bin in kube-apiserver kubectl; do
  install -m 0755 "$(find "$srcdir/_output" -type f -name "$bin" -perm -u+x | head -n1)" "$cache/$bin"
done
ln -sf /usr/bin/etcd "$cache/etcd"
log "cached in $cache"
echo "$cache"
