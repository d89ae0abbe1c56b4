package dialog

import (
	"fmt"
	"testing"
	"time"

	"voipbin/pkg/apierr"
	"voipbin/pkg/callapi"
	"voipbin/pkg/rtcapi"
)

func TestTransitions(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 10, 0, 0, 0, time.UTC)
	ring := func(d *Dialog) []Emitted { return d.Ring(t0, 180) }
	answer := func(d *Dialog) []Emitted {
		return d.Answered(t0.Add(time.Second), Answer{SIPCode: 200, To: "<sip:b@h>;tag=x"})
	}
	end := func(e End) func(d *Dialog) []Emitted {
		return func(d *Dialog) []Emitted { return d.Ended(t0.Add(3*time.Second), e) }
	}
	tests := []struct {
		name      string
		steps     []func(*Dialog) []Emitted
		wantTypes []string
		wantState State
		wantCause int
	}{
		{"ring, answer, remote bye", []func(*Dialog) []Emitted{ring, answer, end(End{SIPCode: 200, By: "remote"})},
			[]string{rtcapi.EventRinging, rtcapi.EventAnswered, rtcapi.EventEnded}, StateEnded, 16},
		{"second ringing is silent", []func(*Dialog) []Emitted{ring, ring, ring}, []string{rtcapi.EventRinging}, StateRinging, 0},
		{"answer without ringing", []func(*Dialog) []Emitted{answer}, []string{rtcapi.EventAnswered}, StateAnswered, 0},
		{"ringing after answer does not move back", []func(*Dialog) []Emitted{answer, ring}, []string{rtcapi.EventAnswered}, StateAnswered, 0},
		{"busy", []func(*Dialog) []Emitted{ring, end(End{SIPCode: 486, By: "remote"})}, []string{rtcapi.EventRinging, rtcapi.EventEnded}, StateEnded, 17},
		{"ended once", []func(*Dialog) []Emitted{end(End{SIPCode: 503, By: "remote"}), end(End{SIPCode: 200, By: "local"}), answer},
			[]string{rtcapi.EventEnded}, StateEnded, 41},
		{"no answer", []func(*Dialog) []Emitted{ring, end(End{SIPCode: 487, By: "local", Reason: callapi.ReasonNoanswer})},
			[]string{rtcapi.EventRinging, rtcapi.EventEnded}, StateEnded, 19},
		{"local cancel", []func(*Dialog) []Emitted{ring, end(End{SIPCode: 487, By: "local"})},
			[]string{rtcapi.EventRinging, rtcapi.EventEnded}, StateEnded, 16},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := &Dialog{CallID: "c", NodeID: "n", State: StateCalling}
			var types []string
			for _, step := range tt.steps {
				for _, e := range step(d) {
					types = append(types, e.Type)
					if e.Sequence != int64(len(types)) {
						t.Errorf("%s has sequence %d, want %d", e.Type, e.Sequence, len(types))
					}
					if e.Data.CallID != "c" || e.Data.NodeID != "n" || e.Data.At.IsZero() {
						t.Errorf("event data %+v lacks call, node or time", e.Data)
					}
					if e.Type == rtcapi.EventEnded && e.Data.Cause != tt.wantCause {
						t.Errorf("cause = %d, want %d", e.Data.Cause, tt.wantCause)
					}
				}
			}
			if fmt.Sprint(types) != fmt.Sprint(tt.wantTypes) {
				t.Errorf("events = %v, want %v", types, tt.wantTypes)
			}
			if d.State != tt.wantState {
				t.Errorf("state = %s, want %s", d.State, tt.wantState)
			}
		})
	}
}

func TestCauseFromSIP(t *testing.T) {
	tests := map[int]int{0: 102, 200: 16, 302: 23, 403: 21, 404: 1, 408: 102, 480: 18, 486: 17, 487: 127, 488: 65,
		499: 31, 500: 41, 503: 41, 504: 102, 580: 38, 600: 17, 603: 21, 699: 31}
	for code, want := range tests {
		if got := CauseFromSIP(code); got != want {
			t.Errorf("CauseFromSIP(%d) = %d, want %d", code, got, want)
		}
	}
}

