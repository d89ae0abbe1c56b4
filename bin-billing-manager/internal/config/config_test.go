package config

import (
	"strings"
	"testing"
	"time"
)

func TestLoad(t *testing.T) {
	valid := map[string]string{
		"DATABASE_DSN":     "root@tcp(127.0.0.1:3306)/voipbin",
		"RABBITMQ_ADDRESS": "amqp://guest:guest@127.0.0.1:5672/",
		"REDIS_ADDRESS":    "127.0.0.1:6379",
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
		check   func(t *testing.T, c Config)
		wantErr []string // every variable the error must name; nil means valid
	}{
		{name: "valid with defaults", env: nil, check: func(t *testing.T, c Config) {
			p := c.Policy
			if p.Currency != "USD" || p.InitialBalance != 0 || p.Rates["tel"] != 20_000 || p.Rates["sip"] != 5_000 ||
				p.Increment != time.Minute || p.Slice != time.Minute || p.ReservationTTL != 70*time.Minute || c.RPCWorkers != 32 || c.EventWorkers != 8 {
				t.Fatalf("defaults = %+v", c)
			}
		}},
		{name: "billing settings", env: map[string]string{"BILLING_INITIAL_BALANCE": "10000000", "BILLING_RATE_TEL": "60000",
			"BILLING_RATE_SIP": "0", "BILLING_QUOTA_SLICE": "30s", "BILLING_INCREMENT": "6s", "BILLING_RESERVATION_TTL": "2h", "BILLING_CURRENCY": "EUR"},
			check: func(t *testing.T, c Config) {
				p := c.Policy
				if p.InitialBalance != 10_000_000 || p.Rates["tel"] != 60_000 || p.Rates["sip"] != 0 || p.Slice != 30*time.Second || p.Increment != 6*time.Second ||
					p.ReservationTTL != 2*time.Hour || p.Currency != "EUR" {
					t.Fatalf("policy = %+v", p)
				}
			}},
		{name: "all missing", env: map[string]string{"DATABASE_DSN": "", "RABBITMQ_ADDRESS": "", "REDIS_ADDRESS": ""},
			wantErr: []string{"DATABASE_DSN", "RABBITMQ_ADDRESS", "REDIS_ADDRESS"}},
		{name: "all malformed", env: map[string]string{"DATABASE_DSN": "nonsense", "RABBITMQ_ADDRESS": "http://x/", "REDIS_ADDRESS": "no-port", "ADMIN_ADDRESS": "x"},
			wantErr: []string{"DATABASE_DSN", "RABBITMQ_ADDRESS", "REDIS_ADDRESS", "ADMIN_ADDRESS"}},
		{name: "billing malformed", env: map[string]string{"BILLING_INITIAL_BALANCE": "-1", "BILLING_RATE_TEL": "ten",
			"BILLING_RATE_SIP": "99999999999", "BILLING_QUOTA_SLICE": "0s", "BILLING_INCREMENT": "1500ms", "BILLING_RESERVATION_TTL": "-5m",
			"BILLING_CURRENCY": "dollars", "BILLING_RPC_WORKERS": "0", "BILLING_EVENT_WORKERS": "x"},
			wantErr: []string{"BILLING_INITIAL_BALANCE", "BILLING_RATE_TEL", "BILLING_RATE_SIP", "BILLING_QUOTA_SLICE", "BILLING_INCREMENT",
				"BILLING_RESERVATION_TTL", "BILLING_CURRENCY", "BILLING_RPC_WORKERS", "BILLING_EVENT_WORKERS"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Load(with(tt.env))
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("Load() error = %v", err)
				}
				if !strings.Contains(cfg.DatabaseDSN, "interpolateParams=true") {
					t.Fatalf("DSN %q lacks interpolateParams=true", cfg.DatabaseDSN)
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
		})
	}
}
