#!/bin/sh
# Install httpsys-emu, octopus-comms and tentacle with the packaged layout:
#   /opt/httpsys-emu/venv                  the Python package and its console scripts
#   /usr/local/bin/{httpsys-emu,octopus-comms,tentacle}   commands for operators
#   /var/lib/httpsys-emu  (httpsys:httpsys 0771)  front door state.db, certs/, control.sock
#   /var/log/httpsys-emu  (httpsys:httpsys 0750)  access.log, httperr.log
#   /var/lib/octopus-comms (octopus:octopus 0711) comms.db, server.json, comms.sock
#   /etc/octopus          (root 0755)             tentacle instances (created by `tentacle`)
#   /etc/default/{httpsys-emu,octopus-comms}      options for the units (kept if present)
#   /etc/systemd/system/{httpsys-emu,octopus-comms,octopus-comms-embedded}.service
#   /etc/logrotate.d/httpsys-emu
# Users: `httpsys` (the front door) and `octopus` (the comms server, also in group httpsys).
#
# Usage: packaging/install.sh [--no-users] [--no-venv] [--python PYTHON]
#   DESTDIR=/tmp/stage   install under a staging root (no systemctl; ownership only with users)
#   --no-users           do not create users or change owners (modes are still set)
#   --no-venv            do not create the virtualenv (layout, units and wrappers only)
#   --python PYTHON      the interpreter for the venv (default /usr/bin/python3, else python3;
#                        3.11 or newer, not under /root or /home: ProtectHome= hides those)
# systemctl daemon-reload runs only when systemd is the running init and DESTDIR is empty;
# every skipped step is reported. Nothing is enabled or started: configure first (see
# docs/configuration.md), then `systemctl enable --now httpsys-emu octopus-comms`.
set -eu

PREFIX=/opt/httpsys-emu
VENV="$PREFIX/venv"
DESTDIR="${DESTDIR:-}"
PYTHON=
MAKE_USERS=1
MAKE_VENV=1
SOURCE=$(cd "$(dirname "$0")/.." && pwd)
PACKAGING="$SOURCE/packaging"

say() { printf '%s\n' "install.sh: $*"; }
skip() { printf '%s\n' "install.sh: skipped: $*"; }
die() { printf '%s\n' "install.sh: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --no-users) MAKE_USERS=0 ;;
        --no-venv) MAKE_VENV=0 ;;
        --python) [ $# -ge 2 ] || die "--python needs a value"; PYTHON=$2; shift ;;
        --python=*) PYTHON=${1#--python=} ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
                   exit 0 ;;
        *) die "unknown option $1 (try --help)" ;;
    esac
    shift
done

if [ "$(id -u)" != 0 ]; then
    [ -n "$DESTDIR" ] || die "run as root, or stage with DESTDIR=DIR"
    if [ "$MAKE_USERS" = 1 ]; then
        skip "users and owners (not root)"
        MAKE_USERS=0
    fi
