#!/usr/bin/env bash
# Builds meshd's tiny test image as an OCI image layout tarball, tagged meshd-test:latest.
#
#   scripts/build-test-image.sh [OUT.tar]     (default: target/images/meshd-test.tar)
#
# The image holds Debian's static busybox with its applet links, an /etc/passwd and /etc/group
# with root and nobody, and /serve.sh as its Cmd: it writes the container's hostname into
# /www/index.html, runs `httpd -f -p ${PORT:-80} -h /www` in the background, exits 0 promptly
# on TERM or INT, and otherwise waits. Any command given to the container replaces /serve.sh.
# No docker needed: bash, tar, gzip, sha256sum and python3. Every timestamp is fixed, so the
# same busybox gives the same image digest.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$repo/target/images/meshd-test.tar}"
# The archive is written from inside a work directory: make a relative path absolute.
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac

if [ ! -x /bin/busybox ] || ! /bin/busybox --list >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "build-test-image: /bin/busybox is missing; install Debian's busybox-static (as root)" >&2
        exit 1
    fi
    echo "build-test-image: installing busybox-static" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends busybox-static >/dev/null 2>&1 || {
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends busybox-static >/dev/null
    }
fi
for tool in tar gzip sha256sum python3; do
    command -v "$tool" >/dev/null || { echo "build-test-image: $tool is required" >&2; exit 1; }
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,www,tmp,root,proc,sys,dev,home}
chmod 1777 "$root/tmp"
chmod 0777 "$root/www"
chmod 0700 "$root/root"
cp /bin/busybox "$root/bin/busybox"
chmod 0755 "$root/bin/busybox"
/bin/busybox --list-full | sort | while read -r applet; do
    [ "$applet" = "bin/busybox" ] && continue
    mkdir -p "$root/$(dirname "$applet")"
    ln -sf /bin/busybox "$root/$applet"
done

cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat >"$root/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
EOF
: >"$root/etc/hosts"
: >"$root/etc/resolv.conf"
echo "meshd-test" >"$root/etc/hostname"

cat >"$root/serve.sh" <<'EOF'
#!/bin/sh
# Serves this container's hostname over HTTP until TERM or INT.
hostname >/www/index.html
echo "$(hostname) serving on :${PORT:-80}"
httpd -f -p "${PORT:-80}" -h /www &
httpd_pid=$!
trap 'kill "$httpd_pid" 2>/dev/null; exit 0' TERM INT
wait "$httpd_pid"
EOF
chmod 0755 "$root/serve.sh"
# /cgi-bin/ip answers with the address the request came from (the routing mesh's tests).
mkdir -p "$root/www/cgi-bin"
cat >"$root/www/cgi-bin/ip" <<'EOF'
#!/bin/sh
printf 'Content-Type: text/plain\r\n\r\n%s\n' "$REMOTE_ADDR"
EOF
chmod 0755 "$root/www/cgi-bin/ip"

find "$root" -exec touch -h -d @0 {} +

layout="$work/layout"
mkdir -p "$layout/blobs/sha256"
layer_tar="$work/layer.tar"
(cd "$root" && tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
    --format=posix --pax-option='exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime' \
    -cf "$layer_tar" -- $(ls -A | LC_ALL=C sort))
diff_id="$(sha256sum "$layer_tar" | cut -d' ' -f1)"
gzip -n -9 -c "$layer_tar" >"$work/layer.tar.gz"
layer_digest="$(sha256sum "$work/layer.tar.gz" | cut -d' ' -f1)"
mv "$work/layer.tar.gz" "$layout/blobs/sha256/$layer_digest"

arch="$(dpkg --print-architecture 2>/dev/null || uname -m)"
case "$arch" in x86_64) arch=amd64 ;; aarch64) arch=arm64 ;; esac

python3 - "$layout" "$diff_id" "$layer_digest" "$arch" <<'EOF'
import hashlib, json, os, sys

layout, diff_id, layer_digest, arch = sys.argv[1:5]
blobs = os.path.join(layout, "blobs", "sha256")

def put(obj):
    data = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobs, digest), "wb") as f:
        f.write(data)
    return "sha256:" + digest, len(data)

config = {
    "created": "1970-01-01T00:00:00Z",
    "architecture": arch,
    "os": "linux",
    "config": {
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        "Cmd": ["/serve.sh"],
        "WorkingDir": "/",
        "ExposedPorts": {"80/tcp": {}},
        "StopSignal": "SIGTERM",
        "Labels": {"org.opencontainers.image.title": "meshd-test"},
    },
    "rootfs": {"type": "layers", "diff_ids": ["sha256:" + diff_id]},
    "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "scripts/build-test-image.sh"}],
}
config_digest, config_size = put(config)
layer_size = os.path.getsize(os.path.join(blobs, layer_digest))
manifest = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {
        "mediaType": "application/vnd.oci.image.config.v1+json",
        "digest": config_digest,
        "size": config_size,
    },
    "layers": [{
        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
        "digest": "sha256:" + layer_digest,
        "size": layer_size,
    }],
}
manifest_digest, manifest_size = put(manifest)
index = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.index.v1+json",
    "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": manifest_digest,
        "size": manifest_size,
        "platform": {"architecture": arch, "os": "linux"},
        "annotations": {
            "org.opencontainers.image.ref.name": "meshd-test:latest",
            "io.containerd.image.name": "docker.io/library/meshd-test:latest",
        },
    }],
}
with open(os.path.join(layout, "index.json"), "w") as f:
    json.dump(index, f, sort_keys=True, separators=(",", ":"))
with open(os.path.join(layout, "oci-layout"), "w") as f:
    json.dump({"imageLayoutVersion": "1.0.0"}, f)
print(f"build-test-image: image id {config_digest}", file=sys.stderr)
EOF

find "$layout" -exec touch -h -d @0 {} +
mkdir -p "$(dirname "$out")"
tmp_out="$out.tmp.$$"
(cd "$layout" && tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=ustar \
    -cf "$tmp_out" oci-layout index.json blobs)
mv "$tmp_out" "$out"
echo "build-test-image: wrote $out" >&2
