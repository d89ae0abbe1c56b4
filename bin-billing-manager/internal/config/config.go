// Package config loads the billing manager's configuration from the environment.
package config

import (
	"regexp"
	"time"

	"voipbin/bin-billing-manager/internal/billing"
	"voipbin/pkg/envconf"
)

// Config is everything the billing manager reads from its environment.
type Config struct {
	DatabaseDSN     string
	RabbitMQAddress string
	RedisAddress    string
	AdminAddress    string
	LogLevel        string

	// Policy is the commercial configuration: currency, initial balance, rates, reservations.
	Policy billing.Policy
	// RPCWorkers bounds the requests served at once; EventWorkers the events handled at once.
	RPCWorkers   int
	EventWorkers int
}

// MaxRate bounds a rate per minute (1 000 units of the currency).
const MaxRate = 1_000_000_000

var currency = regexp.MustCompile(`^[A-Z]{3}$`)

// Load reads and validates the configuration, reporting every problem in one error.
func Load(getenv func(string) string) (Config, error) {
	r := envconf.New(getenv)
	c := load(r)
	return c, r.Err()
}

// Vars lists every variable Load reads, with its default and whether it is required
// (`<binary> vars`; deploy/check compares deployments against it).
func Vars() []envconf.Var {
	r := envconf.New(func(string) string { return "" })
	load(r)
	return r.Vars()
}

// load reads the configuration through r, recording problems in it.
func load(r *envconf.Reader) Config {
	c := Config{
		DatabaseDSN:     r.MySQLDSN("DATABASE_DSN", "", true),
		RabbitMQAddress: r.URL("RABBITMQ_ADDRESS", "", true, "amqp", "amqps"),
		RedisAddress:    r.HostPort("REDIS_ADDRESS", "", true),
		AdminAddress:    r.HostPort("ADMIN_ADDRESS", "127.0.0.1:9102", false),
		LogLevel:        r.String("LOG_LEVEL", "info", false),
		Policy: billing.Policy{
			Currency:       r.String("BILLING_CURRENCY", "USD", false),
			InitialBalance: r.Int64("BILLING_INITIAL_BALANCE", 0, 0, billing.MaxAmount),
			Rates: map[string]int64{
				billing.DestinationTel: r.Int64("BILLING_RATE_TEL", 20_000, 0, MaxRate),
				billing.DestinationSIP: r.Int64("BILLING_RATE_SIP", 5_000, 0, MaxRate),
			},
			Increment: r.Duration("BILLING_INCREMENT", time.Minute),
			Slice:     r.Duration("BILLING_QUOTA_SLICE", time.Minute),
			// How long a reservation outlives its last grant without its call.ended: a backstop
			// for a lost call.ended, longer than any dial and any outage billing should ride out.
			ReservationTTL: r.Duration("BILLING_RESERVATION_TTL", 70*time.Minute),
		},
		RPCWorkers:   r.Int("BILLING_RPC_WORKERS", 32, 1, 1024),
		EventWorkers: r.Int("BILLING_EVENT_WORKERS", 8, 1, 256),
	}
	for name, d := range map[string]time.Duration{"BILLING_INCREMENT": c.Policy.Increment, "BILLING_QUOTA_SLICE": c.Policy.Slice} {
		switch {
		case d <= 0: // reported by Duration
		case d%time.Second != 0:
			r.Fail(name, "must be whole seconds, got %s", d)
		case d < time.Second || d > time.Hour:
			r.Fail(name, "%s is outside [1s, 1h]", d)
		}
	}
	if !currency.MatchString(c.Policy.Currency) {
		r.Fail("BILLING_CURRENCY", "%q is not a three-letter ISO 4217 code like USD", c.Policy.Currency)
	}
	return c
}
