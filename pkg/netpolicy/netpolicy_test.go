package netpolicy

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"testing"
)

func prefixes(s ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range s {
		out = append(out, netip.MustParsePrefix(p))
	}
	return out
}

func TestCheck(t *testing.T) {
	loop := prefixes("127.0.0.0/8", "::1/128")
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
		{"172.32.0.1", nil, true},
		{"192.168.1.1", nil, false},
		{"169.254.169.254", nil, false},
		{"169.254.1.1", nil, false},
		{"fe80::1", nil, false},
		{"fc00::1", nil, false},
		{"fd00:ec2::254", nil, false},
		{"100.64.0.1", nil, false},
		{"0.0.0.0", nil, false},
		{"::", nil, false},
		{"224.0.0.1", nil, false},
		{"ff02::1", nil, false},
		{"255.255.255.255", nil, false},
		{"::ffff:127.0.0.1", nil, false},                     // IPv4-mapped loopback
		{"::ffff:10.0.0.1", nil, false},                      // IPv4-mapped private
		{"::ffff:93.184.216.34", nil, true},                  // IPv4-mapped public: it is that IPv4 address
		{"::a9fe:a9fe", nil, false},                          // IPv4-compatible 169.254.169.254
		{"::5db8:d822", nil, false},                          // IPv4-compatible public: refused as a form
		{"::ffff:0:a00:1", nil, false},                       // SIIT of 10.0.0.1
		{"64:ff9b::a00:1", nil, false},                       // NAT64 of 10.0.0.1
		{"64:ff9b::5db8:d822", nil, false},                   // NAT64 of a public address: refused as a form
		{"64:ff9b:1::a00:1", nil, false},                     // local-use NAT64
		{"2002:a9fe:a9fe::1", nil, false},                    // 6to4
		{"2001:0:4136:e378:8000:63bf:3fff:fdd2", nil, false}, // Teredo
		{"2001:db9::5efe:a00:1", nil, false},                 // ISATAP of 10.0.0.1
		{"2001:db9::200:5efe:5db8:d822", nil, false},         // ISATAP (global bit) of a public address
		{"127.0.0.1", loop, true},
		{"::ffff:127.0.0.1", loop, true},
		{"::1", loop, true},
		{"10.0.0.1", loop, false},
		{"169.254.169.254", loop, false},
		{"10.0.0.1", prefixes("10.0.0.0/8"), true},
	}
	for _, tt := range tests {
		t.Run(tt.ip, func(t *testing.T) {
			err := New(Options{Allowed: tt.allowed}).Check(netip.MustParseAddr(tt.ip))
			if tt.wantOK && err != nil {
				t.Fatalf("Check(%s) = %v, want allowed", tt.ip, err)
			}
			if !tt.wantOK && !errors.Is(err, ErrForbidden) {
				t.Fatalf("Check(%s) = %v, want ErrForbidden", tt.ip, err)
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

func TestResolve(t *testing.T) {
	res := fakeResolver{
		"public.example": {netip.MustParseAddr("93.184.216.34")},
		"rebind.example": {netip.MustParseAddr("93.184.216.34"), netip.MustParseAddr("10.0.0.5")},
		"local.example":  {netip.MustParseAddr("127.0.0.1")},
		"trunk.example":  {netip.MustParseAddr("127.0.0.1")},
	}
	p := New(Options{Allowed: prefixes("127.0.0.0/8"), Resolver: res,
		Denied: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:5080"), netip.MustParseAddrPort("[::ffff:127.0.0.1]:5060")}})
	tests := []struct {
		host    string
		port    uint16
		want    string
		wantErr error
	}{
		{host: "public.example", port: 5060, want: "93.184.216.34:5060"},
		{host: "93.184.216.34", port: 5070, want: "93.184.216.34:5070"},
		{host: "[::ffff:93.184.216.34]", port: 5070, want: "93.184.216.34:5070"},
		{host: "local.example", port: 5070, want: "127.0.0.1:5070"}, // loopback allowed here
		{host: "127.0.0.1", port: 5070, want: "127.0.0.1:5070"},
		{host: "rebind.example", port: 5060, wantErr: ErrForbidden}, // every address must pass
		{host: "10.0.0.5", port: 5060, wantErr: ErrForbidden},
		{host: "127.0.0.1", port: 5080, wantErr: ErrForbidden},     // the trunk, though loopback is allowed
		{host: "trunk.example", port: 5080, wantErr: ErrForbidden}, // the trunk through a name
		{host: "[::ffff:127.0.0.1]", port: 5080, wantErr: ErrForbidden},
		{host: "127.0.0.1", port: 5060, wantErr: ErrForbidden}, // an own listener
		{host: "nowhere.example", port: 5060, wantErr: ErrUnresolvable},
	}
	for _, tt := range tests {
		t.Run(tt.host, func(t *testing.T) {
			got, err := p.Resolve(context.Background(), tt.host, tt.port)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Resolve(%s, %d) = %v, %v; want %v", tt.host, tt.port, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || len(got) != 1 || got[0].String() != tt.want {
				t.Fatalf("Resolve(%s, %d) = %v, %v; want %s", tt.host, tt.port, got, err, tt.want)
			}
		})
	}
}
