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
#   RECSTREAM_KAFKA_DATA   data folder: logs, config, pid (default <repo>/.kafka/data-PORT; installed: ~/.local/state/recstream/kafka/data-PORT)
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
#   RECSTREAM_KAFKA_SCRAM_DATA   data folder (default <repo>/.kafka/scram-PORT; installed: ~/.local/state/recstream/kafka/scram-PORT)
#   RECSTREAM_KAFKA_SCRAM_USERS  user:password,... created (both SCRAM mechanisms) when the
#                                storage is formatted, i.e. at the first start or after
#                                reset; "admin" is required. Names and passwords: letters,
#                                digits, '.', '_', '-'. Default: admin:admin-secret,
#                                alice:alice-secret,bob:bob-secret (local trials only:
#                                the passwords are on the storage tool's command line
#                                while it formats, and the admin's in server.properties).
#
# A third, TLS broker for tests and trials: add --tls after the action, or set
# RECSTREAM_KAFKA_SECURITY=tls. Its own ports and data folder; ACLs as on the SCRAM broker
# (StandardAuthorizer, nothing allowed without an ACL, super user "admin"). At its first
# start it makes, with openssl, a CA, a broker certificate (SAN IP:127.0.0.1, DNS:localhost)
# and a client certificate (CN = RECSTREAM_KAFKA_TLS_CLIENT) in DATA/tls/. Listeners, all on
# 127.0.0.1, with PORT = RECSTREAM_KAFKA_TLS_PORT:
#   PORT     SSL, no client certificate (the client is User:ANONYMOUS)
#   PORT+1   SSL, client certificate required (mutual TLS; the client is User:<its CN>)
#   PORT+2   SASL_SSL, mechanism PLAIN
#   PORT+3   SASL_SSL, mechanisms SCRAM-SHA-256 and SCRAM-SHA-512
#   PORT+4   the controller (SASL_PLAINTEXT PLAIN, user admin)
#   PORT+5   with RECSTREAM_KAFKA_TLS_BAD_CERTS=1 only: SSL with an expired broker certificate
#   PORT+6   with RECSTREAM_KAFKA_TLS_BAD_CERTS=1 only: SSL with a certificate for another
#            host (wrong.invalid), both signed by the same CA: for tests of clients' errors
#   deploy/kafka/kafka.sh start --tls
#   deploy/kafka/kafka.sh certs --tls   only make the certificates (no Java needed), e.g. to
#                                       hand the CA file to clients before the first start
#   RECSTREAM_KAFKA_TLS_PORT     first port (default 19097)
#   RECSTREAM_KAFKA_TLS_DATA     data folder (default <repo>/.kafka/tls-PORT; installed: ~/.local/state/recstream/kafka/tls-PORT); the CA file
#                                clients need is DATA/tls/ca.pem, the client certificate
#                                and key DATA/tls/client.pem and DATA/tls/client.key
#   RECSTREAM_KAFKA_TLS_USERS    user:password,... as RECSTREAM_KAFKA_SCRAM_USERS, same
#                                default: SCRAM users are created when the storage is
#                                formatted, PLAIN users are written into server.properties
#                                at every start
#   RECSTREAM_KAFKA_TLS_CLIENT   common name of the client certificate (default alice)
#   RECSTREAM_KAFKA_TLS_BAD_CERTS  1: also open the two listeners with bad certificates
#                                (their certificates are made when first needed)
#   RECSTREAM_KAFKA_TLS_DAYS     validity of the certificates made (default 825 days)
# The certificates are made once per data folder (reset --tls removes them with it).
set -euo pipefail

SECURITY="${RECSTREAM_KAFKA_SECURITY:-plain}"
ARGS=()
for arg in "$@"; do
  case "$arg" in --scram) SECURITY=scram ;; --tls) SECURITY=tls ;; *) ARGS+=("$arg") ;; esac
