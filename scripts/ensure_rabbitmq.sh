#!/usr/bin/env bash
# Make sure a RabbitMQ answers at RABBITMQ_URL (default 127.0.0.1:5672): start the local one,
# installing it from Debian's packages when running as root on a machine without it.
# "Answers" means it speaks AMQP, not only that its port is open: a broker whose port is open
# but that no longer answers the protocol header (seen after heavy quorum-queue churn on a
# long-lived test broker) is restarted when it is the local one and we are root.
set -euo pipefail
url=${RABBITMQ_URL:-amqp://guest:guest@127.0.0.1:5672/}
hostport=${url##*@}; hostport=${hostport%%/*}
host=${hostport%%:*}; port=${hostport##*:}; [ "$port" = "$host" ] && port=5672

listening() { (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; }
# The protocol header must be answered with a frame (Connection.Start: frame type 1).
speaks_amqp() {
    timeout 10 bash -c "exec 3<>/dev/tcp/$host/$port && printf 'AMQP\\x00\\x00\\x09\\x01' >&3 \
        && head -c 1 <&3 | od -An -tx1" 2>/dev/null | grep -q 01
}
local_host() { case "$host" in 127.0.0.1|localhost) return 0 ;; *) return 1 ;; esac; }

wait_ready() {  # seconds
    for _ in $(seq 1 "$1"); do
        if listening && speaks_amqp; then
            sleep 2; return 0  # logins may lag the first frame by a moment
        fi
        sleep 1
    done
    return 1
}

if listening && speaks_amqp; then exit 0; fi
if ! local_host; then echo "RabbitMQ at $hostport is not answering" >&2; exit 1; fi
if listening; then
    # The port is open: it may still be starting. Give it a minute before calling it hung.
    if wait_ready 60; then exit 0; fi
    if [ "$(id -u)" != 0 ]; then
        echo "RabbitMQ at $hostport has its port open but does not answer AMQP" >&2; exit 1
    fi
    echo "RabbitMQ at $hostport does not answer AMQP: restarting it" >&2
    timeout 30 rabbitmqctl stop >/dev/null 2>&1 || pkill -9 -u rabbitmq beam.smp || true
    for _ in $(seq 1 30); do listening || break; sleep 1; done
fi
if ! command -v rabbitmq-server >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing rabbitmq-server from Debian's packages" >&2
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
    else
        echo "RabbitMQ is not installed and not answering at $hostport" >&2; exit 1
    fi
fi
echo "starting RabbitMQ" >&2
rabbitmq-server -detached || true  # Debian's wrapper runs it as the rabbitmq user
if wait_ready 120; then exit 0; fi
echo "RabbitMQ did not start within 120 s" >&2
exit 1
