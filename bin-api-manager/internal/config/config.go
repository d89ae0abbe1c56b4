// Package config loads the api manager's configuration from the environment.
package config

import (
	"net/netip"
	"strings"
	"time"

	"voipbin/pkg/callapi"
	"voipbin/pkg/envconf"
)

// MinJWTSecret is the shortest JWT signing secret accepted, in bytes (HS256 wants at least the
// hash size).
const MinJWTSecret = 32

// JWTKey is one HS256 key: its kid and its secret. The first key of Config.JWTKeys signs; all verify.
type JWTKey struct {
	ID     string
	Secret []byte
}

// RateLimit is a GCRA limit: Rate requests per second on average with bursts of Burst. A zero
// Rate disables the limit.
type RateLimit struct {
	Rate  int
	Burst int
}

// Config is everything the api manager reads from its environment.
type Config struct {
	DatabaseDSN     string
	RabbitMQAddress string
	RedisAddress    string
	AdminAddress    string
	LogLevel        string

	HTTPAddress string
	TLSCertFile string
	TLSKeyFile  string
	CORSOrigins []string

	JWTKeys     []JWTKey
	JWTLifetime time.Duration

	// AdminUsername and AdminPassword bootstrap the superadmin when none exists; main fails
	// clearly if they are empty then.
	AdminUsername string
	AdminPassword string

	RateLimitIP       RateLimit
	RateLimitCustomer RateLimit
	// AuthCacheTTL is how long an access key or a user read from MySQL is trusted by the
	// authentication cache (Redis and memory); it bounds how long a revocation that could not be
	// announced (Redis unreachable) may go unnoticed (at most 5 s).
	AuthCacheTTL time.Duration
	// WSCredentialCheckInterval is how often every WebSocket's credential is checked again,
	// besides the checks a revocation triggers at once.
	WSCredentialCheckInterval time.Duration
	// BcryptCost is the cost of new password hashes.
	BcryptCost int
	// PasswordHashConcurrency bounds the bcrypt work running at once (0: half the cores).
	PasswordHashConcurrency int
	// LoginThrottle limits failed logins per client IP and per account.
	LoginThrottle LoginThrottle
	// WS limits WebSocket connections.
	WS WSLimits
	// CallCreateTimeout is how long POST /v1.0/calls waits for the call manager: at least
	// callapi.CreateTimeout (the call manager's longest budget plus the time its reply takes), so
	// the call manager always gives up first.
	CallCreateTimeout time.Duration
	// SIPAllowedNetworks opens, for sip destinations with a literal address, ranges refused by
	// default (RTC_SIP_ALLOWED_NETWORKS, the rtc manager's setting: set both alike).
	SIPAllowedNetworks []netip.Prefix
}

// LoginThrottle counts failed logins in fixed windows of Window; a limit of 0 disables that count.
type LoginThrottle struct {
	PerIP      int
	PerAccount int
	Window     time.Duration
}

// WSLimits cap open WebSocket connections on one instance; 0 disables a cap.
type WSLimits struct {
	PerCustomer int
	PerIP       int
}

