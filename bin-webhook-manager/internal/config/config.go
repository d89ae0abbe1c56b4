// Package config loads the webhook manager's configuration from the environment.
package config

import (
	"net/netip"
	"time"

	"voipbin/pkg/envconf"
	"voipbin/pkg/webhookapi"
)

// Config is everything the webhook manager reads from its environment.
type Config struct {
	DatabaseDSN     string
	RabbitMQAddress string
	RedisAddress    string
	AdminAddress    string
	LogLevel        string

	// AllowedNetworks lets webhooks reach ranges the SSRF guard refuses by default
	// (WEBHOOK_ALLOWED_NETWORKS, CIDRs or addresses, comma-separated).
	AllowedNetworks []netip.Prefix
	Timeout         time.Duration // one attempt (WEBHOOK_TIMEOUT, 10s)
	RetryBase       time.Duration // first retry delay (WEBHOOK_RETRY_BASE, 5s)
	RetryMax        time.Duration // longest retry delay (WEBHOOK_RETRY_MAX, 4h)
	RetryWindow     time.Duration // how long retries go on (WEBHOOK_RETRY_WINDOW, 72h)
	Workers         int           // attempts in flight (WEBHOOK_WORKERS, 16)
	PollInterval    time.Duration // claim poll when idle (WEBHOOK_POLL_INTERVAL, 500ms)
	EventQueue      string        // WEBHOOK_EVENT_QUEUE, bin-manager.webhook.events
	RPCQueue        string        // WEBHOOK_RPC_QUEUE, bin-manager.webhook.request (tests override it)
}

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
		AdminAddress:    r.HostPort("ADMIN_ADDRESS", "127.0.0.1:9104", false),
		LogLevel:        r.String("LOG_LEVEL", "info", false),
		Timeout:         r.Duration("WEBHOOK_TIMEOUT", 10*time.Second),
		RetryBase:       r.Duration("WEBHOOK_RETRY_BASE", 5*time.Second),
		RetryMax:        r.Duration("WEBHOOK_RETRY_MAX", 4*time.Hour),
		RetryWindow:     r.Duration("WEBHOOK_RETRY_WINDOW", 72*time.Hour),
		Workers:         r.Int("WEBHOOK_WORKERS", 16, 1, 1024),
		PollInterval:    r.Duration("WEBHOOK_POLL_INTERVAL", 500*time.Millisecond),
		EventQueue:      r.String("WEBHOOK_EVENT_QUEUE", "bin-manager.webhook.events", false),
		RPCQueue:        r.String("WEBHOOK_RPC_QUEUE", webhookapi.Queue, false),
	}
	for _, s := range r.List("WEBHOOK_ALLOWED_NETWORKS", "") {
		if p, err := netip.ParsePrefix(s); err == nil {
			c.AllowedNetworks = append(c.AllowedNetworks, p.Masked())
		} else if a, err := netip.ParseAddr(s); err == nil {
			c.AllowedNetworks = append(c.AllowedNetworks, netip.PrefixFrom(a, a.BitLen()))
		} else {
			r.Fail("WEBHOOK_ALLOWED_NETWORKS", "%q is not a CIDR like 127.0.0.0/8 or an address", s)
		}
	}
	if c.RetryMax < c.RetryBase {
		r.Fail("WEBHOOK_RETRY_MAX", "must not be shorter than WEBHOOK_RETRY_BASE")
	}
	return c
}
