package callapi

import (
	"strings"
	"testing"

	"voipbin/pkg/apierr"
)

// fieldOf is the field an INVALID_ARGUMENT error names, "" for nil; it fails on any other error.
func fieldOf(t *testing.T, err error) string {
	t.Helper()
	if err == nil {
		return ""
	}
	e, ok := apierr.As(err)
	if !ok || e.Status != apierr.InvalidArgument || e.Reason != apierr.ReasonInvalidArgument || len(e.Details) == 0 {
		t.Fatalf("error %v is not an INVALID_ARGUMENT naming a field", err)
	}
	f, _ := e.Details[0]["field"].(string)
	return f
}

func TestValidateAddress(t *testing.T) {
	tel := func(s string) Address { return Address{Type: "tel", Target: s} }
	sip := func(s string) Address { return Address{Type: "sip", Target: s} }
	named := func(name string) Address { return Address{Type: "tel", Target: "+15551234567", Name: name} }
	tests := []struct {
		name      string
		a         Address
		wantField string // "" means valid
	}{
		{"tel 7 digits", tel("+1234567"), ""},
		{"tel 15 digits", tel("+123456789012345"), ""},
		{"tel 6 digits", tel("+123456"), "x.target"},
		{"tel 16 digits", tel("+1234567890123456"), "x.target"},
		{"tel without plus", tel("15551234567"), "x.target"},
		{"tel with spaces", tel("+1 555 123 4567"), "x.target"},
		{"tel with letters", tel("+1555CALLNOW"), "x.target"},
		{"tel with trailing newline", tel("+15551234567\n"), "x.target"},
		{"tel empty", tel(""), "x.target"},
		{"sip user@host", sip("alice@example.com"), ""},
		{"sip user@host:port", sip("alice@example.com:5060"), ""},
		{"sip user@ipv4:port", sip("1001@127.0.0.1:5080"), ""},
		{"sip user@[ipv6]:port", sip("bob@[::1]:5060"), ""},
		{"sip user@[ipv6]", sip("bob@[2001:db8::1]"), ""},
		{"sip phone user", sip("+15551234567@trunk.example.net"), ""},
		{"sip user with escapes and user-unreserved", sip("a%20b;x=1&y$,?/@example.com"), ""},
		{"sip fqdn with trailing dot", sip("alice@example.com."), ""},
		{"sip without user", sip("@example.com"), "x.target"},
		{"sip without host", sip("alice@"), "x.target"},
		{"sip without @", sip("example.com"), "x.target"},
		{"sip with scheme", sip("sip:alice@example.com"), "x.target"},
		{"sip port 0", sip("alice@example.com:0"), "x.target"},
		{"sip port 70000", sip("alice@example.com:70000"), "x.target"},
		{"sip port 99999", sip("alice@example.com:99999"), "x.target"},
		{"sip port with sign", sip("alice@example.com:+80"), "x.target"},
		{"sip bad ipv6", sip("bob@[zz::1]"), "x.target"},
		{"sip ipv6 with zone", sip("bob@[fe80::1%25eth0]"), "x.target"},
		{"sip unbracketed ipv6", sip("bob@::1"), "x.target"},
		{"sip bad ipv4", sip("bob@999.1.1.1"), "x.target"},
		{"sip host with space", sip("alice@exa mple.com"), "x.target"},
		{"sip host with underscore", sip("alice@exa_mple.com"), "x.target"},
		{"sip two @", sip("a@b@c"), "x.target"},
		{"sip user with quote", sip(`a"b@example.com`), "x.target"},
		{"sip user with angle", sip("a<b@example.com"), "x.target"},
		{"sip user with bad escape", sip("a%zz@example.com"), "x.target"},
		{"sip user with CRLF", sip("a\r\nVia: x@example.com"), "x.target"},
		{"sip host with CRLF", sip("a@b\r\nVia: x"), "x.target"},
		{"sip user with NUL", sip("a\x00@example.com"), "x.target"},
		{"sip user too long", sip(strings.Repeat("u", MaxSIPUserLength+1) + "@example.com"), "x.target"},
		{"sip too long", sip("a@" + strings.Repeat("b", 300) + ".com"), "x.target"},
		{"missing type", Address{Target: "+15551234567"}, "x.type"},
		{"unknown type", Address{Type: "pstn", Target: "+15551234567"}, "x.type"},
		{"name plain", named("Alice Smith"), ""},
		{"name with quote and backslash", named(`Al "the \ pal"`), ""},
		{"name unicode", named("Zoë 東京"), ""},
		{"name 255 characters", named(strings.Repeat("é", 255)), ""},
		{"name too long", named(strings.Repeat("n", 256)), "x.name"},
		{"name with CR LF header injection", named("Evil\"\r\nP-Asserted-Identity: <sip:boss@x>\r\nX: \""), "x.name"},
		{"name with LF", named("a\nb"), "x.name"},
		{"name with CR", named("a\rb"), "x.name"},
		{"name with NUL", named("a\x00b"), "x.name"},
		{"name with TAB", named("a\tb"), "x.name"},
		{"name with DEL", named("a\x7fb"), "x.name"},
		{"name with C1 NEL", named("a\u0085b"), "x.name"},
		{"name with line separator", named("a\u2028b"), "x.name"},
		{"name invalid UTF-8", named("a\xffb"), "x.name"},
		{"target_name with LF", Address{Type: "tel", Target: "+15551234567", TargetName: "a\nb"}, "x.target_name"},
		{"detail with CR", Address{Type: "tel", Target: "+15551234567", Detail: "a\rb"}, "x.detail"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := fieldOf(t, ValidateAddress("x", tt.a)); got != tt.wantField {
				t.Fatalf("ValidateAddress(%+q) names field %q, want %q", tt.a, got, tt.wantField)
			}
		})
	}
}

