package call

import (
	"errors"
	"strings"
	"testing"
	"time"

	"voipbin/pkg/callapi"
)

func TestValidateAddress(t *testing.T) {
	tel := func(s string) callapi.Address { return callapi.Address{Type: "tel", Target: s} }
	sip := func(s string) callapi.Address { return callapi.Address{Type: "sip", Target: s} }
	tests := []struct {
		name      string
		a         callapi.Address
		wantField string // "" means valid
	}{
		{"tel 7 digits", tel("+1234567"), ""},
		{"tel 15 digits", tel("+123456789012345"), ""},
		{"tel 6 digits", tel("+123456"), "x.target"},
		{"tel 16 digits", tel("+1234567890123456"), "x.target"},
		{"tel without plus", tel("15551234567"), "x.target"},
		{"tel with spaces", tel("+1 555 123 4567"), "x.target"},
		{"tel with trailing newline", tel("+15551234567\n"), "x.target"},
		{"tel empty", tel(""), "x.target"},
		{"sip user@host", sip("alice@example.com"), ""},
		{"sip user@host:port", sip("alice@example.com:5060"), ""},
		{"sip user@ipv4:port", sip("1001@127.0.0.1:5080"), ""},
		{"sip user@[ipv6]:port", sip("bob@[::1]:5060"), ""},
		{"sip phone user", sip("+15551234567@trunk.example.net"), ""},
		{"sip without user", sip("@example.com"), "x.target"},
		{"sip without host", sip("alice@"), "x.target"},
		{"sip without @", sip("example.com"), "x.target"},
		{"sip with scheme", sip("sip:alice@example.com"), "x.target"},
		{"sip port 0", sip("alice@example.com:0"), "x.target"},
		{"sip port 70000", sip("alice@example.com:70000"), "x.target"},
		{"sip bad ipv6", sip("bob@[zz::1]"), "x.target"},
		{"sip host with space", sip("alice@exa mple.com"), "x.target"},
		{"sip two @", sip("a@b@c"), "x.target"},
		{"sip too long", sip("a@" + strings.Repeat("b", 300) + ".com"), "x.target"},
		{"missing type", callapi.Address{Target: "+15551234567"}, "x.type"},
		{"unknown type", callapi.Address{Type: "pstn", Target: "+15551234567"}, "x.type"},
		{"name too long", callapi.Address{Type: "tel", Target: "+15551234567", Name: strings.Repeat("n", 256)}, "x.name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateAddress("x", tt.a)
			if tt.wantField == "" {
				if err != nil {
					t.Fatalf("ValidateAddress(%+v) = %v, want nil", tt.a, err)
				}
				return
			}
			var ie *InvalidError
			if !errors.As(err, &ie) || ie.Field != tt.wantField {
				t.Fatalf("ValidateAddress(%+v) = %v, want an InvalidError on %s", tt.a, err, tt.wantField)
			}
		})
	}
}

func TestValidateCreate(t *testing.T) {
	valid := func() callapi.CreateRequest {
		return callapi.CreateRequest{CustomerID: "5e4a0000-0000-4000-8000-000000000001",
			Source:       callapi.Address{Type: "tel", Target: "+15550000001"},
			Destinations: []callapi.Address{{Type: "tel", Target: "+15550000002"}, {Type: "sip", Target: "bob@example.com"}}}
	}
	tests := []struct {
		name      string
		change    func(*callapi.CreateRequest)
		wantField string
	}{
		{"valid", func(*callapi.CreateRequest) {}, ""},
		{"valid with metadata and timeout", func(r *callapi.CreateRequest) { r.Metadata = map[string]any{"a": 1}; r.Timeout = 30 }, ""},
		{"no customer", func(r *callapi.CreateRequest) { r.CustomerID = "" }, "customer_id"},
		{"customer not a uuid", func(r *callapi.CreateRequest) { r.CustomerID = "cus-1" }, "customer_id"},
		{"bad source", func(r *callapi.CreateRequest) { r.Source.Target = "123" }, "source.target"},
		{"no destinations", func(r *callapi.CreateRequest) { r.Destinations = nil }, "destinations"},
		{"too many destinations", func(r *callapi.CreateRequest) {
			r.Destinations = make([]callapi.Address, MaxDestinations+1)
			for i := range r.Destinations {
				r.Destinations[i] = callapi.Address{Type: "tel", Target: "+15550000002"}
			}
		}, "destinations"},
		{"second destination bad", func(r *callapi.CreateRequest) { r.Destinations[1].Target = "nobody" }, "destinations[1].target"},
		{"metadata too big", func(r *callapi.CreateRequest) {
			r.Metadata = map[string]any{"x": strings.Repeat("y", MaxMetadataBytes)}
		}, "metadata"},
		{"metadata not JSON", func(r *callapi.CreateRequest) { r.Metadata = map[string]any{"f": func() {}} }, "metadata"},
		{"negative timeout", func(r *callapi.CreateRequest) { r.Timeout = -1 }, "timeout"},
		{"timeout too long", func(r *callapi.CreateRequest) { r.Timeout = MaxRequestTimeout + 1 }, "timeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := valid()
			tt.change(&req)
			err := ValidateCreate(req)
			if tt.wantField == "" {
				if err != nil {
					t.Fatalf("ValidateCreate = %v, want nil", err)
				}
				return
			}
			var ie *InvalidError
			if !errors.As(err, &ie) || ie.Field != tt.wantField {
				t.Fatalf("ValidateCreate = %v, want an InvalidError on %s", err, tt.wantField)
			}
		})
	}
}

