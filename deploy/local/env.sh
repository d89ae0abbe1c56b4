# shellcheck shell=bash
# Defaults for the local stack, shared by services.sh and run.sh (sourced, never run).
# Every value can be overridden from the environment; an empty value counts as unset.
#
# Common to every service (exported):
: "${DATABASE_DSN:=root@tcp(127.0.0.1:3306)/voipbin?parseTime=true&interpolateParams=true}"
: "${RABBITMQ_ADDRESS:=amqp://guest:guest@127.0.0.1:5672/}"
: "${REDIS_ADDRESS:=127.0.0.1:6379}"
: "${LOG_LEVEL:=info}"
export DATABASE_DSN RABBITMQ_ADDRESS REDIS_ADDRESS LOG_LEVEL

# Admin port (/healthz /readyz /metrics) of each service; run.sh hands each its own as ADMIN_ADDRESS.
: "${API_ADMIN_ADDRESS:=127.0.0.1:9100}"
: "${CALL_ADMIN_ADDRESS:=127.0.0.1:9101}"
: "${BILLING_ADMIN_ADDRESS:=127.0.0.1:9102}"
: "${RTC_ADMIN_ADDRESS:=127.0.0.1:9103}"
: "${WEBHOOK_ADMIN_ADDRESS:=127.0.0.1:9104}"

# api-manager. JWT_KEY has no default here: run.sh makes a random one per start unless it is set.
: "${HTTP_ADDRESS:=127.0.0.1:8080}"
: "${ADMIN_USERNAME:=admin}"
: "${ADMIN_PASSWORD:=admin}"
: "${CORS_ORIGINS:=http://127.0.0.1:8080,http://localhost:8080}"

# rtc-manager
: "${SIP_LISTEN_ADDRESS:=127.0.0.1:5060}"
: "${RTC_TEL_TRUNK_URI:=sip:{number\}@127.0.0.1:5080}"
: "${NODE_ID:=local-rtc-1}"
# How long an unanswered dial rings before CANCEL (reason noanswer), and the longest answered call
# before our BYE (reason timeout). SIP_EXTERNAL_ADDRESS (Contact/Via), RTC_TRUNK_USERNAME/PASSWORD
# (digest) and RTC_RTP_PORT_MIN/MAX are read from the environment when exported.
: "${RTC_DIAL_TIMEOUT:=60s}"
: "${RTC_MAX_DURATION:=1h}"

# rtc-manager and api-manager: sip destinations on loopback are allowed (sipp and softphones on
# this machine; the e2e tests rely on it), which production forbids. The trunk (RTC_TEL_TRUNK_URI,
# the carrier simulator) and the rtc manager's own listener stay refused as sip destinations.
: "${RTC_SIP_ALLOWED_NETWORKS:=127.0.0.0/8,::1/128}"

# rtc-manager: SIP over TCP closes an inbound connection idle this long, and serves at most this
# many inbound connections at once (the extra ones are closed at once).
: "${SIP_TCP_IDLE_TIMEOUT:=2m}"
: "${SIP_TCP_MAX_CONNECTIONS:=1024}"

# webhook-manager: local receivers are allowed, which production forbids.
: "${WEBHOOK_ALLOWED_NETWORKS:=127.0.0.0/8,::1/128}"

# billing-manager: starting balance of a new customer, in micro-USD (10 USD).
: "${BILLING_INITIAL_BALANCE:=10000000}"
# billing-manager: price per started minute, in micro-USD, by destination type (0.02 and 0.005 USD).
: "${BILLING_RATE_TEL:=20000}"
: "${BILLING_RATE_SIP:=5000}"

# carrier-sim, the SIP carrier simulator that RTC_TEL_TRUNK_URI points at.
: "${CARRIER_LISTEN_ADDRESS:=127.0.0.1:5080}"
