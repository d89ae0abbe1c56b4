package sip

import "testing"

func TestDisplayName(t *testing.T) {
	tests := map[string]string{
		"Alice":                                "Alice",
		`Al "Boss" \ Co`:                       `Al \"Boss\" \\ Co`,
		"a\r\nRoute: <sip:x>":                  "aRoute: <sip:x>",
		"nul\x00tab\tdel\x7fnel\u0085ls\u2028": "nultabdelnells",
		"Zoë":                                  "Zoë",
		"bad\xffutf8":                          "bad\uFFFDutf8",
		`trailing\`:                            `trailing\\`,
	}
	for in, want := range tests {
		if got := displayName(in); got != want {
			t.Errorf("displayName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestSIPUser(t *testing.T) {
	tests := []struct {
		in, want string
		err      bool
	}{
		{"+15550001111", "+15550001111", false},
		{"alice.b-c_d!~*'()&=+$,;?/", "alice.b-c_d!~*'()&=+$,;?/", false},
		{"a%20b", "a%20b", false},
		{"a%zz", "a%25zz", false},
		{"a%2", "a%252", false},
		{`a"b<c>@d e`, "a%22b%3Cc%3E%40d%20e", false},
		{"é", "%C3%A9", false},
		{"a\r\nb", "", true},
		{"a\x00", "", true},
		{"", "", true},
	}
	for _, tt := range tests {
		got, err := sipUser(tt.in)
		if got != tt.want || (err != nil) != tt.err {
			t.Errorf("sipUser(%q) = %q, %v; want %q, error %v", tt.in, got, err, tt.want, tt.err)
		}
	}
}
