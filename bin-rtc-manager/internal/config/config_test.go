package config

import (
	"strings"
	"testing"
)

func TestLoad(t *testing.T) {
	valid := map[string]string{
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
		{name: "all missing", env: map[string]string{"RABBITMQ_ADDRESS": "", "REDIS_ADDRESS": ""},
			wantErr: []string{"RABBITMQ_ADDRESS", "REDIS_ADDRESS"}},
		{name: "all malformed", env: map[string]string{"RABBITMQ_ADDRESS": "http://x/", "REDIS_ADDRESS": "no-port", "ADMIN_ADDRESS": "x"},
			wantErr: []string{"RABBITMQ_ADDRESS", "REDIS_ADDRESS", "ADMIN_ADDRESS"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Load(with(tt.env))
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("Load() error = %v", err)
				}
				_ = cfg
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
