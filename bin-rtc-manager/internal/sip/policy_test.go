package sip_test

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"voipbin/bin-rtc-manager/internal/dialog"
	"voipbin/bin-rtc-manager/internal/sip"
	"voipbin/bin-rtc-manager/internal/siptest"
	"voipbin/pkg/apierr"
	"voipbin/pkg/callapi"
	"voipbin/pkg/testenv"
)

type fakeResolver map[string][]netip.Addr

func (r fakeResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	if a, ok := r[host]; ok {
		return a, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

// The address policy at dial time, with loopback allowed as in the local stack: a name resolving
// to a refused address, the trunk's host:port (by address or by a name) and the node's own
// listener are refused before anything is stored or sent; an allowed name is dialled at the
// address it resolved to; tel dialogs reach the trunk.
func TestDestinationPolicy(t *testing.T) {
	t.Parallel()
	trunk := startCarrier(t)
	loop := netip.MustParseAddr("127.0.0.1")
	res := fakeResolver{
		"private.example":     {netip.MustParseAddr("10.1.2.3")},
		"rebind.example":      {loop, netip.MustParseAddr("169.254.169.254")},
		"trunk-alias.example": {loop},
		"peer.example":        {loop},
	}
	ua := startUA(t, sip.Params{Policy: &sip.AddressPolicy{
		Allowed:  []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
		TrunkURI: "sip:{number}@" + trunk.Addr(), Resolver: res}})
	_, trunkPort, _ := net.SplitHostPort(trunk.Addr())
	_, ownPort, _ := net.SplitHostPort(ua.Addr())

	refused := []struct{ name, uri string }{
		{"a name resolving to a private address", "sip:bob@private.example:5060"},
		{"a name resolving to loopback and metadata", "sip:bob@rebind.example:5060"},
		{"a literal private address", "sip:bob@10.0.0.1"},
		{"the trunk's host:port", "sip:+1200000003@" + trunk.Addr()},
		{"the trunk's port through a name", "sip:+1200000003@trunk-alias.example:" + trunkPort},
		{"the trunk over TCP", "sip:+1200000003@" + trunk.Addr() + ";transport=tcp"},
		{"the node's own listener", "sip:voipbin@127.0.0.1:" + ownPort},
		{"an IPv4-compatible IPv6 address", "sip:bob@[::7f00:1]:5060"},
	}
	for _, tt := range refused {
		t.Run(tt.name, func(t *testing.T) {
			r := &recorder{}
			d := &dialog.Dialog{CallID: testenv.Name("call"), CustomerID: "c1", NodeID: "n1", State: dialog.StateCalling,
				RequestURI: tt.uri, DialTimeout: 5 * time.Second, MaxDuration: time.Minute}
			err := ua.Call(context.Background(), d, callapi.Address{Type: "tel", Target: "+15550001111"}, r)
			e, ok := apierr.As(err)
			if !ok || e.Status != apierr.InvalidArgument || !strings.Contains(e.Message, "not an allowed SIP destination") {
				t.Fatalf("Call(%s) = %v, want INVALID_ARGUMENT: not an allowed SIP destination", tt.uri, err)
			}
			if r.started != nil {
				t.Errorf("a refused dial was stored: %+v", r.started)
			}
		})
	}
	if trunk.Active() != 0 || ua.Active() != 0 {
		t.Fatalf("something was dialled: trunk has %d dialogs, the UA %d", trunk.Active(), ua.Active())
	}

	t.Run("an allowed name is dialled at its checked address", func(t *testing.T) {
		peer := siptest.StartSipp(t, "uas_busy.xml", false)
		_, port, _ := net.SplitHostPort(peer.Addr)
		r, _ := dial(t, ua, "sip:bob@peer.example:"+port, 10*time.Second, time.Minute)
		testenv.Eventually(t, 10*time.Second, "the busy answer", r.ended)
		if want := `ended 486 by remote reason ""`; !r.has(want) {
			t.Errorf("steps = %q, want %q", r.got(), want)
		}
		peer.Wait(t, 10*time.Second)
	})
	t.Run("tel reaches the trunk", func(t *testing.T) {
		r, _ := dialTo(t, ua, "sip:+1486000000@"+trunk.Addr(), true, 10*time.Second, time.Minute, 0)
		testenv.Eventually(t, 10*time.Second, "the busy answer", r.ended)
		if want := `ended 486 by remote reason ""`; !r.has(want) {
			t.Errorf("steps = %q, want %q", r.got(), want)
		}
	})
}
