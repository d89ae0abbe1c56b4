package sip

import (
	"fmt"
	"net/netip"
	"strings"
	"unicode"
	"unicode/utf8"

	"voipbin/pkg/callapi"
)

// The INVITE is encoded safely on its own, whatever was checked before it: the API and the dial
// request validate addresses too, but no layer relies on another to keep a customer's text from
// adding lines to a SIP message.

// displayName is s as the content of an RFC 3261 quoted-string (sipgo adds the quotes): control
// characters (CR, LF, NUL, TAB, DEL, C1) and Unicode line separators are dropped, invalid UTF-8 is
// replaced, and `"` and `\` are escaped as quoted-pairs.
func displayName(s string) string {
	var b strings.Builder
	for _, r := range strings.ToValidUTF8(s, string(utf8.RuneError)) {
		switch {
		case unicode.IsControl(r), r == '\u2028', r == '\u2029':
			continue
		case r == '"', r == '\\':
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// userUnescaped are the characters RFC 3261's user production takes as they are: unreserved
// (alphanum and mark) and user-unreserved.
const userUnescaped = "-_.!~*'()&=+$,;?/"

// sipUser is s encoded as an RFC 3261 user part: allowed characters and valid %HH escapes are kept,
// every other byte is %-escaped. Control characters are refused rather than escaped: no
// legitimate user part carries one.
func sipUser(s string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c < 0x20 || c == 0x7f:
			return "", fmt.Errorf("user part %q holds a control character", s)
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', strings.IndexByte(userUnescaped, c) >= 0:
			b.WriteByte(c)
		case c == '%' && i+2 < len(s) && isHex(s[i+1]) && isHex(s[i+2]):
			b.WriteString(s[i : i+3])
			i += 2
		default:
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	if b.Len() == 0 {
		return "", fmt.Errorf("empty user part")
	}
	return b.String(), nil
}

// validHost reports whether h, a host as sipgo parsed it (an IPv6 address without brackets), is
// a DNS name or an IP address, and so holds nothing that could end a header line.
func validHost(h string) bool {
	if ip, err := netip.ParseAddr(h); err == nil {
		return ip.Zone() == ""
	}
	return callapi.ValidHost(h)
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}