func TestFilterOf(t *testing.T) {
	cur := Cursor{TMCreate: t0, ID: "c0a80000-0000-4000-8000-000000000001"}
	tests := []struct {
		name       string
		q          callapi.ListQuery
		want       Filter
		wantCursor bool
		wantField  string
	}{
		{"defaults: cursor paging", callapi.ListQuery{}, Filter{Limit: DefaultPageSize}, true, ""},
		{"page size and token", callapi.ListQuery{PageSize: 10, PageToken: cur.Token()}, Filter{Limit: 10, After: &cur}, true, ""},
		{"limit and offset", callapi.ListQuery{Limit: 5, Offset: 10}, Filter{Limit: 5, Offset: 10}, false, ""},
		{"offset alone", callapi.ListQuery{Offset: 10}, Filter{Limit: DefaultPageSize, Offset: 10}, false, ""},
		{"filters", callapi.ListQuery{CustomerID: "5e4a0000-0000-4000-8000-000000000001", Status: "hangup", Direction: "outgoing"},
			Filter{CustomerID: "5e4a0000-0000-4000-8000-000000000001", Status: hangup, Direction: "outgoing", Limit: DefaultPageSize}, true, ""},
		{"page size too big", callapi.ListQuery{PageSize: 101}, Filter{}, false, "page_size"},
		{"negative page size", callapi.ListQuery{PageSize: -1}, Filter{}, false, "page_size"},
		{"limit too big", callapi.ListQuery{Limit: 1000}, Filter{}, false, "limit"},
		{"negative offset", callapi.ListQuery{Offset: -1}, Filter{}, false, "offset"},
		{"mixed styles", callapi.ListQuery{PageSize: 10, Offset: 10}, Filter{}, false, "page_token"},
		{"bad token", callapi.ListQuery{PageToken: "garbage!"}, Filter{}, false, "page_token"},
		{"token of other JSON", callapi.ListQuery{PageToken: "e30"}, Filter{}, false, "page_token"},
		{"bad status", callapi.ListQuery{Status: "busy"}, Filter{}, false, "status"},
		{"bad direction", callapi.ListQuery{Direction: "sideways"}, Filter{}, false, "direction"},
		{"bad customer", callapi.ListQuery{CustomerID: "me"}, Filter{}, false, "customer_id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, cursor, err := filterOf(tt.q)
			if tt.wantField != "" {
				var ie *InvalidError
				if !errors.As(err, &ie) || ie.Field != tt.wantField {
					t.Fatalf("filterOf = %v, want an InvalidError on %s", err, tt.wantField)
				}
				return
			}
			if err != nil {
				t.Fatalf("filterOf = %v", err)
			}
			sameAfter := (got.After == nil) == (tt.want.After == nil) &&
				(got.After == nil || (got.After.ID == tt.want.After.ID && got.After.TMCreate.Equal(tt.want.After.TMCreate)))
			got.After, tt.want.After = nil, nil
			if got != tt.want || !sameAfter || cursor != tt.wantCursor {
				t.Fatalf("filterOf = %+v (cursor %v), want %+v (cursor %v)", got, cursor, tt.want, tt.wantCursor)
			}
		})
	}
}

func TestTokenRoundTrip(t *testing.T) {
	c := Cursor{TMCreate: t0.Add(123456 * time.Microsecond), ID: "c0a80000-0000-4000-8000-000000000001"}
	got, err := ParseToken(c.Token())
	if err != nil || got.ID != c.ID || !got.TMCreate.Equal(c.TMCreate) {
		t.Fatalf("ParseToken(Token()) = %+v, %v; want %+v", got, err, c)
	}
}
