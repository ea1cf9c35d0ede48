#!/bin/sh
# Creates berth's sandbox user on whatever the base image offers: agent, uid 1000, gid 1000, home
# /home/agent, owning /home/agent and /workspace. Works with shadow's useradd (Debian, Ubuntu,
# Fedora), busybox's adduser (Alpine), or no tool at all (then /etc/passwd and /etc/group are
# written directly). An existing uid or gid 1000 (ubuntu:24.04's user ubuntu) is renamed to agent.
set -eu

name=agent
uid=1000
gid=1000
home=/home/agent
shell=/bin/sh
if [ -x /bin/bash ]; then shell=/bin/bash; fi

has() { command -v "$1" >/dev/null 2>&1; }

# A base without any account database (FROM scratch plus busybox) gets one with root in it.
[ -f /etc/passwd ] || echo "root:x:0:0:root:/root:$shell" >/etc/passwd
[ -f /etc/group ] || echo "root:x:0:" >/etc/group

# The name of the entry of FILE whose third field is ID, if there is one.
owner_of() {
    [ -f "$1" ] || return 0
    while IFS=: read -r entry _ id _; do
        if [ "$id" = "$2" ]; then
            echo "$entry"
            return 0
        fi
    done <"$1"
}

group=$(owner_of /etc/group "$gid")
if [ -z "$group" ]; then
    if has groupadd; then
        groupadd -g "$gid" "$name"
    elif has addgroup; then
        addgroup -g "$gid" "$name"
    else
        echo "$name:x:$gid:" >>/etc/group
    fi
    group=$name
elif [ "$group" != "$name" ]; then
    if has groupmod; then
        groupmod -n "$name" "$group"
        group=$name
    else
        echo "note: gid $gid is the group $group; keeping that name" >&2
    fi
fi

user=$(owner_of /etc/passwd "$uid")
if [ -z "$user" ]; then
    if has useradd; then
        if [ -d "$home" ]; then create_home=-M; else create_home=-m; fi
        useradd -u "$uid" -g "$gid" -d "$home" "$create_home" -s "$shell" "$name"
    elif has adduser; then
        adduser -D -u "$uid" -G "$group" -h "$home" -s "$shell" "$name"
    else
        echo "$name:x:$uid:$gid::$home:$shell" >>/etc/passwd
    fi
elif [ "$user" != "$name" ]; then
    if has usermod; then
        if [ -d "$home" ]; then move_home=; else move_home=-m; fi
        # shellcheck disable=SC2086 # move_home is empty or one flag
        usermod -l "$name" -d "$home" $move_home -s "$shell" "$user"
    else
        echo "uid $uid belongs to $user and this image has no usermod to rename it" >&2
        exit 1
    fi
fi

mkdir -p "$home" /workspace
chown "$uid:$gid" "$home" /workspace
chmod 0755 "$home" /workspace
