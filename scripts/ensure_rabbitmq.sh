#!/usr/bin/env bash
# Make sure a RabbitMQ answers at RABBITMQ_URL (default 127.0.0.1:5672): start the local one,
# installing it from Debian's packages when running as root on a machine without it.
set -euo pipefail
url=${RABBITMQ_URL:-amqp://guest:guest@127.0.0.1:5672/}
hostport=${url##*@}; hostport=${hostport%%/*}
host=${hostport%%:*}; port=${hostport##*:}; [ "$port" = "$host" ] && port=5672

answering() { (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; }

if answering; then exit 0; fi
case "$host" in
    127.0.0.1|localhost) ;;
    *) echo "RabbitMQ at $hostport is not answering" >&2; exit 1 ;;
esac
if ! command -v rabbitmq-server >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing rabbitmq-server from Debian's packages" >&2
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
    else
        echo "RabbitMQ is not installed and not answering at $hostport" >&2; exit 1
    fi
fi
echo "starting RabbitMQ" >&2
rabbitmq-server -detached || true
for _ in $(seq 1 120); do
    if answering; then
        # The port opens before the broker accepts logins; give it a moment.
        sleep 2; exit 0
    fi
    sleep 1
done
echo "RabbitMQ did not start within 120 s" >&2
exit 1
