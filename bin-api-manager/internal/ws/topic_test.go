package ws

import (
	"strings"
	"testing"

	"voipbin/pkg/apierr"
	"voipbin/pkg/event"
)

const (
	custA = "5e4a0000-0000-4000-8000-00000000000a"
	custB = "5e4a0000-0000-4000-8000-00000000000b"
	callX = "ca110000-0000-4000-8000-0000000000aa"
	callY = "ca110000-0000-4000-8000-0000000000bb"
)

func TestParseTopic(t *testing.T) {
	tests := []struct {
		name      string
		in        string
		want      Topic
		canonical string
		wantErr   string // substring of the message; reason is always INVALID_TOPIC
	}{
		{name: "prefix form", in: "customer_id:" + custA + ":call",
			want: Topic{Customer: custA, Resource: "call"}, canonical: "customer_id:" + custA + ":call"},
		{name: "wildcard resource id is the prefix form", in: "customer_id:" + custA + ":call:*",
			want: Topic{Customer: custA, Resource: "call"}, canonical: "customer_id:" + custA + ":call"},
		{name: "one call", in: "customer_id:" + custA + ":call:" + callX,
			want: Topic{Customer: custA, Resource: "call", ResourceID: callX}, canonical: "customer_id:" + custA + ":call:" + callX},
		{name: "every resource", in: "customer_id:" + custA + ":*",
			want: Topic{Customer: custA, Resource: "*"}, canonical: "customer_id:" + custA + ":*"},
		{name: "every customer", in: "customer_id:*:call:*",
			want: Topic{Customer: "*", Resource: "call"}, canonical: "customer_id:*:call"},
		{name: "star scope", in: "*:" + custA + ":billing_account",
			want: Topic{Customer: custA, Resource: "billing_account"}, canonical: "customer_id:" + custA + ":billing_account"},
		{name: "empty", in: "", wantErr: "must be customer_id:"},
		{name: "two segments", in: "customer_id:" + custA, wantErr: "must be customer_id:"},
		{name: "five segments", in: "customer_id:" + custA + ":call:" + callX + ":x", wantErr: "must be customer_id:"},
		{name: "other scope", in: "user_id:" + custA + ":call", wantErr: "scope must be"},
		{name: "empty customer", in: "customer_id::call", wantErr: "customer id"},
		{name: "routing-key characters in customer", in: "customer_id:a.b#:call", wantErr: "customer id"},
		{name: "uppercase resource", in: "customer_id:" + custA + ":Call", wantErr: "resource must"},
		{name: "empty resource", in: "customer_id:" + custA + ":", wantErr: "resource must"},
		{name: "bad resource id", in: "customer_id:" + custA + ":call:a b", wantErr: "resource id"},
		{name: "empty resource id", in: "customer_id:" + custA + ":call:", wantErr: "resource id"},
		{name: "too long", in: "customer_id:" + custA + ":call:" + strings.Repeat("x", 300), wantErr: "longer than 256"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseTopic(tt.in)
			if tt.wantErr != "" {
				e, ok := apierr.As(err)
				if !ok || e.Reason != ReasonInvalidTopic || e.Status != apierr.InvalidArgument || !strings.Contains(e.Message, tt.wantErr) {
					t.Fatalf("ParseTopic(%q) error = %v, want INVALID_ARGUMENT/INVALID_TOPIC mentioning %q", tt.in, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseTopic(%q) error = %v", tt.in, err)
			}
			if got != tt.want {
				t.Errorf("ParseTopic(%q) = %+v, want %+v", tt.in, got, tt.want)
			}
			if got.String() != tt.canonical {
				t.Errorf("String() = %q, want %q", got.String(), tt.canonical)
			}
		})
	}
}

func TestTopicAllowedFor(t *testing.T) {
	tests := []struct {
		name  string
		topic string
		id    Identity
		want  bool
	}{
		{name: "own customer", topic: "customer_id:" + custA + ":call", id: Identity{CustomerID: custA}, want: true},
		{name: "own call", topic: "customer_id:" + custA + ":call:" + callX, id: Identity{CustomerID: custA}, want: true},
		{name: "other customer", topic: "customer_id:" + custB + ":call", id: Identity{CustomerID: custA}, want: false},
		{name: "every customer, not superadmin", topic: "customer_id:*:call", id: Identity{CustomerID: custA}, want: false},
		{name: "no customer, not superadmin", topic: "customer_id:" + custA + ":call", id: Identity{}, want: false},
		{name: "superadmin, any customer", topic: "customer_id:" + custB + ":call", id: Identity{Superadmin: true}, want: true},
		{name: "superadmin, every customer", topic: "customer_id:*:*", id: Identity{Superadmin: true}, want: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			topic, err := ParseTopic(tt.topic)
			if err != nil {
				t.Fatal(err)
			}
			if got := topic.AllowedFor(tt.id); got != tt.want {
				t.Errorf("AllowedFor(%+v) = %v, want %v", tt.id, got, tt.want)
			}
		})
	}
}

func TestTopicMatches(t *testing.T) {
	callAX := event.Event{CustomerID: custA, ResourceType: "call", ResourceID: callX, EventType: "call.created"}
	callAY := event.Event{CustomerID: custA, ResourceType: "call", ResourceID: callY, EventType: "call.ended"}
	callBX := event.Event{CustomerID: custB, ResourceType: "call", ResourceID: callX, EventType: "call.created"}
	billingA := event.Event{CustomerID: custA, ResourceType: "billing_account", ResourceID: "acc", EventType: "billing.charged"}
	noType := event.Event{CustomerID: custA, EventType: "odd"}
	all := map[string]event.Event{"callAX": callAX, "callAY": callAY, "callBX": callBX, "billingA": billingA, "noType": noType}

	tests := []struct {
		topic string
		want  []string
	}{
		{"customer_id:" + custA + ":call", []string{"callAX", "callAY"}},
		{"customer_id:" + custA + ":call:*", []string{"callAX", "callAY"}},
		{"customer_id:" + custA + ":call:" + callX, []string{"callAX"}},
		{"customer_id:" + custA + ":*", []string{"callAX", "callAY", "billingA"}},
		{"customer_id:" + custA + ":billing_account", []string{"billingA"}},
		{"customer_id:" + custA + ":billing", []string{"billingA"}},
		{"customer_id:*:call:" + callX, []string{"callAX", "callBX"}},
		{"customer_id:*:*", []string{"callAX", "callAY", "callBX", "billingA"}},
		{"customer_id:" + custB + ":billing", nil},
		{"customer_id:" + custA + ":sms", nil},
	}
	for _, tt := range tests {
		t.Run(tt.topic, func(t *testing.T) {
			topic, err := ParseTopic(tt.topic)
			if err != nil {
				t.Fatal(err)
			}
			want := map[string]bool{}
			for _, n := range tt.want {
				want[n] = true
			}
			for name, ev := range all {
				if got := topic.Matches(ev); got != want[name] {
					t.Errorf("Matches(%s) = %v, want %v", name, got, want[name])
				}
			}
		})
	}
}

func TestBindingKey(t *testing.T) {
	if got, want := bindingKey(custA), "customer_id."+custA+".#"; got != want {
		t.Errorf("bindingKey(customer) = %q, want %q", got, want)
	}
	if got, want := bindingKey("*"), "customer_id.*.#"; got != want {
		t.Errorf("bindingKey(*) = %q, want %q", got, want)
	}
}
