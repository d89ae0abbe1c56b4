package netguard

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"
	"time"

	"voipbin/bin-webhook-manager/internal/webhook"
)

func prefixes(s ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range s {
		out = append(out, netip.MustParsePrefix(p))
	}
	return out
}

func TestCheck(t *testing.T) {
	tests := []struct {
		ip      string
		allowed []netip.Prefix
		wantOK  bool
	}{
		{"93.184.216.34", nil, true},
		{"2606:2800:220:1:248:1893:25c8:1946", nil, true},
		{"127.0.0.1", nil, false},
		{"127.8.9.10", nil, false},
		{"::1", nil, false},
		{"10.1.2.3", nil, false},
		{"172.16.0.1", nil, false},
		{"172.31.255.255", nil, false},
		{"172.32.0.1", nil, true},
		{"192.168.1.1", nil, false},
		{"169.254.169.254", nil, false},
		{"169.254.1.1", nil, false},
		{"fe80::1", nil, false},
		{"fc00::1", nil, false},
		{"fd00:ec2::254", nil, false},
		{"100.64.0.1", nil, false},
		{"100.127.255.255", nil, false},
		{"0.0.0.0", nil, false},
		{"::", nil, false},
		{"224.0.0.1", nil, false},
		{"255.255.255.255", nil, false},
		{"198.18.0.1", nil, false},
		{"::ffff:127.0.0.1", nil, false},  // IPv4-mapped loopback
		{"::ffff:10.0.0.1", nil, false},   // IPv4-mapped private
		{"64:ff9b::a00:1", nil, false},    // NAT64 of 10.0.0.1
		{"2002:a9fe:a9fe::1", nil, false}, // 6to4 of 169.254.169.254
		// Every IPv6 form that embeds an IPv4 address is refused, whatever the IPv4 address inside.
		{"::a9fe:a9fe", nil, false},                          // IPv4-compatible 169.254.169.254
		{"::169.254.169.254", nil, false},                    // the same, dotted
		{"::7f00:1", nil, false},                             // IPv4-compatible loopback
		{"::5db8:d822", nil, false},                          // IPv4-compatible public address
		{"::ffff:0:a9fe:a9fe", nil, false},                   // SIIT IPv4-translated
		{"64:ff9b::5db8:d822", nil, false},                   // NAT64 of a public address
		{"64:ff9b::169.254.169.254", nil, false},             // NAT64 of the metadata address
		{"64:ff9b:1::a00:1", nil, false},                     // NAT64 local-use prefix
		{"2002:5db8:d822::1", nil, false},                    // 6to4 of a public address
		{"2001:0:4136:e378:8000:63bf:3fff:fdd2", nil, false}, // Teredo
		{"2606:2800:220:1:0:5efe:a9fe:a9fe", nil, false},     // ISATAP interface id
		{"2606:2800:220:1:200:5efe:5db8:d822", nil, false},   // ISATAP, universal bit set
		{"::ffff:93.184.216.34", nil, true},                  // IPv4-mapped public: the IPv4 address itself
		{"2001:4860:4860::8888", nil, true},                  // public IPv6 next to Teredo's 2001::/32
		{"::7f00:1", prefixes("127.0.0.0/8"), false},         // allowing IPv4 loopback opens no IPv6 form of it
		{"127.0.0.1", prefixes("127.0.0.0/8"), true},
		{"::ffff:127.0.0.1", prefixes("127.0.0.0/8"), true},
		{"::1", prefixes("::1/128"), true},
		{"10.0.0.1", prefixes("127.0.0.0/8"), false},
		{"169.254.169.254", prefixes("127.0.0.0/8", "::1/128"), false},
		{"169.254.169.254", prefixes("169.254.169.254/32"), true},
	}
	for _, tt := range tests {
		t.Run(tt.ip, func(t *testing.T) {
			err := New(tt.allowed, nil).Check(netip.MustParseAddr(tt.ip))
			if tt.wantOK && err != nil {
				t.Fatalf("Check(%s) = %v, want allowed", tt.ip, err)
			}
			if !tt.wantOK && !errors.Is(err, webhook.ErrTargetForbidden) {
				t.Fatalf("Check(%s) = %v, want ErrTargetForbidden", tt.ip, err)
			}
		})
	}
}

type fakeResolver map[string][]netip.Addr

