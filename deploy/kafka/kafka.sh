#!/usr/bin/env bash
# recstream's local Apache Kafka broker: one KRaft node (broker + controller in one
# process) on 127.0.0.1, fetched from Maven Central with Maven. Needs only Java 17+ and
# Maven; no virtualenv. `recstream kafka ...` runs this same script.
#
#   deploy/kafka/kafka.sh fetch     download the broker jars into the cache (idempotent)
#   deploy/kafka/kafka.sh start     fetch, format storage once, start, wait until it answers
#   deploy/kafka/kafka.sh stop      stop cleanly (SIGTERM, then SIGKILL after a timeout)
#   deploy/kafka/kafka.sh status    exit 0 and print the address when running, exit 3 when not
#   deploy/kafka/kafka.sh logs      print the tail of the broker log
#   deploy/kafka/kafka.sh reset     stop and delete the data folder
#
# Environment (all optional):
#   RECSTREAM_KAFKA_PORT   client port (default 9092); the controller uses PORT+1
#   RECSTREAM_KAFKA_DATA   data folder: logs, config, pid (default <repo>/.kafka/data-PORT)
#   RECSTREAM_KAFKA_CACHE  where the jars go (default ~/.cache/recstream/kafka-VERSION)
#   RECSTREAM_KAFKA_HEAP   JVM heap (default 512m)
#   RECSTREAM_KAFKA_START_TIMEOUT  seconds to wait for the broker (default 120)
#
# A second, secured broker for tests and trials (SASL_PLAINTEXT with SCRAM-SHA-256 and
# SCRAM-SHA-512, ACLs enforced by the StandardAuthorizer, nothing allowed without an ACL,
# super user "admin"): add --scram after the action, or set RECSTREAM_KAFKA_SECURITY=scram.
# It has its own port and data folder and never touches the plain broker:
#   deploy/kafka/kafka.sh start --scram
#   RECSTREAM_KAFKA_SCRAM_PORT   client port (default 19094); the controller (SASL PLAIN,
#                                user admin) uses PORT+1
#   RECSTREAM_KAFKA_SCRAM_DATA   data folder (default <repo>/.kafka/scram-PORT)
#   RECSTREAM_KAFKA_SCRAM_USERS  user:password,... created (both SCRAM mechanisms) when the
#                                storage is formatted, i.e. at the first start or after
#                                reset; "admin" is required. Names and passwords: letters,
#                                digits, '.', '_', '-'. Default: admin:admin-secret,
#                                alice:alice-secret,bob:bob-secret (local trials only:
#                                the passwords are on the storage tool's command line
#                                while it formats, and the admin's in server.properties).
set -euo pipefail

SECURITY="${RECSTREAM_KAFKA_SECURITY:-plain}"
ARGS=()
for arg in "$@"; do
  if [[ "$arg" == "--scram" ]]; then SECURITY=scram; else ARGS+=("$arg"); fi
done
set -- "${ARGS[@]+"${ARGS[@]}"}"
case "$SECURITY" in plain|scram) ;; *) echo "kafka: error: RECSTREAM_KAFKA_SECURITY must be plain or scram, got '$SECURITY'" >&2; exit 2 ;; esac

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$HERE/pom.xml")"
if [[ "$SECURITY" == scram ]]; then
  PORT="${RECSTREAM_KAFKA_SCRAM_PORT:-19094}"
  DATA="${RECSTREAM_KAFKA_SCRAM_DATA:-$REPO/.kafka/scram-$PORT}"
  SCRAM_USERS="${RECSTREAM_KAFKA_SCRAM_USERS:-admin:admin-secret,alice:alice-secret,bob:bob-secret}"
else
  PORT="${RECSTREAM_KAFKA_PORT:-9092}"
  DATA="${RECSTREAM_KAFKA_DATA:-$REPO/.kafka/data-$PORT}"