done
set -- "${ARGS[@]+"${ARGS[@]}"}"
case "$SECURITY" in plain|scram|tls) ;; *) echo "kafka: error: RECSTREAM_KAFKA_SECURITY must be plain, scram or tls, got '$SECURITY'" >&2; exit 2 ;; esac

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
# data folders: .kafka/ in a source checkout; installed from a wheel (this script inside the
# recstream package), the user's state folder
if [[ -f "$REPO/pyproject.toml" ]]; then
  STATE="$REPO/.kafka"
else
  STATE="${XDG_STATE_HOME:-$HOME/.local/state}/recstream/kafka"
fi
KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$HERE/pom.xml")"
DEFAULT_USERS="admin:admin-secret,alice:alice-secret,bob:bob-secret"
BAD_CERTS=0
if [[ "$SECURITY" == scram ]]; then
  PORT="${RECSTREAM_KAFKA_SCRAM_PORT:-19094}"
  DATA="${RECSTREAM_KAFKA_SCRAM_DATA:-$STATE/scram-$PORT}"
  SCRAM_USERS="${RECSTREAM_KAFKA_SCRAM_USERS:-$DEFAULT_USERS}"
  CONTROLLER_PORT=$((PORT + 1))
elif [[ "$SECURITY" == tls ]]; then
  PORT="${RECSTREAM_KAFKA_TLS_PORT:-19097}"
  DATA="${RECSTREAM_KAFKA_TLS_DATA:-$STATE/tls-$PORT}"
  SCRAM_USERS="${RECSTREAM_KAFKA_TLS_USERS:-$DEFAULT_USERS}"
  TLS_CLIENT="${RECSTREAM_KAFKA_TLS_CLIENT:-alice}"
  TLS_DAYS="${RECSTREAM_KAFKA_TLS_DAYS:-825}"
  case "${RECSTREAM_KAFKA_TLS_BAD_CERTS:-0}" in
    1|true|yes) BAD_CERTS=1 ;; 0|false|no|"") ;;
    *) echo "kafka: error: RECSTREAM_KAFKA_TLS_BAD_CERTS must be 1 or 0" >&2; exit 2 ;;
  esac
  [[ "$TLS_CLIENT" =~ ^[A-Za-z0-9._-]+$ ]] || { echo "kafka: error: RECSTREAM_KAFKA_TLS_CLIENT: letters, digits, '.', '_', '-' only" >&2; exit 2; }
  [[ "$TLS_DAYS" =~ ^[1-9][0-9]*$ ]] || { echo "kafka: error: RECSTREAM_KAFKA_TLS_DAYS must be a positive number of days" >&2; exit 2; }
  SSL_PORT=$PORT; MTLS_PORT=$((PORT + 1)); SASL_PLAIN_PORT=$((PORT + 2)); SASL_SCRAM_PORT=$((PORT + 3))
  CONTROLLER_PORT=$((PORT + 4)); EXPIRED_PORT=$((PORT + 5)); WRONG_HOST_PORT=$((PORT + 6))
  TLS="$DATA/tls"
else
  PORT="${RECSTREAM_KAFKA_PORT:-9092}"
  DATA="${RECSTREAM_KAFKA_DATA:-$STATE/data-$PORT}"
  CONTROLLER_PORT=$((PORT + 1))
fi
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

# the client ports of this broker (the first is the one `status` and the start-up wait check)
client_ports() {
  if [[ "$SECURITY" != tls ]]; then echo "$PORT"; return 0; fi
  echo "$SSL_PORT $MTLS_PORT $SASL_PLAIN_PORT $SASL_SCRAM_PORT"
  (( BAD_CERTS )) && echo "$EXPIRED_PORT $WRONG_HOST_PORT"
  return 0
}

users_var() { if [[ "$SECURITY" == tls ]]; then echo RECSTREAM_KAFKA_TLS_USERS; else echo RECSTREAM_KAFKA_SCRAM_USERS; fi; }