fi
case "$DESTDIR" in
    ""|/*) ;;
    *) DESTDIR=$(pwd)/$DESTDIR ;;
esac

# ------------------------------------------------------------------------------------ users
if [ "$MAKE_USERS" = 1 ]; then
    for tool in groupadd useradd usermod; do
        command -v "$tool" >/dev/null 2>&1 || die "$tool not found (install passwd, or use --no-users)"
    done
    nologin=$(command -v nologin || echo /usr/sbin/nologin)
    if ! getent group httpsys >/dev/null; then
        groupadd --system httpsys
        say "created group httpsys"
    fi
    if ! getent passwd httpsys >/dev/null; then
        useradd --system --gid httpsys --home-dir /var/lib/httpsys-emu --no-create-home \
            --shell "$nologin" --comment "httpsys-emu front door" httpsys
        say "created user httpsys"
    fi
    if ! getent group octopus >/dev/null; then
        groupadd --system octopus
        say "created group octopus"
    fi
    if ! getent passwd octopus >/dev/null; then
        useradd --system --gid octopus --groups httpsys --home-dir /var/lib/octopus-comms \
            --no-create-home --shell "$nologin" --comment "Octopus comms server" octopus
        say "created user octopus"
    else
        usermod --append --groups httpsys octopus
    fi
else
    skip "creating users httpsys and octopus (--no-users); owners left as they are"
fi

# owner_dir PATH MODE OWNER: create PATH (under DESTDIR) with MODE, chown when users exist.
owner_dir() {
    install -d -m "$2" "$DESTDIR$1"
    chmod "$2" "$DESTDIR$1"
    if [ "$MAKE_USERS" = 1 ]; then
        chown "$3" "$DESTDIR$1"
    fi
}

# ------------------------------------------------------------------------------------ dirs
owner_dir /var/lib/httpsys-emu 0771 httpsys:httpsys
owner_dir /var/log/httpsys-emu 0750 httpsys:httpsys
owner_dir /var/lib/octopus-comms 0711 octopus:octopus
owner_dir /etc/octopus 0755 root:root
for dir in "$PREFIX" /etc/default /etc/systemd/system /etc/logrotate.d /usr/local/bin; do
    install -d -m 0755 "$DESTDIR$dir"
done
say "directories under ${DESTDIR:-/}"

# ------------------------------------------------------------------------------------ venv
if [ "$MAKE_VENV" = 1 ]; then
    if [ -z "$PYTHON" ]; then
        if [ -x /usr/bin/python3 ]; then PYTHON=/usr/bin/python3; else PYTHON=python3; fi
    fi
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "$PYTHON is older than Python 3.11"
    # The venv links to its interpreter: the service users must be able to run it, and
    # ProtectHome=yes hides /root, /home and /run/user from the services.
    real=$("$PYTHON" -c 'import os, sys; print(os.path.realpath(sys.executable))')
    case "$real" in
        /root/*|/home/*|/run/user/*)
            die "$PYTHON is $real, which the services cannot run (ProtectHome=yes, and" \
                "service users cannot enter it); use --python with a system interpreter" ;;
    esac
    if [ -n "$DESTDIR" ]; then
        say "note: a virtualenv is not relocatable; this one works only at $DESTDIR$VENV"
    fi
    "$PYTHON" -m venv "$DESTDIR$VENV"
    "$DESTDIR$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$DESTDIR$VENV/bin/python" -m pip install --quiet "$SOURCE"
    "$DESTDIR$VENV/bin/python" -m compileall -q "$DESTDIR$VENV/lib" >/dev/null || true
    say "installed the package into $DESTDIR$VENV"
else
    skip "creating $VENV and installing the package (--no-venv)"
fi

# ------------------------------------------------------------------------------------ files
for unit in httpsys-emu.service octopus-comms.service octopus-comms-embedded.service; do
    install -m 0644 "$PACKAGING/systemd/$unit" "$DESTDIR/etc/systemd/system/$unit"
done
say "units in $DESTDIR/etc/systemd/system"
for name in httpsys-emu octopus-comms; do
    if [ -e "$DESTDIR/etc/default/$name" ]; then
        say "kept $DESTDIR/etc/default/$name (yours); the shipped one is $PACKAGING/default/$name"
    else
        install -m 0644 "$PACKAGING/default/$name" "$DESTDIR/etc/default/$name"
    fi
    install -m 0755 "$PACKAGING/bin/$name" "$DESTDIR/usr/local/bin/$name"
done
ln -sf "$VENV/bin/tentacle" "$DESTDIR/usr/local/bin/tentacle"
install -m 0644 "$PACKAGING/logrotate/httpsys-emu" "$DESTDIR/etc/logrotate.d/httpsys-emu"
say "commands in $DESTDIR/usr/local/bin, logrotate in $DESTDIR/etc/logrotate.d"

# ------------------------------------------------------------------------------------ systemd
if [ -n "$DESTDIR" ]; then
    skip "systemctl daemon-reload (DESTDIR is set)"
elif [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    systemctl daemon-reload
    say "systemctl daemon-reload done"
else
    skip "systemctl daemon-reload (systemd is not running here)"
fi

cat <<EOF
install.sh: next steps (see docs/configuration.md):
  httpsys-emu cert new --subject "CN=\$(hostname -f)" --dns "\$(hostname -f)"
  httpsys-emu add sslcert ipport=0.0.0.0:443 certhash=THUMBPRINT appid={00112233-4455-6677-8899-aabbccddeeff}
  httpsys-emu add urlacl url=https://+:443/OctopusComms/ user=octopus
  httpsys-emu add urlacl url=https://+:443/api/ user=octopus
  httpsys-emu add urlacl url=https://+:443/app/ user=octopus
  octopus-comms configure --commsListenWebSocket https://+:443/OctopusComms
  systemctl enable --now httpsys-emu octopus-comms
EOF
