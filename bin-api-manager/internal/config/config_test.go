package config

import (
	"strings"
	"testing"
	"time"
)

const secret32 = "0123456789abcdef0123456789abcdef"

func TestLoad(t *testing.T) {
	valid := map[string]string{
		"DATABASE_DSN":     "root@tcp(127.0.0.1:3306)/voipbin",
		"RABBITMQ_ADDRESS": "amqp://guest:guest@127.0.0.1:5672/",
		"REDIS_ADDRESS":    "127.0.0.1:6379",
		"JWT_KEY":          secret32,
	}
	with := func(changes map[string]string) func(string) string {
		m := map[string]string{}
		for k, v := range valid {
			m[k] = v
		}
		for k, v := range changes {
			m[k] = v
		}
		return func(k string) string { return m[k] }
	}
	tests := []struct {
		name    string
		env     map[string]string
		wantErr []string // every variable the error must name; nil means valid
		check   func(t *testing.T, c Config)
	}{
		{name: "valid with defaults", env: nil, check: func(t *testing.T, c Config) {
			if !strings.Contains(c.DatabaseDSN, "interpolateParams=true") {
				t.Errorf("DSN %q lacks interpolateParams=true", c.DatabaseDSN)
			}
			if c.HTTPAddress != "127.0.0.1:8080" || c.JWTLifetime != 24*time.Hour || c.TLS() {
				t.Errorf("defaults = %q %s tls=%v", c.HTTPAddress, c.JWTLifetime, c.TLS())
			}
			if len(c.JWTKeys) != 1 || c.JWTKeys[0].ID != "default" || string(c.JWTKeys[0].Secret) != secret32 {
				t.Errorf("JWTKeys = %+v, want one default key", c.JWTKeys)
			}
			if c.PasswordHashConcurrency != 0 || c.LoginThrottle != (LoginThrottle{PerIP: 30, PerAccount: 10, Window: 15 * time.Minute}) ||
				c.WS != (WSLimits{PerCustomer: 500, PerIP: 100}) {
				t.Errorf("abuse limits = %d %+v %+v", c.PasswordHashConcurrency, c.LoginThrottle, c.WS)
			}
			if c.CallCreateTimeout != 12*time.Second {
				t.Errorf("CallCreateTimeout = %s, want 12s", c.CallCreateTimeout)
			}
		}},
		// The gateway waited 3 s for a create the call manager may work on for up to 10 s.
		{name: "create timeout shorter than the call manager's budget", env: map[string]string{"CALL_CREATE_TIMEOUT": "3s"},
			wantErr: []string{"CALL_CREATE_TIMEOUT", "callapi.MaxCreateBudget"}},
		{name: "create timeout too long", env: map[string]string{"CALL_CREATE_TIMEOUT": "2m"}, wantErr: []string{"CALL_CREATE_TIMEOUT"}},
		{name: "abuse limits", env: map[string]string{"PASSWORD_HASH_CONCURRENCY": "3", "LOGIN_FAILURES_PER_IP": "0",
			"LOGIN_FAILURES_PER_ACCOUNT": "5", "LOGIN_FAILURE_WINDOW": "1m", "WS_MAX_CONNECTIONS_PER_CUSTOMER": "7",
			"WS_MAX_CONNECTIONS_PER_IP": "0"},
			check: func(t *testing.T, c Config) {
				if c.PasswordHashConcurrency != 3 || c.LoginThrottle != (LoginThrottle{PerIP: 0, PerAccount: 5, Window: time.Minute}) ||
					c.WS != (WSLimits{PerCustomer: 7, PerIP: 0}) {
					t.Errorf("abuse limits = %d %+v %+v", c.PasswordHashConcurrency, c.LoginThrottle, c.WS)
				}
			}},
		{name: "abuse limits malformed", env: map[string]string{"PASSWORD_HASH_CONCURRENCY": "-1", "LOGIN_FAILURES_PER_IP": "x",
			"LOGIN_FAILURES_PER_ACCOUNT": "-2", "LOGIN_FAILURE_WINDOW": "0s", "WS_MAX_CONNECTIONS_PER_CUSTOMER": "many",
			"WS_MAX_CONNECTIONS_PER_IP": "-1"},
			wantErr: []string{"PASSWORD_HASH_CONCURRENCY", "LOGIN_FAILURES_PER_IP", "LOGIN_FAILURES_PER_ACCOUNT",
				"LOGIN_FAILURE_WINDOW", "WS_MAX_CONNECTIONS_PER_CUSTOMER", "WS_MAX_CONNECTIONS_PER_IP"}},
		{name: "key list", env: map[string]string{"JWT_KEY": "new:" + secret32 + "x, old:" + secret32,
			"CORS_ORIGINS": "https://a.example, http://localhost:3000", "TLS_CERT_FILE": "/c", "TLS_KEY_FILE": "/k"},
			check: func(t *testing.T, c Config) {
				if len(c.JWTKeys) != 2 || c.JWTKeys[0].ID != "new" || c.JWTKeys[1].ID != "old" {
					t.Errorf("JWTKeys = %+v, want new then old", c.JWTKeys)
				}
				if len(c.CORSOrigins) != 2 || !c.TLS() {
					t.Errorf("CORS %v TLS %v", c.CORSOrigins, c.TLS())
				}
			}},
		{name: "all missing", env: map[string]string{"DATABASE_DSN": "", "RABBITMQ_ADDRESS": "", "REDIS_ADDRESS": "", "JWT_KEY": ""},
			wantErr: []string{"DATABASE_DSN", "RABBITMQ_ADDRESS", "REDIS_ADDRESS", "JWT_KEY"}},
		{name: "all malformed", env: map[string]string{"DATABASE_DSN": "nonsense", "RABBITMQ_ADDRESS": "http://x/",
			"REDIS_ADDRESS": "no-port", "ADMIN_ADDRESS": "x", "HTTP_ADDRESS": "y", "JWT_LIFETIME": "soon",
			"RATE_LIMIT_IP_RATE": "-1", "CORS_ORIGINS": "example.com", "AUTH_CACHE_TTL": "1m"},
			wantErr: []string{"DATABASE_DSN", "RABBITMQ_ADDRESS", "REDIS_ADDRESS", "ADMIN_ADDRESS", "HTTP_ADDRESS",
				"JWT_LIFETIME", "RATE_LIMIT_IP_RATE", "CORS_ORIGINS", "AUTH_CACHE_TTL"}},
		{name: "short secret", env: map[string]string{"JWT_KEY": "short"}, wantErr: []string{"JWT_KEY", "at least 32"}},
		{name: "short secret in list", env: map[string]string{"JWT_KEY": "a:" + secret32 + ",b:tiny"}, wantErr: []string{`kid "b"`}},
		{name: "list without kid", env: map[string]string{"JWT_KEY": "a:" + secret32 + "," + secret32}, wantErr: []string{"no kid"}},
		{name: "duplicate kid", env: map[string]string{"JWT_KEY": "a:" + secret32 + ",a:" + secret32}, wantErr: []string{"twice"}},
		{name: "tls half set", env: map[string]string{"TLS_CERT_FILE": "/c"}, wantErr: []string{"TLS_KEY_FILE"}},
		{name: "admin half set", env: map[string]string{"ADMIN_USERNAME": "admin"}, wantErr: []string{"ADMIN_PASSWORD"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Load(with(tt.env))
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("Load() error = %v", err)
				}
				tt.check(t, cfg)
				return
			}
			if err == nil {
				t.Fatal("Load() error = nil, want one naming every problem")
			}
			for _, name := range tt.wantErr {
				if !strings.Contains(err.Error(), name) {
					t.Errorf("error %q does not name %s", err, name)
				}
			}
			if strings.Contains(err.Error(), secret32) {
				t.Errorf("error %q echoes a secret", err)
			}
		})
	}
}
