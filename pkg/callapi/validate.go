package callapi

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"voipbin/pkg/apierr"
)

// Limits of a create request and its addresses. They are the one definition the api, call and rtc
// managers all check.
const (
	MaxDestinations  = 100
	MaxMetadataBytes = 8 << 10
	// MaxTimeout bounds CreateRequest.Timeout, the dial timeout in seconds.
	MaxTimeout = 3600

	// MaxSIPTargetLength bounds a sip target (user@host:port) in bytes.
	MaxSIPTargetLength = 255
	// MaxSIPUserLength bounds the user part of a sip target in bytes.
	MaxSIPUserLength = 128
	// MaxTextLength bounds name, target_name and detail in characters.
	MaxTextLength = 255
)

var (
	telTarget = regexp.MustCompile(`^\+[0-9]{7,15}$`)
	// sipUser is RFC 3261's user: unreserved and user-unreserved characters and %HH escapes.
	sipUser  = regexp.MustCompile(`^(?:[A-Za-z0-9\-_.!~*'()&=+$,;?/]|%[0-9A-Fa-f]{2})+$`)
	dnsLabel = regexp.MustCompile(`^[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?$`)
)

// ValidateCreate checks a create request as a whole, before anything is done. The error is an
// INVALID_ARGUMENT *apierr.Error naming the first bad field.
func ValidateCreate(req CreateRequest) error {
	if !isUUID(req.CustomerID) {
		return apierr.Invalid("customer_id", "is required, as a UUID")
	}
	if err := ValidateAddress("source", req.Source); err != nil {
		return err
	}
	switch n := len(req.Destinations); {
	case n == 0:
		return apierr.Invalid("destinations", "needs at least one destination")
	case n > MaxDestinations:
		return apierr.Invalid("destinations", fmt.Sprintf("has %d destinations, at most %d are allowed", n, MaxDestinations))
	}
	for i, d := range req.Destinations {
		if err := ValidateAddress(fmt.Sprintf("destinations[%d]", i), d); err != nil {
			return err
		}
	}
	if req.Metadata != nil {
		b, err := json.Marshal(req.Metadata)
		if err != nil {
			return apierr.Invalid("metadata", "is not representable as JSON")
		}
		if len(b) > MaxMetadataBytes {
			return apierr.Invalid("metadata", fmt.Sprintf("is %d bytes of JSON, at most %d are allowed", len(b), MaxMetadataBytes))
		}
	}
	if req.Timeout < 0 || req.Timeout > MaxTimeout {
		return apierr.Invalid("timeout", fmt.Sprintf("must be 0 (the default) to %d seconds", MaxTimeout))
	}
	return nil
}

// isUUID reports whether s is a UUID in its 36-character form.
func isUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i, c := range s {
		switch {
		case i == 8 || i == 13 || i == 18 || i == 23:
			if c != '-' {
				return false
			}
		case !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'):
			return false
		}
	}
	return true
}

// ValidateAddress checks a party of a call; field names it in the error ("source",
// "destinations[0]"). Every field that can reach a SIP message is checked here: tel targets are
// E.164, sip targets user@host[:port] in RFC 3261's grammar, and the free-text fields (name,
// target_name, detail) hold no control characters, so none can add a line to a SIP header. The
// error is an INVALID_ARGUMENT *apierr.Error naming the field.
func ValidateAddress(field string, a Address) error {
	switch a.Type {
	case AddressTel:
		if !telTarget.MatchString(a.Target) {
			return apierr.Invalid(field+".target", fmt.Sprintf("%q is not an E.164 number like +15551234567 (+ and 7 to 15 digits)", clip(a.Target)))
		}
	case AddressSIP:
		if _, _, err := SplitSIPTarget(a.Target); err != nil {
			return apierr.Invalid(field+".target", err.Error())
		}
	case "":
		return apierr.Invalid(field+".type", `is required: "tel" or "sip"`)
	default:
		return apierr.Invalid(field+".type", fmt.Sprintf(`%q is not "tel" or "sip"`, clip(a.Type)))
	}
	for _, f := range []struct{ name, v string }{{"name", a.Name}, {"target_name", a.TargetName}, {"detail", a.Detail}} {
		if err := CheckText(f.v); err != nil {
			return apierr.Invalid(field+"."+f.name, err.Error())
		}
	}
	return nil
}

// CheckText checks a free-text field that may be written into a SIP header: valid UTF-8, at most
// MaxTextLength characters, and no control characters (CR, LF, NUL, TAB, DEL, C1) or Unicode
// line and paragraph separators.
func CheckText(s string) error {
	if !utf8.ValidString(s) {
		return fmt.Errorf("is not valid UTF-8")
	}
	if n := utf8.RuneCountInString(s); n > MaxTextLength {
		return fmt.Errorf("is %d characters long, at most %d are allowed", n, MaxTextLength)
	}
	for i, r := range s {
		if unicode.IsControl(r) || r == '\u2028' || r == '\u2029' {
			return fmt.Errorf("holds the control character %U at byte %d", r, i)
		}
	}
	return nil
}

// SplitSIPTarget checks a sip target user@host[:port] (no scheme) and returns its user part and
// its host[:port]; an IPv6 host is bracketed.
func SplitSIPTarget(t string) (user, hostport string, err error) {
	if len(t) > MaxSIPTargetLength {
		return "", "", fmt.Errorf("is longer than %d bytes", MaxSIPTargetLength)
	}
	user, hostport, ok := strings.Cut(t, "@")
	if !ok {
		return "", "", fmt.Errorf("%q is not a SIP target like alice@example.com[:5060]", clip(t))
	}
	if len(user) > MaxSIPUserLength {
		return "", "", fmt.Errorf("has a user part longer than %d bytes", MaxSIPUserLength)
	}
	if !sipUser.MatchString(user) {
		return "", "", fmt.Errorf("%q is not a SIP target like alice@example.com[:5060] (the user part takes letters, digits, -_.!~*'()&=+$,;?/ and %%HH escapes)", clip(t))
	}
	host, port := hostport, ""
	if i := strings.LastIndexByte(hostport, ':'); i >= 0 && !strings.HasSuffix(hostport, "]") {
		host, port = hostport[:i], hostport[i+1:]
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 || port[0] == '0' || port[0] == '+' {
			return "", "", fmt.Errorf("port %q is not in 1-65535", clip(port))
		}
	}
	if !ValidHost(host) {
		return "", "", fmt.Errorf("host %q is not a DNS name, an IPv4 address or a bracketed IPv6 address", clip(host))
	}
	return user, hostport, nil
}

// ValidHost reports whether h is a DNS name, a dotted IPv4 address or a bracketed IPv6 address
// (without zone), the hosts a SIP URI may carry.
func ValidHost(h string) bool {
	if strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]") {
		ip, err := netip.ParseAddr(h[1 : len(h)-1])
		return err == nil && ip.Is6() && ip.Zone() == ""
	}
	if len(h) == 0 || len(h) > 253 {
		return false
	}
	labels := strings.Split(strings.TrimSuffix(h, "."), ".")
	for _, l := range labels {
		if !dnsLabel.MatchString(l) {
			return false
		}
	}
	// A name whose last label is numeric must be an IPv4 address (no 999.1.1.1, no 010.0.0.1).
	if last := labels[len(labels)-1]; strings.Trim(last, "0123456789") == "" {
		ip, err := netip.ParseAddr(h)
		return err == nil && ip.Is4()
	}
	return true
}

// clip shortens a value quoted in an error message.
func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}
