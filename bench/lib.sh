# Shared by the benchmarks: a TLS docker-registry on 127.0.0.1, images pushed with skopeo, and
# commands run as the unprivileged user boxrun-test. Source it; call bench_setup first.
# shellcheck shell=bash

BENCH_USER=boxrun-test

# bench_setup WORKDIR: build boxrun and the test images; start the registry.
bench_setup() {
    work=$1
    mkdir -p "$work"
    chmod 755 "$work"
    bash scripts/cargo-static build --release --locked -q
    install -m 755 "$(bash scripts/cargo-static --release-binary)" "$work/boxrun"
    bench_registry "$work"
}

# bench_registry WORKDIR: build the test images; start the registry (REGISTRY, stopped on exit)
# and push tiny and layered to it.
bench_registry() {
    work=$1
    bash images/build.sh "$work/images"
    bench_tls "$work/tls"
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    REGISTRY=127.0.0.1:$port
    mkdir -p "$work/registry"
    cat > "$work/registry.yml" <<YAML
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $work/registry}}
http: {addr: $REGISTRY, tls: {certificate: $work/tls/server.pem, key: $work/tls/server.key}}
YAML
    docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
    REGISTRY_PID=$!
    trap 'kill $REGISTRY_PID 2>/dev/null || true' EXIT
    until curl_ok; do sleep 0.1; done
    bench_push "$work/images/tiny" tiny
    bench_push "$work/images/layered" layered
}

# bench_home RUN: a home for the bench user under RUN (HOME, XDG_RUNTIME_DIR, a boxrun config
# trusting the registry's CA; everything under RUN becomes the user's), and as_user: the command
# prefix that runs what follows as that user there.
bench_home() {
    local run=$1
    mkdir -p "$run/home/.config/boxrun" "$run/xdg"
    chmod 700 "$run/xdg"
    printf '[registries."%s"]\nca_file = "%s"\n' "$REGISTRY" "$work/tls/ca.pem" > "$run/home/.config/boxrun/config.toml"
    chown -R "$BENCH_USER:" "$run"
    # One line: bench/compare reads it into an array with `read`.
    as_user="setpriv --reuid $BENCH_USER --regid $BENCH_USER --init-groups -- env -i PATH=/usr/bin:/bin"
    as_user+=" USER=$BENCH_USER HOME=$run/home XDG_RUNTIME_DIR=$run/xdg REQUESTS_CA_BUNDLE=$work/tls/ca.pem"
}

# bench_layer_images DIR: push layer30 and layer300, one-layer images of 30 MB and 300 MB of
# incompressible data (pull's memory must not grow with the layer).
bench_layer_images() {
    local dir=$1 size
    for size in 30 300; do
        [ -e "$dir/layer$size/index.json" ] || {
            rm -rf "$dir/src$size" && mkdir -p "$dir/src$size"
            head -c "${size}M" /dev/urandom > "$dir/src$size/data"
            python3 images/oci_layer.py "$dir/layer$size" "$dir/src$size"
        }
        bench_push "$dir/layer$size" "layer$size"
    done
}

curl_ok() {
    python3 - "$REGISTRY" "$work/tls/ca.pem" <<'PY' 2>/dev/null
import ssl, sys, urllib.request
ctx = ssl.create_default_context(cafile=sys.argv[2])
urllib.request.urlopen(f"https://{sys.argv[1]}/v2/", context=ctx)
PY
}

bench_tls() {
    local dir=$1
    [ -f "$dir/server.pem" ] && return
    mkdir -p "$dir"
    (cd "$dir"
     openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 30 -subj /CN=bench-ca 2>/dev/null
     openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=localhost 2>/dev/null
     printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' > ext.cnf
     openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 30 -extfile ext.cnf 2>/dev/null
     chmod 644 ca.pem)
}

# bench_push LAYOUT NAME
bench_push() {
    skopeo copy --quiet --preserve-digests --dest-tls-verify=false "oci:$1:latest" "docker://$REGISTRY/$2:latest"
}