func (r fakeResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	if a, ok := r[host]; ok {
		return a, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

func TestCheckTarget(t *testing.T) {
	res := fakeResolver{
		"public.example":   {netip.MustParseAddr("93.184.216.34")},
		"rebind.example":   {netip.MustParseAddr("93.184.216.34"), netip.MustParseAddr("10.0.0.5")},
		"metadata.example": {netip.MustParseAddr("169.254.169.254")},
		"compat.example":   {netip.MustParseAddr("93.184.216.34"), netip.MustParseAddr("::a9fe:a9fe")},
	}
	g := New(nil, res)
	tests := []struct {
		uri       string
		wantErr   error // nil, ErrTargetForbidden, or errFieldErr
		wantField bool
	}{
		{uri: "https://public.example/hook"},
		{uri: "https://93.184.216.34:8443/hook"},
		{uri: "https://rebind.example/hook", wantErr: webhook.ErrTargetForbidden},
		{uri: "http://metadata.example/latest/meta-data", wantErr: webhook.ErrTargetForbidden},
		{uri: "http://127.0.0.1:8080/", wantErr: webhook.ErrTargetForbidden},
		{uri: "http://[::1]:8080/", wantErr: webhook.ErrTargetForbidden},
		{uri: "http://[fd00:ec2::254]/", wantErr: webhook.ErrTargetForbidden},
		{uri: "http://[::a9fe:a9fe]/", wantErr: webhook.ErrTargetForbidden},
		{uri: "http://[::ffff:a9fe:a9fe]/", wantErr: webhook.ErrTargetForbidden},
		{uri: "http://[64:ff9b::a9fe:a9fe]/latest/meta-data", wantErr: webhook.ErrTargetForbidden},
		{uri: "https://[2002:a9fe:a9fe::1]:8443/", wantErr: webhook.ErrTargetForbidden},
		{uri: "https://compat.example/", wantErr: webhook.ErrTargetForbidden},
		{uri: "https://nowhere.example/", wantField: true},
	}
	for _, tt := range tests {
		t.Run(tt.uri, func(t *testing.T) {
			err := g.CheckTarget(context.Background(), tt.uri)
			var fe *webhook.FieldError
			switch {
			case tt.wantField:
				if !errors.As(err, &fe) || fe.Field != "uri" {
					t.Fatalf("CheckTarget = %v, want a FieldError on uri", err)
				}
			case tt.wantErr == nil && err != nil:
				t.Fatalf("CheckTarget = %v, want nil", err)
			case tt.wantErr != nil && !errors.Is(err, tt.wantErr):
				t.Fatalf("CheckTarget = %v, want %v", err, tt.wantErr)
			}
		})
	}
}

// The dial-time check refuses a forbidden address whatever the URI said, and lets an allowed one
// through: a real connection to a real server on loopback.
func TestControlAtDialTime(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(204) }))
	defer srv.Close()
	for _, tt := range []struct {
		name    string
		allowed []netip.Prefix
		wantErr bool
	}{
		{"loopback refused by default", nil, true},
		{"loopback allowed by configuration", prefixes("127.0.0.0/8"), false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d := &net.Dialer{Timeout: 2 * time.Second, Control: New(tt.allowed, nil).Control}
			c := &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
			resp, err := c.Get(srv.URL)
			if tt.wantErr {
				if err == nil || !errors.Is(err, webhook.ErrTargetForbidden) {
					t.Fatalf("GET = %v, want the guard's refusal", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != 204 {
				t.Fatalf("status %d", resp.StatusCode)
			}
		})
	}
}

// TestControlRefusesEmbeddedV4 is the dial-time half for the IPv6 forms that carry an IPv4
// address: the Control function (called with the address about to be connected, after any DNS
// and redirects) refuses them. Called directly: a real dial would send packets off loopback.
func TestControlRefusesEmbeddedV4(t *testing.T) {
	g := New(prefixes("127.0.0.0/8", "::1/128"), nil)
	for _, addr := range []string{"[::a9fe:a9fe]:80", "[::ffff:a9fe:a9fe]:80", "[::ffff:0:7f00:1]:80",
		"[64:ff9b::a9fe:a9fe]:443", "[64:ff9b:1::7f00:1]:443", "[2002:7f00:1::1]:80",
		"[2001:0:4136:e378:8000:63bf:3fff:fdd2]:80", "[fe80::5efe:a9fe:a9fe]:80", "[::7f00:1]:8080"} {
		t.Run(addr, func(t *testing.T) {
			if err := g.Control("tcp6", addr, nil); !errors.Is(err, webhook.ErrTargetForbidden) {
				t.Fatalf("Control(%s) = %v, want ErrTargetForbidden", addr, err)
			}
		})
	}
	if err := g.Control("tcp4", "127.0.0.1:8080", nil); err != nil {
		t.Fatalf("Control(127.0.0.1:8080) with loopback allowed = %v", err)
	}
}