# user:password pairs of RECSTREAM_KAFKA_SCRAM_USERS (or _TLS_USERS), checked, one "name password" a line
scram_users() {
  local entry name pw have_admin=0 var; var="$(users_var)"
  IFS=',' read -ra entries <<<"$SCRAM_USERS"
  for entry in "${entries[@]}"; do
    name="${entry%%:*}"; pw="${entry#*:}"
    [[ "$entry" == *:* && "$name" =~ ^[A-Za-z0-9._-]+$ && "$pw" =~ ^[A-Za-z0-9._-]+$ ]] \
      || die "$var: each entry must be name:password (letters, digits, '.', '_', '-')"
    [[ "$name" == admin ]] && have_admin=1
    printf '%s %s\n' "$name" "$pw"
  done
  (( have_admin )) || die "$var: needs the super user 'admin'"
}

# --------------------------------------------------------------------------- TLS certificates

# issue NAME CN EXTENSIONS [START END]: DATA/tls/NAME.key and NAME.pem, signed by the CA,
# valid TLS_DAYS days from now, or from START to END (YYYYMMDDHHMMSSZ: an expired one)
issue() {
  local name=$1 cn=$2 ext=$3 start=${4:-} end=${5:-} dates
  printf '%s\n' "$ext" >"$TLS/$name.ext"
  openssl req -new -newkey rsa:2048 -nodes -subj "/CN=$cn" -keyout "$TLS/$name.key" -out "$TLS/$name.csr" >>"$TLS/openssl.log" 2>&1 \
    || die "openssl could not make the key of the $name certificate (see $TLS/openssl.log)"
  if [[ -n "$start" ]]; then dates=(-startdate "$start" -enddate "$end"); else dates=(-days "$TLS_DAYS"); fi
  openssl ca -batch -notext -config "$TLS/ca.cnf" -extfile "$TLS/$name.ext" "${dates[@]}" \
      -in "$TLS/$name.csr" -out "$TLS/$name.pem" >>"$TLS/openssl.log" 2>&1 \
    || die "openssl could not sign the $name certificate (see $TLS/openssl.log)"
  rm -f "$TLS/$name.csr" "$TLS/$name.ext"
}

# a broker's PEM key store: its private key, then its certificate chain
keystore() { cat "$TLS/$1.key" "$TLS/$1.pem" "$TLS/ca.pem" >"$TLS/$1-keystore.pem"; }

SERVER_EXT='basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid'

make_certs() {
  local need=0
  [[ -f "$TLS/ca.pem" && -f "$TLS/broker-keystore.pem" && -f "$TLS/client.pem" ]] || need=1
  (( BAD_CERTS )) && [[ ! -f "$TLS/expired-keystore.pem" || ! -f "$TLS/wronghost-keystore.pem" ]] && need=1
  (( need )) || return 0
  command -v openssl >/dev/null || die "openssl is needed to make the TLS broker's certificates (Debian/Ubuntu: apt-get install openssl)"
  mkdir -p "$TLS"; chmod 700 "$TLS"
  local old_umask; old_umask=$(umask); umask 077  # the keys are for this user only
  if [[ ! -f "$TLS/ca.pem" ]]; then
    say "making a CA, a broker certificate (127.0.0.1, localhost) and a client certificate (CN=$TLS_CLIENT) in $TLS"
    rm -rf "$TLS/ca-db"; mkdir -p "$TLS/ca-db"; : >"$TLS/ca-db/index.txt"; echo 1000 >"$TLS/ca-db/serial"
    cat >"$TLS/ca.cnf" <<CNF
# generated by deploy/kafka/kafka.sh: the test CA of this broker
[ca]
default_ca = test_ca
[test_ca]
dir = $TLS/ca-db
database = \$dir/index.txt
serial = \$dir/serial
new_certs_dir = \$dir
certificate = $TLS/ca.pem
private_key = $TLS/ca.key
default_md = sha256
policy = any_name
unique_subject = no
email_in_dn = no
copy_extensions = none
[any_name]
commonName = supplied
CNF
    openssl req -x509 -newkey rsa:2048 -nodes -days "$TLS_DAYS" -sha256 -subj "/CN=recstream test CA $(date -u +%Y%m%d%H%M%S)" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -keyout "$TLS/ca.key" -out "$TLS/ca.pem" >>"$TLS/openssl.log" 2>&1 \
      || die "openssl could not make the CA (see $TLS/openssl.log)"
    rm -f "$TLS/broker-keystore.pem" "$TLS/client.pem" "$TLS/expired-keystore.pem" "$TLS/wronghost-keystore.pem"
  fi
  if [[ ! -f "$TLS/broker-keystore.pem" ]]; then
    issue broker localhost "$SERVER_EXT
subjectAltName=IP:127.0.0.1,DNS:localhost"
    keystore broker
  fi
  if [[ ! -f "$TLS/client.pem" ]]; then
    issue client "$TLS_CLIENT" 'basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid'
  fi
  if (( BAD_CERTS )) && [[ ! -f "$TLS/expired-keystore.pem" ]]; then
    say "making an expired broker certificate (valid in January 2020 only) and one for host wrong.invalid"
    issue expired localhost "$SERVER_EXT
subjectAltName=IP:127.0.0.1,DNS:localhost" 20200101000000Z 20200201000000Z
    keystore expired
  fi
  if (( BAD_CERTS )) && [[ ! -f "$TLS/wronghost-keystore.pem" ]]; then
    issue wronghost wrong.invalid "$SERVER_EXT
subjectAltName=DNS:wrong.invalid"
    keystore wronghost
  fi
  chmod 644 "$TLS/ca.pem"  # the CA certificate is public; the keys stay 600
  umask "$old_umask"
}