fi
CONTROLLER_PORT=$((PORT + 1))
CACHE="${RECSTREAM_KAFKA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/recstream/kafka-$KAFKA_VERSION}"
HEAP="${RECSTREAM_KAFKA_HEAP:-512m}"
START_TIMEOUT="${RECSTREAM_KAFKA_START_TIMEOUT:-120}"
PIDFILE="$DATA/broker.pid"
LOG="$DATA/server.log"
CLUSTER_ID="cmVjc3RyZWFtLWxvY2Fs"   # fixed: a local single-node cluster

say() { printf 'kafka: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

fetch() {
  if [[ -f "$CACHE/.complete" ]]; then return 0; fi
  command -v mvn >/dev/null || die "Maven (mvn) is needed to fetch Kafka $KAFKA_VERSION from Maven Central"
  command -v java >/dev/null || die "Java 17+ is needed to run the broker"
  say "fetching Apache Kafka $KAFKA_VERSION and its runtime dependencies from Maven Central into $CACHE"
  mkdir -p "$CACHE"
  mvn -q -B -f "$HERE/pom.xml" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$CACHE/lib" >&2 \
    || die "Maven could not fetch the broker (see the messages above)"
  touch "$CACHE/.complete"
}

classpath() { printf '%s/lib/*' "$CACHE"; }

pid_alive() {
  [[ -f "$PIDFILE" ]] || return 1
  local pid; pid="$(cat "$PIDFILE" 2>/dev/null || true)"
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# user:password pairs of RECSTREAM_KAFKA_SCRAM_USERS, checked, one "name password" a line
scram_users() {
  local entry name pw have_admin=0
  IFS=',' read -ra entries <<<"$SCRAM_USERS"
  for entry in "${entries[@]}"; do
    name="${entry%%:*}"; pw="${entry#*:}"
    [[ "$entry" == *:* && "$name" =~ ^[A-Za-z0-9._-]+$ && "$pw" =~ ^[A-Za-z0-9._-]+$ ]] \
      || die "RECSTREAM_KAFKA_SCRAM_USERS: each entry must be name:password (letters, digits, '.', '_', '-')"
    [[ "$name" == admin ]] && have_admin=1
    printf '%s %s\n' "$name" "$pw"
  done
  (( have_admin )) || die "RECSTREAM_KAFKA_SCRAM_USERS: needs the super user 'admin'"
}

admin_password() { scram_users | awk '$1 == "admin" { print $2 }'; }

listener_config() {
  if [[ "$SECURITY" == plain ]]; then
    cat <<PROPS
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
PROPS
    return 0
  fi
  local pw; pw="$(admin_password)"
  cat <<PROPS
listeners=SASL_PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=SASL_PLAINTEXT://127.0.0.1:$PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=SASL_PLAINTEXT
listener.security.protocol.map=CONTROLLER:SASL_PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT
# clients: SCRAM; the broker talks to itself as admin (SCRAM) and to its controller as admin (PLAIN)
sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-256
listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$pw";
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$pw";
sasl.mechanism.controller.protocol=PLAIN
listener.name.controller.sasl.enabled.mechanisms=PLAIN
listener.name.controller.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="admin" password="$pw" user_admin="$pw";
# ACLs: nothing is allowed without one, except to the super user
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:admin
allow.everyone.if.no.acl.found=false
PROPS
}

write_config() {
  mkdir -p "$DATA/logs"
  local listeners; listeners="$(listener_config)"
  [[ "$SECURITY" == plain ]] || (umask 077; : > "$DATA/server.properties")  # it holds the admin password
  cat > "$DATA/server.properties" <<PROPS
# generated by deploy/kafka/kafka.sh; edits are overwritten at the next start
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CONTROLLER_PORT
$listeners
log.dirs=$DATA/logs
num.partitions=1
default.replication.factor=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# topics are created by "recstream topics create" or the worker, with the right partitions
# and compaction; a typo in a topic name fails instead of creating a wrongly laid out topic
auto.create.topics.enable=false
log.retention.hours=-1
log.cleaner.backoff.ms=5000
PROPS
}

java_opts() {
  printf '%s\n' "-Xms128m" "-Xmx$HEAP" "-XX:+UseG1GC" "-XX:MaxGCPauseMillis=20" \
    "-Djava.awt.headless=true" "-Dlog4j2.configurationFile=$HERE/log4j2.properties"
}

start() {
  if pid_alive; then
    say "already running (pid $(cat "$PIDFILE")) on 127.0.0.1:$PORT"
    return 0
  fi
  if port_open "$PORT"; then
    die "port $PORT is taken by another process; set RECSTREAM_KAFKA_PORT or stop it"
  fi
  [[ "$SECURITY" == plain ]] || scram_users >/dev/null  # a bad user list stops here
  fetch
  write_config
  if [[ ! -f "$DATA/logs/meta.properties" ]]; then
    say "formatting storage in $DATA/logs"
    local scram=() name pw
    if [[ "$SECURITY" == scram ]]; then
      while read -r name pw; do
        scram+=(--add-scram "SCRAM-SHA-256=[name=$name,password=$pw]" --add-scram "SCRAM-SHA-512=[name=$name,password=$pw]")
      done < <(scram_users)
    fi
    java -Xmx256m -Dlog4j2.configurationFile="$HERE/log4j2.properties" -cp "$(classpath)" \
      kafka.tools.StorageTool format -t "$CLUSTER_ID" -c "$DATA/server.properties" "${scram[@]+"${scram[@]}"}" \
      >>"$LOG" 2>&1 || { tail -20 "$LOG" >&2; die "storage format failed"; }
  fi
  local what="KRaft"; [[ "$SECURITY" == scram ]] && what="KRaft, SASL_PLAINTEXT SCRAM, ACLs"
  say "starting Kafka $KAFKA_VERSION ($what) on 127.0.0.1:$PORT, data in $DATA"
  local mark; mark=$(wc -l <"$LOG" 2>/dev/null || echo 0)
  # shellcheck disable=SC2046
  nohup java $(java_opts) -cp "$(classpath)" kafka.Kafka "$DATA/server.properties" \
    >>"$LOG" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
  local deadline=$((SECONDS + START_TIMEOUT))
  while (( SECONDS < deadline )); do
    if ! pid_alive; then
      tail -30 "$LOG" >&2; rm -f "$PIDFILE"; die "broker exited during start-up (log: $LOG)"
    fi
    if tail -n +"$((mark + 1))" "$LOG" | grep -q "Kafka Server started" && port_open "$PORT"; then
      say "up: bootstrap server 127.0.0.1:$PORT (pid $(cat "$PIDFILE"))"
      return 0
    fi
    sleep 0.5
  done
  tail -30 "$LOG" >&2
  die "broker did not answer within ${START_TIMEOUT}s (log: $LOG)"
}

stop() {
  if ! pid_alive; then rm -f "$PIDFILE"; say "not running"; return 0; fi
  local pid; pid="$(cat "$PIDFILE")"
  say "stopping (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + 60))
  while kill -0 "$pid" 2>/dev/null; do
    if (( SECONDS >= deadline )); then say "no clean exit after 60s; killing"; kill -KILL "$pid" 2>/dev/null || true; fi
    sleep 0.2
  done
  rm -f "$PIDFILE"
  say "stopped"
}

status() {
  if pid_alive && port_open "$PORT"; then
    echo "running: 127.0.0.1:$PORT (pid $(cat "$PIDFILE"), Kafka $KAFKA_VERSION, data $DATA)"
    return 0
  fi
  echo "not running (127.0.0.1:$PORT)"
  return 3
}

case "${1:-}" in
  fetch) fetch; say "Kafka $KAFKA_VERSION is in $CACHE" ;;
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  status) status ;;
  logs) tail -n "${2:-50}" "$LOG" ;;
  reset) stop; rm -rf "$DATA"; say "removed $DATA" ;;
  classpath) fetch; classpath; echo ;;
  *) echo "usage: $0 {fetch|start|stop|restart|status|logs [N]|reset|classpath} [--scram]" >&2; exit 2 ;;
esac
