package sip_test

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"voipbin/bin-rtc-manager/internal/dialog"
	"voipbin/bin-rtc-manager/internal/siptest"
	"voipbin/pkg/callapi"
	"voipbin/pkg/testenv"
)

// receivedInvite is the first INVITE in a sipp message log, as it arrived.
func receivedInvite(t *testing.T, log string) string {
	t.Helper()
	i := strings.Index(log, "INVITE sip:")
	if i < 0 {
		t.Fatalf("no INVITE in the peer's log:\n%s", log)
	}
	msg := log[i:]
	if j := strings.Index(msg, "\r\n\r\n"); j >= 0 {
		msg = msg[:j]
	}
	return msg
}

// A display name built to add headers (quote, CR LF, NUL, a trailing backslash) reaches a real SIP
// peer as one quoted-string: no header line is added, for a sip destination and for a tel number
// through the trunk. The UA is called directly, as if every check before it had been bypassed.
func TestDisplayNameCannotInjectHeaders(t *testing.T) {
	t.Parallel()
	const evil = "Mallory\" <sip:boss@evil.example>\r\nP-Asserted-Identity: <sip:boss@evil.example>\r\nX-Injected: 1\x00\r\nX: \\"
	const wantFrom = `From: "Mallory\" <sip:boss@evil.example>P-Asserted-Identity: <sip:boss@evil.example>X-Injected: 1X: \\" <sip:+15550001111@`
	for _, tt := range []struct {
		name string
		dst  func(peer string) callapi.Address
		uri  func(peer string) string // the trunk URI
	}{
		{"sip destination", func(peer string) callapi.Address { return callapi.Address{Type: "sip", Target: "bob@" + peer} }, nil},
		{"tel through the trunk", func(string) callapi.Address { return callapi.Address{Type: "tel", Target: "+15550002222"} },
			func(peer string) string { return "sip:{number}@" + peer }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ua := newUA(t, "", "")
			peer := siptest.StartSippCapture(t, "uas_busy.xml", false)
			trunk := "sip:{number}@127.0.0.1:9"
			if tt.uri != nil {
				trunk = tt.uri(peer.Addr)
			}
			target, err := dialog.Target(tt.dst(peer.Addr), trunk)
			if err != nil {
				t.Fatal(err)
			}
			r := &recorder{}
			d := &dialog.Dialog{CallID: testenv.Name("call"), CustomerID: "c1", NodeID: "n1", State: dialog.StateCalling,
				RequestURI: target, DialTimeout: 10 * time.Second, MaxDuration: time.Minute}
			src := callapi.Address{Type: "tel", Target: "+15550001111", Name: evil}
			if err := ua.Call(context.Background(), d, src, r); err != nil {
				t.Fatalf("Call: %v", err)
			}
			testenv.Eventually(t, 10*time.Second, "the dial to end", r.ended)
			if want := `ended 486 by remote reason ""`; !r.has(want) {
				t.Errorf("steps = %q, want %q: the peer did not take the INVITE as valid", r.got(), want)
			}
			peer.Wait(t, 10*time.Second)

			inv := receivedInvite(t, peer.Messages(t))
			lines := strings.Split(inv, "\r\n")
			injected := regexp.MustCompile(`(?i)^(P-Asserted-Identity|X-Injected|X)\s*:`)
			froms := 0
			for _, l := range lines {
				if injected.MatchString(l) {
					t.Errorf("injected header line %q in the INVITE:\n%s", l, inv)
				}
				if strings.ContainsAny(l, "\r\n\x00") {
					t.Errorf("control character in line %q", l)
				}
				if strings.HasPrefix(l, "From:") {
					froms++
					if !strings.HasPrefix(l, wantFrom) {
						t.Errorf("From line\n  %s\nwant prefix\n  %s", l, wantFrom)
					}
				}
			}
			if froms != 1 {
				t.Errorf("%d From lines in the INVITE:\n%s", froms, inv)
			}
		})
	}
}