# what the secured brokers (--scram, --tls) share: the controller's PLAIN login as admin,
# and ACLs enforced (nothing allowed without one, except to the super user admin)
secured_common_props() {
  local pw="$1"
  cat <<PROPS
sasl.mechanism.controller.protocol=PLAIN
listener.name.controller.sasl.enabled.mechanisms=PLAIN
listener.name.controller.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="admin" password="$pw" user_admin="$pw";
# ACLs: nothing is allowed without one, except to the super user
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:admin
allow.everyone.if.no.acl.found=false
PROPS
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
  if [[ "$SECURITY" == tls ]]; then tls_listener_config "$pw"; return 0; fi
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
PROPS
  secured_common_props "$pw"
}

tls_listener_config() {
  local pw=$1 plain_users="" name upw
  while read -r name upw; do plain_users+=" user_$name=\"$upw\""; done < <(scram_users)
  local listeners="SSL://127.0.0.1:$SSL_PORT,MTLS://127.0.0.1:$MTLS_PORT,SASL_PLAIN://127.0.0.1:$SASL_PLAIN_PORT,SASL_SCRAM://127.0.0.1:$SASL_SCRAM_PORT"
  local protocols="SSL:SSL,MTLS:SSL,SASL_PLAIN:SASL_SSL,SASL_SCRAM:SASL_SSL"
  if (( BAD_CERTS )); then
    listeners+=",EXPIRED://127.0.0.1:$EXPIRED_PORT,WRONG_HOST://127.0.0.1:$WRONG_HOST_PORT"
    protocols+=",EXPIRED:SSL,WRONG_HOST:SSL"
  fi
  cat <<PROPS
listeners=$listeners,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=$listeners
controller.listener.names=CONTROLLER
inter.broker.listener.name=SASL_SCRAM
listener.security.protocol.map=CONTROLLER:SASL_PLAINTEXT,$protocols
# TLS: PEM key store (key and chain) and trust store (the test CA) for every TLS listener
ssl.keystore.type=PEM
ssl.keystore.location=$TLS/broker-keystore.pem
ssl.truststore.type=PEM
ssl.truststore.location=$TLS/ca.pem
ssl.client.auth=none
listener.name.mtls.ssl.client.auth=required
# a client certificate CN=alice is the principal User:alice
ssl.principal.mapping.rules=RULE:^CN=([^,]+).*\$/\$1/,DEFAULT
listener.name.sasl_plain.sasl.enabled.mechanisms=PLAIN
listener.name.sasl_plain.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required$plain_users;
# the broker talks to itself as admin (SCRAM over TLS) and to its controller as admin (PLAIN)
listener.name.sasl_scram.sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-256
listener.name.sasl_scram.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$pw";
listener.name.sasl_scram.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$pw";
PROPS
  secured_common_props "$pw"
  if (( BAD_CERTS )); then
    cat <<PROPS
# for tests of clients' errors: the same CA, an expired certificate, a certificate for another host
listener.name.expired.ssl.keystore.location=$TLS/expired-keystore.pem
listener.name.wrong_host.ssl.keystore.location=$TLS/wronghost-keystore.pem
PROPS
  fi
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
  local p port_var=RECSTREAM_KAFKA_PORT
  [[ "$SECURITY" == scram ]] && port_var=RECSTREAM_KAFKA_SCRAM_PORT
  [[ "$SECURITY" == tls ]] && port_var=RECSTREAM_KAFKA_TLS_PORT
  for p in $(client_ports) "$CONTROLLER_PORT"; do
    if port_open "$p"; then
      die "port $p is taken by another process; set $port_var or stop it"
    fi
  done
  [[ "$SECURITY" == plain ]] || scram_users >/dev/null  # a bad user list stops here
  [[ "$SECURITY" == tls ]] && make_certs
  fetch
  write_config
  if [[ ! -f "$DATA/logs/meta.properties" ]]; then
    say "formatting storage in $DATA/logs"
    local scram=() name pw
    if [[ "$SECURITY" != plain ]]; then
      while read -r name pw; do
        scram+=(--add-scram "SCRAM-SHA-256=[name=$name,password=$pw]" --add-scram "SCRAM-SHA-512=[name=$name,password=$pw]")
      done < <(scram_users)
    fi
    java -Xmx256m -Dlog4j2.configurationFile="$HERE/log4j2.properties" -cp "$(classpath)" \
      kafka.tools.StorageTool format -t "$CLUSTER_ID" -c "$DATA/server.properties" "${scram[@]+"${scram[@]}"}" \
      >>"$LOG" 2>&1 || { tail -20 "$LOG" >&2; die "storage format failed"; }
  fi
  local what="KRaft"; [[ "$SECURITY" == scram ]] && what="KRaft, SASL_PLAINTEXT SCRAM, ACLs"
  [[ "$SECURITY" == tls ]] && what="KRaft, TLS, ACLs"
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
      [[ "$SECURITY" == tls ]] && describe_tls >&2
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

describe_tls() {
  echo "  SSL                   127.0.0.1:$SSL_PORT  (no client certificate: User:ANONYMOUS)"
  echo "  SSL, mutual TLS       127.0.0.1:$MTLS_PORT  (client certificate $TLS/client.pem, key $TLS/client.key: User:$TLS_CLIENT)"
  echo "  SASL_SSL PLAIN        127.0.0.1:$SASL_PLAIN_PORT"
  echo "  SASL_SSL SCRAM-SHA-*  127.0.0.1:$SASL_SCRAM_PORT"
  if (( BAD_CERTS )); then
    echo "  SSL, expired cert     127.0.0.1:$EXPIRED_PORT"
    echo "  SSL, wrong-host cert  127.0.0.1:$WRONG_HOST_PORT"
  fi
  echo "  CA file               $TLS/ca.pem"
}

status() {
  if pid_alive && port_open "$PORT"; then
    echo "running: 127.0.0.1:$PORT (pid $(cat "$PIDFILE"), Kafka $KAFKA_VERSION, data $DATA)"
    [[ "$SECURITY" == tls ]] && describe_tls
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
  certs)
    [[ "$SECURITY" == tls ]] || die "certs makes the TLS broker's certificates: add --tls"
    make_certs; say "certificates in $TLS (CA file $TLS/ca.pem)" ;;
  *) echo "usage: $0 {fetch|start|stop|restart|status|logs [N]|reset|classpath|certs} [--scram|--tls]" >&2; exit 2 ;;
esac
