#!/bin/busybox sh
# STAND-IN for the k3s install script (get.k3s.io): airgap, or online from GITHUB_URL. Tests only: NEVER shipped.
# Runs under busybox sh. Honours the installer's contract closely enough for the product's
# upload/install/verify code to run against tests/k3s_standin/k3s; see README.md beside it.
#
#   INSTALL_K3S_SKIP_DOWNLOAD=true   airgap: the binary must be in place; otherwise it is downloaded
#                                    from GITHUB_URL/download/<version>/ (k3s, sha256sum-amd64.txt)
#   INSTALL_K3S_VERSION              must equal what /usr/local/bin/k3s --version reports
#   INSTALL_K3S_EXEC / arguments     "server" (default), "agent" (default when K3S_URL is set), flags
#   K3S_URL, K3S_TOKEN, K3S_*        kept in the service's environment file, as the real script does
#   INSTALL_K3S_SKIP_ENABLE, INSTALL_K3S_SKIP_START, INSTALL_K3S_FORCE_RESTART, INSTALL_K3S_NAME
#
# The binary must already be at /usr/local/bin/k3s (0755): the airgap contract. config.yaml is read
# by k3s itself. There is no systemd: the "service" is the stand-in daemon started in the background
# (pid /run/k3s-standin.pid, log /var/log/k3s.log or k3s-agent.log); the unit and env files are still written,
# because the real script decides "no change, no restart" from their hashes and the binary's.
set -e
set -o noglob

BIN_DIR=/usr/local/bin
SYSTEMD_DIR=/etc/systemd/system
PIDFILE=/run/k3s-standin.pid
HTTPD_PIDFILE=/run/k3s-standin-httpd.pid
LOG=/var/log/k3s.log
API_UP=/var/lib/rancher/k3s/server/standin/api-up
READY_AFTER_FILE=/etc/rancher/k3s/standin-ready-after

info() { echo '[INFO] ' "$@"; }
warn() { echo '[WARN] ' "$@" >&2; }
fatal() { echo '[ERROR] ' "$@" >&2; exit 1; }

quote() {  # each argument single-quoted for a shell (and for a systemd ExecStart line)
    for arg in "$@"; do
        printf "'%s' " "$(printf '%s' "$arg" | sed "s/'/'\\\\''/g")"
    done
}
# INSTALL_K3S_EXEC is split like a shell command line, with shell metacharacters kept literal.
exec_words=$(printf '%s' "${INSTALL_K3S_EXEC:-}" | sed 's/\([][!#$%&()*;<=>?\\`{|}]\)/\\\1/g')
eval "set -- $exec_words $(quote "$@")"

case ${1:-} in
    -*|'')
        if [ -z "${K3S_URL:-}" ]; then
            CMD_K3S=server
        else
            if [ -z "${K3S_TOKEN:-}" ] && [ -z "${K3S_TOKEN_FILE:-}" ]; then
                fatal "Defaulted k3s exec command to 'agent' because K3S_URL is defined, but K3S_TOKEN or K3S_TOKEN_FILE is not defined."
            fi
            CMD_K3S=agent
        fi
        ;;
    *) CMD_K3S=$1; shift ;;
esac
case ${K3S_URL:-} in ''|https://*) ;; *) fatal "Only https:// URLs are supported for K3S_URL (have ${K3S_URL})" ;; esac
case $CMD_K3S in server|agent) ;; *) fatal "k3s stand-in: command '$CMD_K3S' is not emulated (server or agent)" ;; esac

if [ -n "${INSTALL_K3S_NAME:-}" ]; then
    SYSTEM_NAME=k3s-${INSTALL_K3S_NAME}
elif [ "$CMD_K3S" = server ]; then
    SYSTEM_NAME=k3s
else
    SYSTEM_NAME=k3s-$CMD_K3S
