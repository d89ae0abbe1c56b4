// Package config loads the call manager's configuration from the environment.
package config

import (
	"time"

	"voipbin/pkg/callapi"
	"voipbin/pkg/envconf"
)

// Config is everything the call manager reads from its environment.
type Config struct {
	DatabaseDSN     string
	RabbitMQAddress string
	RedisAddress    string
	AdminAddress    string
	LogLevel        string
	Call            Call
}

// Call tunes the call lifecycle.
type Call struct {
	// DialTimeout is how long a destination may ring before the rtc node gives up (CANCEL,
	// reason noanswer); sent with every dial unless the request sets its own. Whole seconds.
	DialTimeout time.Duration
	// MaxDuration is how long an answered call may last before the rtc node ends it (BYE, reason
	// timeout). Whole seconds.
	MaxDuration time.Duration
	// ReaperGrace is how long past DialTimeout+MaxDuration the reaper waits for the rtc node to
	// end a call before ending it itself (reason timeout).
	ReaperGrace time.Duration
	// ReaperInterval is how often the reaper looks for calls that are due.
	ReaperInterval time.Duration
	// ProbeInterval is how often the reaper asks a live call's rtc node whether it still has the
	// dialog; two failed probes in a row end the call (reason failed).
	ProbeInterval time.Duration
	// RPCTimeout bounds each RPC to billing and rtc outside a create request (hangup, probe,
	// release).
	RPCTimeout time.Duration
	// CreateBudget is the longest one create request may take; it ends CreateReplyMargin before
	// the caller's deadline if that is sooner. At most callapi.MaxCreateBudget, so the callers'
	// timeouts (checked against that constant) are longer.
	CreateBudget time.Duration
	// GateBudget bounds the billing gate phase of a create (every destination's gate).
	GateBudget time.Duration
	// DialBudget bounds the wait for rtc's answer to each dial of a create. GateBudget +
	// DialBudget + CreateStoreReserve must fit in CreateBudget.
	DialBudget time.Duration
	// CacheTTL is how long a call:<id> entry lives in Redis after its last write.
	CacheTTL time.Duration
	// QuotaLead is how long before an answered call's quota (talk time granted by billing) runs
	// out the next slice is asked for; at most half a slice is used, whatever this says.
	QuotaLead time.Duration
	// QuotaInterval is how often the renewer looks for due renewals, and how soon a failed or
	// refused one is tried again.
	QuotaInterval time.Duration
}

// CreateStoreReserve is what a create budget keeps beside its gate and dial budgets for the
// store's writes (claiming the key, committing the calls).
const CreateStoreReserve = time.Second

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
		AdminAddress:    r.HostPort("ADMIN_ADDRESS", "127.0.0.1:9101", false),
		LogLevel:        r.String("LOG_LEVEL", "info", false),
		Call: Call{
			DialTimeout:    r.Duration("CALL_DIAL_TIMEOUT", 60*time.Second),
			MaxDuration:    r.Duration("CALL_MAX_DURATION", time.Hour),
			ReaperGrace:    r.Duration("CALL_REAPER_GRACE", 2*time.Minute),
			ReaperInterval: r.Duration("CALL_REAPER_INTERVAL", 10*time.Second),
			ProbeInterval:  r.Duration("CALL_PROBE_INTERVAL", 30*time.Second),
			RPCTimeout:     r.Duration("CALL_RPC_TIMEOUT", 5*time.Second),
			CreateBudget:   r.Duration("CALL_CREATE_BUDGET", 8*time.Second),
			GateBudget:     r.Duration("CALL_GATE_BUDGET", 3*time.Second),
			DialBudget:     r.Duration("CALL_DIAL_BUDGET", 3*time.Second),
			CacheTTL:       r.Duration("CALL_CACHE_TTL", time.Hour),
			QuotaLead:      r.Duration("CALL_QUOTA_LEAD", 10*time.Second),
			QuotaInterval:  r.Duration("CALL_QUOTA_INTERVAL", time.Second),
		},
	}
	wholeSeconds := func(name string, d, lo, hi time.Duration) {
		switch {
		case d%time.Second != 0:
			r.Fail(name, "must be whole seconds, got %s", d)
		case d < lo || d > hi:
			r.Fail(name, "%s is outside [%s, %s]", d, lo, hi)
		}
	}
	wholeSeconds("CALL_DIAL_TIMEOUT", c.Call.DialTimeout, time.Second, 10*time.Minute)
	wholeSeconds("CALL_MAX_DURATION", c.Call.MaxDuration, time.Second, 24*time.Hour)
	if c.Call.RPCTimeout > time.Minute {
		r.Fail("CALL_RPC_TIMEOUT", "%s is longer than 1m", c.Call.RPCTimeout)
	}
	// The budgets nest: the caller (api) waits callapi.MaxCreateBudget + margin, the create fits in
	// that, and the gate and the dial fit in the create.
	if c.Call.CreateBudget > callapi.MaxCreateBudget {
		r.Fail("CALL_CREATE_BUDGET", "%s is longer than %s, the most the callers wait for (callapi.MaxCreateBudget)", c.Call.CreateBudget, callapi.MaxCreateBudget)
	}
	if c.Call.GateBudget <= 0 || c.Call.DialBudget <= 0 {
		r.Fail("CALL_GATE_BUDGET", "CALL_GATE_BUDGET (%s) and CALL_DIAL_BUDGET (%s) must be positive", c.Call.GateBudget, c.Call.DialBudget)
	} else if need := c.Call.GateBudget + c.Call.DialBudget + CreateStoreReserve; need > c.Call.CreateBudget {
		r.Fail("CALL_CREATE_BUDGET", "%s does not hold CALL_GATE_BUDGET (%s) + CALL_DIAL_BUDGET (%s) + %s for the store = %s",
			c.Call.CreateBudget, c.Call.GateBudget, c.Call.DialBudget, CreateStoreReserve, need)
	}
	if c.Call.QuotaLead > time.Hour {
		r.Fail("CALL_QUOTA_LEAD", "%s is longer than 1h", c.Call.QuotaLead)
	}
	if c.Call.QuotaInterval > c.Call.QuotaLead && c.Call.QuotaLead > 0 {
		r.Fail("CALL_QUOTA_INTERVAL", "%s is longer than CALL_QUOTA_LEAD (%s): renewals would come too late", c.Call.QuotaInterval, c.Call.QuotaLead)
	}
	if c.Call.ReaperInterval > c.Call.ProbeInterval {
		r.Fail("CALL_REAPER_INTERVAL", "%s is longer than CALL_PROBE_INTERVAL (%s): probes would run late", c.Call.ReaperInterval, c.Call.ProbeInterval)
	}
	return c
}