// TLS reports whether the HTTP server serves TLS.
func (c Config) TLS() bool { return c.TLSCertFile != "" }

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
		AdminAddress:    r.HostPort("ADMIN_ADDRESS", "127.0.0.1:9100", false),
		LogLevel:        r.String("LOG_LEVEL", "info", false),

		HTTPAddress: r.HostPort("HTTP_ADDRESS", "127.0.0.1:8080", false),
		TLSCertFile: r.String("TLS_CERT_FILE", "", false),
		TLSKeyFile:  r.String("TLS_KEY_FILE", "", false),
		CORSOrigins: r.List("CORS_ORIGINS", ""),

		JWTKeys:     parseJWTKeys(r, r.String("JWT_KEY", "", true)),
		JWTLifetime: r.Duration("JWT_LIFETIME", 24*time.Hour),

		AdminUsername: r.String("ADMIN_USERNAME", "", false),
		AdminPassword: r.String("ADMIN_PASSWORD", "", false),

		RateLimitIP: RateLimit{
			Rate:  r.Int("RATE_LIMIT_IP_RATE", 100, 0, 1_000_000),
			Burst: r.Int("RATE_LIMIT_IP_BURST", 200, 1, 1_000_000),
		},
		RateLimitCustomer: RateLimit{
			Rate:  r.Int("RATE_LIMIT_CUSTOMER_RATE", 50, 0, 1_000_000),
			Burst: r.Int("RATE_LIMIT_CUSTOMER_BURST", 100, 1, 1_000_000),
		},
		AuthCacheTTL:              r.Duration("AUTH_CACHE_TTL", 5*time.Second),
		WSCredentialCheckInterval: r.Duration("WS_CREDENTIAL_CHECK_INTERVAL", 2*time.Second),
		BcryptCost:                r.Int("BCRYPT_COST", 10, 4, 16),
		CallCreateTimeout:         r.Duration("CALL_CREATE_TIMEOUT", callapi.CreateTimeout+time.Second),

		SIPAllowedNetworks:      r.Prefixes("RTC_SIP_ALLOWED_NETWORKS", ""),
		PasswordHashConcurrency: r.Int("PASSWORD_HASH_CONCURRENCY", 0, 0, 1024),
		LoginThrottle: LoginThrottle{
			PerIP:      r.Int("LOGIN_FAILURES_PER_IP", 30, 0, 1_000_000),
			PerAccount: r.Int("LOGIN_FAILURES_PER_ACCOUNT", 10, 0, 1_000_000),
			Window:     r.Duration("LOGIN_FAILURE_WINDOW", 15*time.Minute),
		},
		WS: WSLimits{
			PerCustomer: r.Int("WS_MAX_CONNECTIONS_PER_CUSTOMER", 500, 0, 10_000_000),
			PerIP:       r.Int("WS_MAX_CONNECTIONS_PER_IP", 100, 0, 10_000_000),
		},
	}
	if c.LoginThrottle.Window < time.Second || c.LoginThrottle.Window > 24*time.Hour {
		r.Fail("LOGIN_FAILURE_WINDOW", "must be from 1s to 24h, got %s", c.LoginThrottle.Window)
	}
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		r.Fail("TLS_CERT_FILE", "TLS_CERT_FILE and TLS_KEY_FILE must be set together")
	}
	if c.AuthCacheTTL <= 0 || c.AuthCacheTTL > 5*time.Second {
		r.Fail("AUTH_CACHE_TTL", "must be more than 0 and at most 5s (a revoked credential must stop working within 5 s), got %s", c.AuthCacheTTL)
	}
	if c.WSCredentialCheckInterval < 100*time.Millisecond || c.WSCredentialCheckInterval > 10*time.Second {
		r.Fail("WS_CREDENTIAL_CHECK_INTERVAL", "must be from 100ms to 10s, got %s", c.WSCredentialCheckInterval)
	}
	if c.CallCreateTimeout < callapi.CreateTimeout || c.CallCreateTimeout > time.Minute {
		r.Fail("CALL_CREATE_TIMEOUT", "%s is outside [%s, 1m]: the api must wait longer than the call manager's whole create budget (callapi.MaxCreateBudget %s + reply margin %s)",
			c.CallCreateTimeout, callapi.CreateTimeout, callapi.MaxCreateBudget, callapi.CreateReplyMargin)
	}
	if c.JWTLifetime < time.Minute {
		r.Fail("JWT_LIFETIME", "must be at least 1m, got %s", c.JWTLifetime)
	}
	if (c.AdminUsername == "") != (c.AdminPassword == "") {
		r.Fail("ADMIN_USERNAME", "ADMIN_USERNAME and ADMIN_PASSWORD must be set together")
	}
	for _, o := range c.CORSOrigins {
		if o != "*" && !strings.HasPrefix(o, "http://") && !strings.HasPrefix(o, "https://") {
			r.Fail("CORS_ORIGINS", "%q is not an origin like https://app.example.com (or *)", o)
		}
	}
	return c
}

// parseJWTKeys reads "secret" or "kid:secret,kid:secret". A bare secret gets the kid "default".
// Secrets are never echoed in problems.
func parseJWTKeys(r *envconf.Reader, v string) []JWTKey {
	if v == "" {
		return nil // already reported as required
	}
	var keys []JWTKey
	seen := map[string]bool{}
	items := strings.Split(v, ",")
	for i, item := range items {
		item = strings.TrimSpace(item)
		kid, secret, ok := strings.Cut(item, ":")
		if !ok {
			if len(items) > 1 {
				r.Fail("JWT_KEY", "key %d has no kid: with several keys each must be kid:secret", i+1)
				continue
			}
			kid, secret = "default", item
		}
		switch {
		case kid == "":
			r.Fail("JWT_KEY", "key %d has an empty kid", i+1)
		case seen[kid]:
			r.Fail("JWT_KEY", "kid %q appears twice", kid)
		case len(secret) < MinJWTSecret:
			r.Fail("JWT_KEY", "the secret of kid %q is %d bytes, want at least %d", kid, len(secret), MinJWTSecret)
		}
		seen[kid] = true
		keys = append(keys, JWTKey{ID: kid, Secret: []byte(secret)})
	}
	return keys
}