fi
LOG=/var/log/$SYSTEM_NAME.log  # where the real script's OpenRC service logs (journald under systemd)
[ "$(id -u)" -eq 0 ] || fatal "k3s stand-in: run as root (the real script would use sudo)"
FILE_K3S_SERVICE=$SYSTEMD_DIR/$SYSTEM_NAME.service
FILE_K3S_ENV=$SYSTEMD_DIR/$SYSTEM_NAME.service.env
UNINSTALL_K3S_SH=$BIN_DIR/$SYSTEM_NAME-uninstall.sh
KILLALL_K3S_SH=$BIN_DIR/k3s-killall.sh

installed_hashes() { sha256sum "$BIN_DIR/k3s" "$FILE_K3S_SERVICE" "$FILE_K3S_ENV" 2>&1 || true; }
PRE_INSTALL_HASHES=$(installed_hashes)

# --- download: from GITHUB_URL (a mirror on 127.0.0.1 in tests), or the airgap binary in place ---
GITHUB_URL=${GITHUB_URL:-https://github.com/k3s-io/k3s/releases}
download() {  # OUT URL: curl or wget, as the real script picks its downloader
    if command -v curl >/dev/null 2>&1; then curl -o "$1" -sfL "$2"; else wget -qO "$1" "$2"; fi || fatal 'Download failed'
}
case ${INSTALL_K3S_SKIP_DOWNLOAD:-} in
    true|binary) info 'Skipping k3s download and verify' ;;
    *)
        if [ -n "${INSTALL_K3S_VERSION:-}" ]; then
            VERSION_K3S=$INSTALL_K3S_VERSION
        else
            # The real script asks update.k3s.io for the channel's release: no network for that here.
            info "Finding release for channel ${INSTALL_K3S_CHANNEL:-stable}"
            fatal 'Download failed'
        fi
        info "Using ${VERSION_K3S} as release"
        TMP_DIR=$(mktemp -d -t k3s-install.XXXXXXXXXX)
        trap 'rm -rf "$TMP_DIR"' EXIT
        HASH_URL=${GITHUB_URL}/download/${VERSION_K3S}/sha256sum-amd64.txt
        info "Downloading hash ${HASH_URL}"
        download "$TMP_DIR/k3s.hash" "$HASH_URL"
        HASH_EXPECTED=$(grep ' k3s$' "$TMP_DIR/k3s.hash" | awk '{ print $1 }')
        HASH_INSTALLED=$(sha256sum "$BIN_DIR/k3s" 2>/dev/null | awk '{ print $1 }')
        if [ -n "$HASH_EXPECTED" ] && [ "$HASH_EXPECTED" = "$HASH_INSTALLED" ]; then
            info 'Skipping binary downloaded, installed k3s matches hash'
        else
            BIN_URL=${GITHUB_URL}/download/${VERSION_K3S}/k3s
            info "Downloading binary ${BIN_URL}"
            download "$TMP_DIR/k3s.bin" "$BIN_URL"
            HASH_BIN=$(sha256sum "$TMP_DIR/k3s.bin" | awk '{ print $1 }')
            [ "$HASH_EXPECTED" = "$HASH_BIN" ] || fatal "Download sha256 does not match ${HASH_EXPECTED}, got ${HASH_BIN}"
            info "Installing k3s to $BIN_DIR/k3s"
            chmod 755 "$TMP_DIR/k3s.bin"
            mv -f "$TMP_DIR/k3s.bin" "$BIN_DIR/k3s"
        fi
        ;;
esac
[ -x "$BIN_DIR/k3s" ] || fatal "Executable k3s binary not found at $BIN_DIR/k3s"
have=$("$BIN_DIR/k3s" --version 2>/dev/null | awk 'NR == 1 { print $3 }')
if [ -n "${INSTALL_K3S_VERSION:-}" ] && [ "$INSTALL_K3S_VERSION" != "$have" ]; then
    fatal "k3s stand-in: version mismatch: INSTALL_K3S_VERSION=$INSTALL_K3S_VERSION but $BIN_DIR/k3s --version reports ${have:-nothing}"
fi
info 'Skipping installation of SELinux RPM'