func TestValidateCreate(t *testing.T) {
	valid := func() CreateRequest {
		return CreateRequest{CustomerID: "5e4a0000-0000-4000-8000-000000000001",
			Source:       Address{Type: "tel", Target: "+15550000001"},
			Destinations: []Address{{Type: "tel", Target: "+15550000002"}, {Type: "sip", Target: "bob@example.com"}}}
	}
	tests := []struct {
		name      string
		change    func(*CreateRequest)
		wantField string
	}{
		{"valid", func(*CreateRequest) {}, ""},
		{"valid with metadata and timeout", func(r *CreateRequest) { r.Metadata = map[string]any{"a": 1}; r.Timeout = 30 }, ""},
		{"no customer", func(r *CreateRequest) { r.CustomerID = "" }, "customer_id"},
		{"customer not a uuid", func(r *CreateRequest) { r.CustomerID = "cus-1" }, "customer_id"},
		{"bad source", func(r *CreateRequest) { r.Source.Target = "123" }, "source.target"},
		{"source name injection", func(r *CreateRequest) { r.Source.Name = "x\r\nRoute: <sip:evil>" }, "source.name"},
		{"no destinations", func(r *CreateRequest) { r.Destinations = nil }, "destinations"},
		{"too many destinations", func(r *CreateRequest) {
			r.Destinations = make([]Address, MaxDestinations+1)
			for i := range r.Destinations {
				r.Destinations[i] = Address{Type: "tel", Target: "+15550000002"}
			}
		}, "destinations"},
		{"second destination bad", func(r *CreateRequest) { r.Destinations[1].Target = "nobody" }, "destinations[1].target"},
		{"destination name injection", func(r *CreateRequest) { r.Destinations[1].Name = "x\nY: z" }, "destinations[1].name"},
		{"metadata too big", func(r *CreateRequest) {
			r.Metadata = map[string]any{"x": strings.Repeat("y", MaxMetadataBytes)}
		}, "metadata"},
		{"metadata not JSON", func(r *CreateRequest) { r.Metadata = map[string]any{"f": func() {}} }, "metadata"},
		{"negative timeout", func(r *CreateRequest) { r.Timeout = -1 }, "timeout"},
		{"timeout too long", func(r *CreateRequest) { r.Timeout = MaxTimeout + 1 }, "timeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := valid()
			tt.change(&req)
			if got := fieldOf(t, ValidateCreate(req)); got != tt.wantField {
				t.Fatalf("ValidateCreate names field %q, want %q", got, tt.wantField)
			}
		})
	}
}

func TestValidHost(t *testing.T) {
	for h, want := range map[string]bool{
		"example.com": true, "a": true, "127.0.0.1": true, "[::1]": true, "x-1.example": true,
		"": false, "-a.example": false, "a-.example": false, "a..b": false, "1.2.3": false, "[127.0.0.1]": false,
		"::1": false, strings.Repeat("a", 64) + ".com": false, "a\r\nb": false, "a b": false,
	} {
		if got := ValidHost(h); got != want {
			t.Errorf("ValidHost(%q) = %v, want %v", h, got, want)
		}
	}
}
