package config

import (
	"net/netip"
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
		wantErr []string // every variable the error must name; nil means valid
	}{
		{name: "valid", env: nil},
		{name: "all missing", env: map[string]string{"DATABASE_DSN": "", "RABBITMQ_ADDRESS": "", "REDIS_ADDRESS": ""},
			wantErr: []string{"DATABASE_DSN", "RABBITMQ_ADDRESS", "REDIS_ADDRESS"}},
		{name: "all malformed", env: map[string]string{"DATABASE_DSN": "nonsense", "RABBITMQ_ADDRESS": "http://x/", "REDIS_ADDRESS": "no-port", "ADMIN_ADDRESS": "x"},
			wantErr: []string{"DATABASE_DSN", "RABBITMQ_ADDRESS", "REDIS_ADDRESS", "ADMIN_ADDRESS"}},
		{name: "webhook settings malformed", env: map[string]string{"WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8,localhost", "WEBHOOK_TIMEOUT": "soon",
			"WEBHOOK_RETRY_WINDOW": "-1h", "WEBHOOK_WORKERS": "0", "WEBHOOK_POLL_INTERVAL": "0s"},
			wantErr: []string{"WEBHOOK_ALLOWED_NETWORKS", "WEBHOOK_TIMEOUT", "WEBHOOK_RETRY_WINDOW", "WEBHOOK_WORKERS", "WEBHOOK_POLL_INTERVAL"}},
		{name: "retry max below base", env: map[string]string{"WEBHOOK_RETRY_BASE": "10s", "WEBHOOK_RETRY_MAX": "1s"},
			wantErr: []string{"WEBHOOK_RETRY_MAX"}},
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
				if cfg.Timeout != 10*time.Second || cfg.RetryWindow != 72*time.Hour || cfg.Workers != 16 || len(cfg.AllowedNetworks) != 0 ||
					cfg.EventQueue != "bin-manager.webhook.events" || cfg.RPCQueue != "bin-manager.webhook.request" {
					t.Fatalf("defaults: %+v", cfg)
				}
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

func TestLoadAllowedNetworks(t *testing.T) {
	env := map[string]string{
		"DATABASE_DSN":             "root@tcp(127.0.0.1:3306)/voipbin",
		"RABBITMQ_ADDRESS":         "amqp://guest:guest@127.0.0.1:5672/",
		"REDIS_ADDRESS":            "127.0.0.1:6379",
		"WEBHOOK_ALLOWED_NETWORKS": " 127.0.0.1/8 , ::1, 10.1.2.3",
	}
	cfg, err := Load(func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128"), netip.MustParsePrefix("10.1.2.3/32")}
	if len(cfg.AllowedNetworks) != len(want) {
		t.Fatalf("AllowedNetworks = %v, want %v", cfg.AllowedNetworks, want)
	}
	for i := range want {
		if cfg.AllowedNetworks[i] != want[i] {
			t.Fatalf("AllowedNetworks = %v, want %v", cfg.AllowedNetworks, want)
		}
	}
}
