#!/usr/bin/env bash
# Start the PostgreSQL and Redis servers the test suite uses, if they are not running (idempotent), and wait
# until both answer. AIPLUS_TEST_PG_URL / AIPLUS_TEST_REDIS_URL (read by src/aiplus/storage/testing.py too)
# point the tests at other servers: then this script starts nothing and only checks that those answer.
set -u
PG_URL="${AIPLUS_TEST_PG_URL:-}"
REDIS_URL="${AIPLUS_TEST_REDIS_URL:-}"

# wait_for SECONDS COMMAND...: run COMMAND every half second until it succeeds or SECONDS have passed
wait_for() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.5
  done
}

if [[ -z "$PG_URL" ]]; then
  if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    echo "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n1)" main start
    wait_for 120 pg_isready -q -h 127.0.0.1 -p 5432
  fi
  psql -h 127.0.0.1 -U postgres -d postgres -tAc "SELECT 1 FROM pg_roles WHERE rolname='root'" 2>/dev/null | grep -q 1 \
    || psql -h 127.0.0.1 -U postgres -d postgres -c "CREATE ROLE root SUPERUSER LOGIN" >/dev/null 2>&1 || true
  psql -h 127.0.0.1 -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='test'" 2>/dev/null | grep -q 1 \
    || psql -h 127.0.0.1 -U postgres -d postgres -c "CREATE DATABASE test" >/dev/null 2>&1 || true
  PG_URL="postgresql://root@127.0.0.1:5432/test"
fi
PG_URL="${PG_URL/+psycopg:/:}"  # libpq spells the scheme without SQLAlchemy's driver
wait_for 120 psql "$PG_URL" -tAc "SELECT 1" || { echo "PostgreSQL does not answer at $PG_URL"; exit 1; }

if [[ -z "$REDIS_URL" ]]; then
  if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    echo "starting Redis"
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/ci.log
  fi
  REDIS_URL="redis://127.0.0.1:6379/0"
fi
redis_answers() { [[ "$(redis-cli -u "$REDIS_URL" ping 2>/dev/null)" == "PONG" ]]; }
wait_for 60 redis_answers || { echo "Redis does not answer at $REDIS_URL"; exit 1; }
