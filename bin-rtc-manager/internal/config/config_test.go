package config

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestLoad(t *testing.T) {
	valid := map[string]string{
		"RABBITMQ_ADDRESS": "amqp://guest:guest@127.0.0.1:5672/",
		"REDIS_ADDRESS":    "127.0.0.1:6379",
		"NODE_ID":          "rtc-1",
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
		{name: "defaults", env: nil, check: func(t *testing.T, c Config) {
			want := SIP{ListenAddress: "127.0.0.1:5060",
				TelTrunkURI: "sip:{number}@127.0.0.1:5080", DialTimeout: 60 * time.Second, MaxDuration: time.Hour,
				RTPPortMin: 20000, RTPPortMax: 30000, TCPIdleTimeout: 2 * time.Minute, TCPMaxConnections: 1024}
			if !reflect.DeepEqual(c.SIP, want) {
				t.Errorf("SIP = %+v, want %+v", c.SIP, want)
			}
			if c.NodeID != "rtc-1" {
				t.Errorf("NodeID = %q", c.NodeID)
			}
		}},
		{name: "all set", env: map[string]string{"SIP_LISTEN_ADDRESS": "0.0.0.0:5070", "SIP_EXTERNAL_ADDRESS": "203.0.113.7:5070",
			"RTC_TEL_TRUNK_URI": "sip:{number}@trunk.example:5060;transport=tcp", "RTC_TRUNK_USERNAME": "u", "RTC_TRUNK_PASSWORD": "p",
			"RTC_DIAL_TIMEOUT": "30s", "RTC_MAX_DURATION": "2h", "RTC_RTP_PORT_MIN": "40000", "RTC_RTP_PORT_MAX": "40100",
			"RTC_SIP_ALLOWED_NETWORKS": "127.0.0.0/8, ::1", "SIP_TCP_IDLE_TIMEOUT": "30s", "SIP_TCP_MAX_CONNECTIONS": "0"},
			check: func(t *testing.T, c Config) {
				want := SIP{ListenAddress: "0.0.0.0:5070", ExternalAddress: "203.0.113.7:5070",
					TelTrunkURI: "sip:{number}@trunk.example:5060;transport=tcp", TrunkUsername: "u", TrunkPassword: "p",
					DialTimeout: 30 * time.Second, MaxDuration: 2 * time.Hour, RTPPortMin: 40000, RTPPortMax: 40100,
					AllowedNetworks: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")},
					TCPIdleTimeout:  30 * time.Second}
				if !reflect.DeepEqual(c.SIP, want) {
					t.Errorf("SIP = %+v, want %+v", c.SIP, want)
				}
			}},
		{name: "all missing", env: map[string]string{"RABBITMQ_ADDRESS": "", "REDIS_ADDRESS": ""},
			wantErr: []string{"RABBITMQ_ADDRESS", "REDIS_ADDRESS"}},
		{name: "all malformed", env: map[string]string{"RABBITMQ_ADDRESS": "http://x/", "REDIS_ADDRESS": "no-port", "ADMIN_ADDRESS": "x",
			"SIP_LISTEN_ADDRESS": "nope", "RTC_DIAL_TIMEOUT": "soon", "RTC_MAX_DURATION": "-1s", "RTC_RTP_PORT_MIN": "80",
			"RTC_RTP_PORT_MAX": "x", "NODE_ID": "bad id/with slash", "RTC_TEL_TRUNK_URI": "http://trunk/",
			"RTC_SIP_ALLOWED_NETWORKS": "localhost", "SIP_TCP_IDLE_TIMEOUT": "0s", "SIP_TCP_MAX_CONNECTIONS": "-1"},
			wantErr: []string{"RABBITMQ_ADDRESS", "REDIS_ADDRESS", "ADMIN_ADDRESS", "SIP_LISTEN_ADDRESS", "RTC_DIAL_TIMEOUT",
				"RTC_MAX_DURATION", "RTC_RTP_PORT_MIN", "RTC_RTP_PORT_MAX", "NODE_ID", "RTC_TEL_TRUNK_URI", "RTC_SIP_ALLOWED_NETWORKS",
				"SIP_TCP_IDLE_TIMEOUT", "SIP_TCP_MAX_CONNECTIONS"}},
		{name: "trunk uri without placeholder", env: map[string]string{"RTC_TEL_TRUNK_URI": "sip:trunk@127.0.0.1"},
			wantErr: []string{"RTC_TEL_TRUNK_URI"}},
		{name: "any free port", env: map[string]string{"SIP_LISTEN_ADDRESS": "127.0.0.1:0"}},
		{name: "external port 0", env: map[string]string{"SIP_EXTERNAL_ADDRESS": "198.51.100.1:0"},
			wantErr: []string{"SIP_EXTERNAL_ADDRESS"}},
		{name: "wildcard listen needs external address", env: map[string]string{"SIP_LISTEN_ADDRESS": "0.0.0.0:5060"},
			wantErr: []string{"SIP_EXTERNAL_ADDRESS"}},
		{name: "username without password", env: map[string]string{"RTC_TRUNK_USERNAME": "u"},
			wantErr: []string{"RTC_TRUNK_USERNAME"}},
		{name: "rtp range reversed", env: map[string]string{"RTC_RTP_PORT_MIN": "30000", "RTC_RTP_PORT_MAX": "20000"},
			wantErr: []string{"RTC_RTP_PORT_MIN"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Load(with(tt.env))
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("Load() error = %v", err)
				}
				if tt.check != nil {
					tt.check(t, cfg)
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
			if strings.Contains(err.Error(), "guest:guest") {
				t.Errorf("error %q leaks a secret", err)
			}
		})
	}
}
