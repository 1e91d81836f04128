# shellcheck shell=bash
# scripts/lib/common.sh -- shared helpers for poolshim's shell scripts (sourced,
# never executed): package installation (ps_need_packages), building the C
# library with meson (ps_build) and logging (ps_say).  Owns nothing else.

# Repository root, computed from this file's location (scripts/lib/..).
PS_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)"
export PS_ROOT

# ps_say MSG...: progress/log line on stderr (stdout stays clean for callers).
ps_say() {
    printf '==> %s\n' "$*" >&2
}

# ps_die MSG...: log and exit 1.
ps_die() {
    printf '==> ERROR: %s\n' "$*" >&2
    exit 1
}

# ps_need_packages PKG...: apt-get install only the packages that are not
# installed yet; runs `apt-get update` once (per shell) and only if needed.
_ps_apt_updated=0
ps_need_packages() {
    local pkg status missing=()
    for pkg in "$@"; do
        status="$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)"
        if [[ "$status" != "install ok installed" ]]; then
            missing+=("$pkg")
        fi
    done
    ((${#missing[@]} == 0)) && return 0

    local sudo=()
    if ((EUID != 0)); then
        command -v sudo >/dev/null 2>&1 || ps_die "need root (or sudo) to install: ${missing[*]}"
        sudo=(sudo)
    fi
    ps_say "installing missing packages: ${missing[*]}"
    if ((_ps_apt_updated == 0)); then
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        _ps_apt_updated=1
    fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

# ps_build: configure build/ with meson if it is not configured yet (or was
# configured from another checkout path: then it is wiped), then compile.
ps_build() {
    local build="$PS_ROOT/build" src=""
    if [[ -f "$build/meson-private/coredata.dat" ]]; then
        # Where was this build dir configured from?
        if [[ -f "$build/meson-info/meson-info.json" ]]; then
            src="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["directories"]["source"])' \
                "$build/meson-info/meson-info.json" 2>/dev/null || true)"
        fi
        if [[ -n "$src" && "$(cd "$src" 2>/dev/null && pwd -P || echo "$src")" != "$PS_ROOT" ]]; then
            ps_say "build/ was configured from $src; wiping it"
            rm -rf "$build"
        fi
    fi
    if [[ ! -f "$build/meson-private/coredata.dat" ]]; then
        ps_say "meson setup build"
        (cd "$PS_ROOT" && meson setup build)
    fi
    ps_say "meson compile -C build"
    meson compile -C "$build"
}

# ps_make_tls DIR: a CA and a server certificate for 127.0.0.1/localhost in DIR (ca.pem,
# server.pem, server-key.pem), valid for two days: for throwaway TLS servers only.
ps_make_tls() {
    local dir="$1"
    mkdir -p "$dir"
    (
        cd "$dir"
        openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=poolshim test CA" \
            -keyout ca-key.pem -out ca.pem
        openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
            -keyout server-key.pem -out server.csr
        printf '%s\n' 'subjectAltName=IP:127.0.0.1,DNS:localhost' 'basicConstraints=CA:FALSE' \
            'keyUsage=digitalSignature,keyEncipherment' 'extendedKeyUsage=serverAuth' >server.ext
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial \
            -days 2 -extfile server.ext -out server.pem
    ) >"$dir/openssl.log" 2>&1 || {
        cat "$dir/openssl.log" >&2
        ps_die "openssl failed"
    }
}