func TestTarget(t *testing.T) {
	const trunk = "sip:{number}@127.0.0.1:5080"
	tests := []struct {
		name string
		dst  callapi.Address
		want string
		err  bool
	}{
		{"tel through the trunk", callapi.Address{Type: "tel", Target: "+15550001111"}, "sip:+15550001111@127.0.0.1:5080", false},
		{"sip direct", callapi.Address{Type: "sip", Target: "alice@example.com:5070"}, "sip:alice@example.com:5070", false},
		{"sip with scheme", callapi.Address{Type: "sip", Target: "sip:alice@example.com"}, "", true},
		{"sip name with CR LF", callapi.Address{Type: "sip", Target: "alice@example.com", Name: "x\r\nVia: y"}, "", true},
		{"tel too short", callapi.Address{Type: "tel", Target: "+1555"}, "", true},
		{"tel without plus", callapi.Address{Type: "tel", Target: "15550001111"}, "", true},
		{"tel with letters", callapi.Address{Type: "tel", Target: "+1555000111a"}, "", true},
		{"sip without host", callapi.Address{Type: "sip", Target: "alice"}, "", true},
		{"sip header injection", callapi.Address{Type: "sip", Target: "a@b\r\nVia: x"}, "", true},
		{"sip with spaces", callapi.Address{Type: "sip", Target: "a b@c"}, "", true},
		{"unknown type", callapi.Address{Type: "fax", Target: "+15550001111"}, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Target(tt.dst, trunk)
			if (err != nil) != tt.err || got != tt.want {
				t.Fatalf("Target() = %q, %v; want %q, error %v", got, err, tt.want, tt.err)
			}
			if err != nil {
				if e, ok := apierr.As(err); !ok || e.Status != apierr.InvalidArgument {
					t.Errorf("error %v is not INVALID_ARGUMENT", err)
				}
			}
		})
	}
}

func TestValidate(t *testing.T) {
	ok := rtcapi.DialRequest{CallID: "c1", CustomerID: "cust", Destination: callapi.Address{Type: "tel", Target: "+15550001111"}}
	tests := []struct {
		name  string
		edit  func(*rtcapi.DialRequest)
		field string
	}{
		{"valid", func(*rtcapi.DialRequest) {}, ""},
		{"no call id", func(r *rtcapi.DialRequest) { r.CallID = "" }, "call_id"},
		{"call id with slash", func(r *rtcapi.DialRequest) { r.CallID = "a/b" }, "call_id"},
		{"customer with wildcard", func(r *rtcapi.DialRequest) { r.CustomerID = "a.#" }, "customer_id"},
		{"negative timeout", func(r *rtcapi.DialRequest) { r.DialTimeout = -1 }, "dial_timeout"},
		{"huge max duration", func(r *rtcapi.DialRequest) { r.MaxDuration = 1 << 30 }, "max_duration"},
		{"bad source", func(r *rtcapi.DialRequest) { r.Source = callapi.Address{Type: "sip", Target: "x"} }, "source.target"},
		{"source name with CR LF", func(r *rtcapi.DialRequest) {
			r.Source = callapi.Address{Type: "tel", Target: "+15550001111", Name: "Evil\"\r\nRoute: <sip:x>"}
		}, "source.name"},
		{"destination name with NUL", func(r *rtcapi.DialRequest) { r.Destination.Name = "a\x00" }, "destination.name"},
		{"bad destination", func(r *rtcapi.DialRequest) { r.Destination.Target = "+1" }, "destination.target"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := ok
			tt.edit(&r)
			err := Validate(r)
			if tt.field == "" {
				if err != nil {
					t.Fatalf("Validate() = %v", err)
				}
				return
			}
			e, isAPI := apierr.As(err)
			if !isAPI || e.Status != apierr.InvalidArgument || len(e.Details) == 0 || e.Details[0]["field"] != tt.field {
				t.Errorf("Validate() = %v, want INVALID_ARGUMENT on %s", err, tt.field)
			}
		})
	}
}
