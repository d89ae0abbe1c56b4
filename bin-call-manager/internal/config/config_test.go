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
	defaults := Call{DialTimeout: 60 * time.Second, MaxDuration: time.Hour, ReaperGrace: 2 * time.Minute,
		ReaperInterval: 10 * time.Second, ProbeInterval: 30 * time.Second, RPCTimeout: 5 * time.Second, CacheTTL: time.Hour,
		CreateBudget: 8 * time.Second, GateBudget: 3 * time.Second, DialBudget: 3 * time.Second,
		QuotaLead: 10 * time.Second, QuotaInterval: time.Second}
	tests := []struct {
		name     string
		env      map[string]string
		wantCall *Call    // checked when set
		wantErr  []string // every variable the error must name; nil means valid
	}{
		{name: "valid with defaults", env: nil, wantCall: &defaults},
		{name: "call settings", env: map[string]string{"CALL_DIAL_TIMEOUT": "30s", "CALL_MAX_DURATION": "2h",
			"CALL_REAPER_GRACE": "5m", "CALL_REAPER_INTERVAL": "1s", "CALL_PROBE_INTERVAL": "15s",
			"CALL_RPC_TIMEOUT": "2s", "CALL_CACHE_TTL": "10m", "CALL_CREATE_BUDGET": "10s", "CALL_GATE_BUDGET": "4s", "CALL_DIAL_BUDGET": "5s",
			"CALL_QUOTA_LEAD": "1s", "CALL_QUOTA_INTERVAL": "200ms"},
			wantCall: &Call{DialTimeout: 30 * time.Second, MaxDuration: 2 * time.Hour, ReaperGrace: 5 * time.Minute,
				ReaperInterval: time.Second, ProbeInterval: 15 * time.Second, RPCTimeout: 2 * time.Second, CacheTTL: 10 * time.Minute,
				CreateBudget: 10 * time.Second, GateBudget: 4 * time.Second, DialBudget: 5 * time.Second,
				QuotaLead: time.Second, QuotaInterval: 200 * time.Millisecond}},
		{name: "quota renewals slower than their lead", env: map[string]string{"CALL_QUOTA_LEAD": "2s", "CALL_QUOTA_INTERVAL": "5s"},
			wantErr: []string{"CALL_QUOTA_INTERVAL"}},
		// The configuration: gate and dial 5 s each do not fit in a create the api waits 3 s for.
		{name: "gate and dial do not fit in the create budget", env: map[string]string{"CALL_GATE_BUDGET": "5s", "CALL_DIAL_BUDGET": "5s"},
			wantErr: []string{"CALL_CREATE_BUDGET", "CALL_GATE_BUDGET (5s) + CALL_DIAL_BUDGET (5s)"}},
		{name: "create budget longer than the callers wait", env: map[string]string{"CALL_CREATE_BUDGET": "11s"},
			wantErr: []string{"CALL_CREATE_BUDGET", "callapi.MaxCreateBudget"}},
		{name: "budgets not positive", env: map[string]string{"CALL_GATE_BUDGET": "0s"},
			wantErr: []string{"CALL_GATE_BUDGET"}},
		{name: "all missing", env: map[string]string{"DATABASE_DSN": "", "RABBITMQ_ADDRESS": "", "REDIS_ADDRESS": ""},
			wantErr: []string{"DATABASE_DSN", "RABBITMQ_ADDRESS", "REDIS_ADDRESS"}},
		{name: "all malformed", env: map[string]string{"DATABASE_DSN": "nonsense", "RABBITMQ_ADDRESS": "http://x/", "REDIS_ADDRESS": "no-port", "ADMIN_ADDRESS": "x",
			"CALL_DIAL_TIMEOUT": "soon", "CALL_MAX_DURATION": "-1h", "CALL_REAPER_GRACE": "0s", "CALL_REAPER_INTERVAL": "x",
			"CALL_PROBE_INTERVAL": "1", "CALL_RPC_TIMEOUT": "-3s", "CALL_CACHE_TTL": "forever"},
			wantErr: []string{"DATABASE_DSN", "RABBITMQ_ADDRESS", "REDIS_ADDRESS", "ADMIN_ADDRESS", "CALL_DIAL_TIMEOUT",
				"CALL_MAX_DURATION", "CALL_REAPER_GRACE", "CALL_REAPER_INTERVAL", "CALL_PROBE_INTERVAL", "CALL_RPC_TIMEOUT", "CALL_CACHE_TTL"}},
		{name: "durations not whole seconds", env: map[string]string{"CALL_DIAL_TIMEOUT": "1500ms", "CALL_MAX_DURATION": "90.5s"},
			wantErr: []string{"CALL_DIAL_TIMEOUT", "CALL_MAX_DURATION"}},
		{name: "durations out of range", env: map[string]string{"CALL_DIAL_TIMEOUT": "11m", "CALL_MAX_DURATION": "25h", "CALL_RPC_TIMEOUT": "2m"},
			wantErr: []string{"CALL_DIAL_TIMEOUT", "CALL_MAX_DURATION", "CALL_RPC_TIMEOUT"}},
		{name: "reaper slower than probes", env: map[string]string{"CALL_REAPER_INTERVAL": "1m", "CALL_PROBE_INTERVAL": "30s"},
			wantErr: []string{"CALL_REAPER_INTERVAL"}},
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
				if tt.wantCall != nil && cfg.Call != *tt.wantCall {
					t.Fatalf("Call = %+v, want %+v", cfg.Call, *tt.wantCall)
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
