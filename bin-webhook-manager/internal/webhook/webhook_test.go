package webhook

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestSpecNormalize(t *testing.T) {
	valid := Spec{Name: "ops", URI: "https://example.com/hook", EventTypes: []string{"call.created"}}
	with := func(f func(*Spec)) Spec { s := valid; f(&s); return s }
	tests := []struct {
		name      string
		spec      Spec
		want      Spec   // checked when wantField is ""
		wantField string // the field a FieldError must name
	}{
		{name: "defaults method to POST", spec: valid,
			want: Spec{Name: "ops", URI: "https://example.com/hook", Method: "POST", EventTypes: []string{"call.created"}}},
		{name: "method case and dedupe", spec: with(func(s *Spec) { s.Method = "put"; s.EventTypes = []string{"call.*", "*", "call.*"} }),
			want: Spec{Name: "ops", URI: "https://example.com/hook", Method: "PUT", EventTypes: []string{"call.*", "*"}}},
		{name: "a type not emitted yet is accepted", spec: with(func(s *Spec) { s.EventTypes = []string{"sms.sent"} }),
			want: Spec{Name: "ops", URI: "https://example.com/hook", Method: "POST", EventTypes: []string{"sms.sent"}}},
		{name: "http with port and path", spec: with(func(s *Spec) { s.URI = "http://127.0.0.1:8080/x?y=1" }),
			want: Spec{Name: "ops", URI: "http://127.0.0.1:8080/x?y=1", Method: "POST", EventTypes: []string{"call.created"}}},
		{name: "no uri", spec: with(func(s *Spec) { s.URI = "" }), wantField: "uri"},
		{name: "ftp uri", spec: with(func(s *Spec) { s.URI = "ftp://example.com/" }), wantField: "uri"},
		{name: "relative uri", spec: with(func(s *Spec) { s.URI = "/hook" }), wantField: "uri"},
		{name: "uri without host", spec: with(func(s *Spec) { s.URI = "http:///x" }), wantField: "uri"},
		{name: "uri with fragment", spec: with(func(s *Spec) { s.URI = "https://example.com/#x" }), wantField: "uri"},
		{name: "uri too long", spec: with(func(s *Spec) { s.URI = "https://example.com/" + strings.Repeat("a", MaxURILength) }), wantField: "uri"},
		{name: "bad method", spec: with(func(s *Spec) { s.Method = "DELETE" }), wantField: "method"},
		{name: "no event types", spec: with(func(s *Spec) { s.EventTypes = nil }), wantField: "event_types"},
		{name: "malformed event type", spec: with(func(s *Spec) { s.EventTypes = []string{"call.created", "Call Ended"} }), wantField: "event_types[1]"},
		{name: "star in the middle", spec: with(func(s *Spec) { s.EventTypes = []string{"call.*.x"} }), wantField: "event_types[0]"},
		{name: "empty event type", spec: with(func(s *Spec) { s.EventTypes = []string{""} }), wantField: "event_types[0]"},
		{name: "bad status", spec: with(func(s *Spec) { s.Status = "paused" }), wantField: "status"},
		{name: "name too long", spec: with(func(s *Spec) { s.Name = strings.Repeat("é", MaxNameLength+1) }), wantField: "name"},
		{name: "name of only spaces", spec: with(func(s *Spec) { s.Name = "   \t " }), wantField: "name"},
		{name: "name trimmed", spec: with(func(s *Spec) { s.Name = "  ops  " }),
			want: Spec{Name: "ops", URI: "https://example.com/hook", Method: "POST", EventTypes: []string{"call.created"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.spec.Normalize()
			if tt.wantField != "" {
				var fe *FieldError
				if !errors.As(err, &fe) || fe.Field != tt.wantField {
					t.Fatalf("Normalize() error = %v, want a FieldError on %s", err, tt.wantField)
				}
				return
			}
			if err != nil {
				t.Fatalf("Normalize() error = %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("Normalize() = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestWants(t *testing.T) {
	tests := []struct {
		types  []string
		status string
		event  string
		want   bool
	}{
		{[]string{"call.created"}, StatusEnabled, "call.created", true},
		{[]string{"call.created"}, StatusEnabled, "call.ended", false},
		{[]string{"call.*"}, StatusEnabled, "call.ended", true},
		{[]string{"call.*"}, StatusEnabled, "billing.charged", false},
		{[]string{"*"}, StatusEnabled, "billing.charged", true},
		{[]string{"*"}, StatusDisabled, "billing.charged", false},
		{[]string{"sms.sent", "billing.*"}, StatusEnabled, "billing.account_updated", true},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%v %s %s", tt.types, tt.status, tt.event), func(t *testing.T) {
			w := Webhook{EventTypes: tt.types, Status: tt.status}
			if got := w.Wants(tt.event); got != tt.want {
				t.Fatalf("Wants(%q) = %v, want %v", tt.event, got, tt.want)
			}
		})
	}
}

// The Standard Webhooks specification's own example: its secret, id, timestamp and payload sign
// to this published signature, so a receiver using any Standard Webhooks library verifies ours.
func TestStandardSignatureMatchesTheSpecificationExample(t *testing.T) {
	secret := Secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
	got := StandardSignature(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", []byte(`{"test": 2432232314}`))
	if want := "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="; got != want {
		t.Fatalf("StandardSignature = %s, want %s", got, want)
	}
}

func TestSignature(t *testing.T) {
	secret := Secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
	// Computed independently: Python's hmac.new(secret.encode(), body, sha256).hexdigest().
	want := "80ec8a89ce3cd22133a1066caecb4d04fea7467657c8514d717ec42c38a5c94c"
	if got := Signature(secret, []byte(`{"test": 2432232314}`)); got != want {
		t.Fatalf("Signature = %s, want %s", got, want)
	}
	h := SignatureHeaders(secret, "e1", time.Unix(1614265330, 0), []byte(`{"test": 2432232314}`))
	wantHeaders := map[string]string{
		"Content-Type":        "application/json",
		"X-VoIPBIN-Signature": want,
		"webhook-id":          "e1",
		"webhook-timestamp":   "1614265330",
		"webhook-signature":   StandardSignature(secret, "e1", "1614265330", []byte(`{"test": 2432232314}`)),
	}
	if !reflect.DeepEqual(h, wantHeaders) {
		t.Fatalf("SignatureHeaders = %v, want %v", h, wantHeaders)
	}
}

func TestNewSecret(t *testing.T) {
	a, err := NewSecret()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := NewSecret()
	if a == b {
		t.Fatal("two secrets are equal")
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(a.Reveal(), "whsec_"))
	if !strings.HasPrefix(a.Reveal(), "whsec_") || err != nil || len(raw) != 32 {
		t.Fatalf("secret %q is not whsec_ + base64 of 32 bytes", a.Reveal())
	}
}

func TestSecretStaysOutOfLogsAndFormatting(t *testing.T) {
	s, _ := NewSecret()
	var buf bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&buf, nil))
	log.Info("x", "secret", s, "webhook", Webhook{ID: "w1", URI: "https://user:pass@example.com/x", Secret: s})
	out := buf.String() + fmt.Sprintf("%v %s %+v", s, s, Webhook{Secret: s})
	for _, leak := range []string{s.Reveal(), strings.TrimPrefix(s.Reveal(), "whsec_"), "pass"} {
		if strings.Contains(out, leak) {
			t.Fatalf("output leaks %q: %s", leak, out)
		}
	}
}