# --- symlinks, killall and uninstall scripts ---
if [ "${INSTALL_K3S_SYMLINK:-}" != skip ]; then
    for cmd in kubectl crictl ctr; do
        if [ ! -e "$BIN_DIR/$cmd" ] || [ "${INSTALL_K3S_SYMLINK:-}" = force ]; then
            which_cmd=$(command -v "$cmd" 2>/dev/null || true)
            if [ -z "$which_cmd" ] || [ "${INSTALL_K3S_SYMLINK:-}" = force ]; then
                info "Creating $BIN_DIR/$cmd symlink to k3s"
                ln -sf k3s "$BIN_DIR/$cmd"
            else
                info "Skipping $BIN_DIR/$cmd symlink to k3s, command exists in PATH at $which_cmd"
            fi
        else
            info "Skipping $BIN_DIR/$cmd symlink to k3s, already exists"
        fi
    done
fi

info "Creating killall script $KILLALL_K3S_SH"
cat > "$KILLALL_K3S_SH" <<EOF
#!/bin/sh
# k3s STAND-IN killall (tests only): stops the stand-in daemon and its API listener.
[ "\$(id -u)" -eq 0 ] || exec sudo "\$0" "\$@"
alive() {
    [ -n "\$1" ] && kill -0 "\$1" 2>/dev/null || return 1
    if [ -r "/proc/\$1/stat" ]; then
        case \$(cut -d')' -f2 "/proc/\$1/stat") in " Z"*|" X"*) return 1 ;; esac
    fi
}
pid=\$(cat $PIDFILE 2>/dev/null || true)
httpd=\$(cat $HTTPD_PIDFILE 2>/dev/null || true)
if alive "\$pid"; then
    kill -TERM "\$pid" 2>/dev/null || true
    i=0
    # The daemon removes its pid file once its children are gone; an orphan's zombie can outlive it.
    while [ -e $PIDFILE ] && alive "\$pid" && [ \$i -lt 100 ]; do sleep 0.1; i=\$((i + 1)); done
    alive "\$pid" && [ -e $PIDFILE ] && kill -KILL "\$pid" 2>/dev/null
fi
alive "\$httpd" && kill -KILL "\$httpd" 2>/dev/null
rm -f $PIDFILE $HTTPD_PIDFILE $API_UP /run/k3s-standin-agent.post
rm -rf /run/k3s
exit 0
EOF
chmod 755 "$KILLALL_K3S_SH"

info "Creating uninstall script $UNINSTALL_K3S_SH"
cat > "$UNINSTALL_K3S_SH" <<EOF
#!/bin/sh
# k3s STAND-IN uninstall (tests only): what the real one removes, for what the stand-in creates.
[ "\$(id -u)" -eq 0 ] || exec sudo "\$0" "\$@"
$KILLALL_K3S_SH
rm -f $FILE_K3S_SERVICE $FILE_K3S_ENV
remove_uninstall() { rm -f $UNINSTALL_K3S_SH; }
trap remove_uninstall EXIT
if ls $SYSTEMD_DIR/k3s*.service >/dev/null 2>&1; then
    echo 'Additional k3s services installed, skipping uninstall of k3s'
    exit
fi
for cmd in kubectl crictl ctr; do
    [ -L $BIN_DIR/\$cmd ] && rm -f $BIN_DIR/\$cmd
done
rm -rf /etc/rancher/k3s /run/k3s /run/flannel /var/lib/rancher/k3s /var/lib/kubelet
rm -f $BIN_DIR/k3s $KILLALL_K3S_SH
EOF
chmod 755 "$UNINSTALL_K3S_SH"

# --- service environment and unit (their hashes decide whether to restart) ---
mkdir -p "$SYSTEMD_DIR"
rm -f "$FILE_K3S_SERVICE" "$FILE_K3S_ENV"
info "env: Creating environment file $FILE_K3S_ENV"
(
    umask 077
    export -p | sed -nE 's/^export ((K3S|CONTAINERD)_[A-Za-z0-9_]*=)/\1/p' > "$FILE_K3S_ENV"
    export -p | sed -nE 's/^export (([Nn][Oo]|[Hh][Tt][Tt][Pp][Ss]?)_[Pp][Rr][Oo][Xx][Yy]=)/\1/p' >> "$FILE_K3S_ENV"
)
chmod 0600 "$FILE_K3S_ENV"
info "systemd: Creating service file $FILE_K3S_SERVICE"
cat > "$FILE_K3S_SERVICE" <<EOF
# Written by the k3s STAND-IN installer (tests only); no systemd runs it, see $PIDFILE.
[Unit]
Description=Lightweight Kubernetes
Documentation=https://k3s.io
Wants=network-online.target
After=network-online.target

[Install]
WantedBy=multi-user.target

[Service]
Type=notify
EnvironmentFile=-/etc/default/%N
EnvironmentFile=-/etc/sysconfig/%N
EnvironmentFile=-$FILE_K3S_ENV
KillMode=process
Delegate=yes
User=root
LimitNOFILE=1048576
LimitNPROC=infinity
LimitCORE=infinity
TasksMax=infinity
TimeoutStartSec=0
Restart=always
RestartSec=5s
ExecStart=$BIN_DIR/k3s $CMD_K3S $(quote "$@")
EOF

[ "${INSTALL_K3S_SKIP_ENABLE:-}" = true ] && exit 0
info "k3s stand-in: no systemd; $SYSTEM_NAME runs as a background daemon (pid file $PIDFILE, log $LOG)"
[ "${INSTALL_K3S_SKIP_START:-}" = true ] && exit 0

running() {
    pid=$(cat "$PIDFILE" 2>/dev/null || true)
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    if [ -r "/proc/$pid/stat" ]; then
        case $(cut -d')' -f2 "/proc/$pid/stat") in " Z"*|" X"*) return 1 ;; esac
    fi
}
POST_INSTALL_HASHES=$(installed_hashes)
if [ "$PRE_INSTALL_HASHES" = "$POST_INSTALL_HASHES" ] && [ "${INSTALL_K3S_FORCE_RESTART:-}" != true ]; then
    if running; then
        info 'No change detected so skipping service start'
        exit 0
    fi
    # systemd (Restart=always) would keep it running; the stand-in has no supervisor: start it.
    info "k3s stand-in: no change detected, but $SYSTEM_NAME is not running"
fi

if running; then "$KILLALL_K3S_SH"; fi
info "systemd: Starting $SYSTEM_NAME (k3s stand-in: background daemon)"
mkdir -p "${LOG%/*}" "${PIDFILE%/*}"
rm -f "$PIDFILE"
(
    set +e
    set -a
    . "$FILE_K3S_ENV"
    set +a
    exec setsid "$BIN_DIR/k3s" "$CMD_K3S" "$@"
) </dev/null >>"$LOG" 2>&1 &
daemon=$!

failed() {
    fatal "Job for $SYSTEM_NAME.service failed because the control process exited with error code. See $LOG:
$(tail -n 3 "$LOG")"
}
i=0
until [ -s "$PIDFILE" ]; do
    kill -0 "$daemon" 2>/dev/null || failed  # (sh reaps its exited children while it waits on sleep)
    i=$((i + 1))
    [ $i -le 100 ] || fatal "Job for $SYSTEM_NAME.service failed: no pid file after 10 s. See $LOG"
    sleep 0.1
done
# Type=notify: systemctl returns once k3s reports ready. The stand-in waits for the server's API,
# except when tests ask for a slow API (standin-ready-after), which the caller must then wait out.
if [ "$CMD_K3S" = server ] && [ -s "$READY_AFTER_FILE" ]; then
    # A slow API still has its kubeconfig written first (k3s writes it before waiting for the API):
    # a client run right after install.sh meets "refused" at the server's address, not localhost:8080.
    i=0
    while [ ! -f /etc/rancher/k3s/k3s.yaml ] && [ $i -lt 100 ]; do running || failed; i=$((i + 1)); sleep 0.1; done
elif [ "$CMD_K3S" = server ]; then
    i=0
    until [ -f "$API_UP" ]; do
        running || failed
        i=$((i + 1))
        [ $i -le 300 ] || fatal "Job for $SYSTEM_NAME.service timed out after 30 s. See $LOG"
        sleep 0.1
    done
fi
exit 0
