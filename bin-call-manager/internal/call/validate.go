package call

import (
	"encoding/json"
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"

	"github.com/google/uuid"

	"voipbin/pkg/callapi"
)

// InvalidError is a request field the call manager refuses.
type InvalidError struct {
	Field       string
	Description string
}

func (e *InvalidError) Error() string { return e.Field + ": " + e.Description }

func invalid(field, format string, args ...any) *InvalidError {
	return &InvalidError{Field: field, Description: fmt.Sprintf(format, args...)}
}

// Limits of a create request.
const (
	MaxDestinations   = 100
	MaxMetadataBytes  = 8 << 10
	MaxTextLength     = 255
	MaxRequestTimeout = 600 // seconds
)

var (
	telTarget = regexp.MustCompile(`^\+[0-9]{7,15}$`)
	// user@host[:port]: the user part takes RFC 3261's unreserved and user-unreserved characters
	// and escapes; the host is a DNS name, an IPv4 address or a bracketed IPv6 address.
	sipTarget = regexp.MustCompile(`^([A-Za-z0-9\-_.!~*'()&=+$,;?/%]+)@([A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?)*|\[[0-9A-Fa-f:.]+\])(?::([0-9]{1,5}))?$`)
)

// ValidateAddress checks an address; field names it in the error ("destinations[0]").
func ValidateAddress(field string, a callapi.Address) error {
	switch a.Type {
	case callapi.AddressTel:
		if !telTarget.MatchString(a.Target) {
			return invalid(field+".target", "must be an E.164 number like +15551234567 (+ and 7 to 15 digits)")
		}
	case callapi.AddressSIP:
		m := sipTarget.FindStringSubmatch(a.Target)
		if m == nil || len(a.Target) > MaxTextLength {
			return invalid(field+".target", "must be a SIP address user@host[:port]")
		}
		if host := m[2]; strings.HasPrefix(host, "[") && net.ParseIP(strings.Trim(host, "[]")) == nil {
			return invalid(field+".target", "has an invalid IPv6 host")
		}
		if m[3] != "" {
			if p, err := strconv.Atoi(m[3]); err != nil || p < 1 || p > 65535 {
				return invalid(field+".target", "has a port outside 1-65535")
			}
		}
	case "":
		return invalid(field+".type", "is required (tel or sip)")
	default:
		return invalid(field+".type", "must be tel or sip, got %q", a.Type)
	}
	for name, v := range map[string]string{"target_name": a.TargetName, "name": a.Name, "detail": a.Detail} {
		if len(v) > MaxTextLength {
			return invalid(field+"."+name, "is longer than %d bytes", MaxTextLength)
		}
	}
	return nil
}

// ValidateCreate checks a create request as a whole, before anything is done.
func ValidateCreate(req callapi.CreateRequest) error {
	if req.CustomerID == "" {
		return invalid("customer_id", "is required")
	}
	if _, err := uuid.Parse(req.CustomerID); err != nil {
		return invalid("customer_id", "must be a UUID")
	}
	if err := ValidateAddress("source", req.Source); err != nil {
		return err
	}
	switch n := len(req.Destinations); {
	case n == 0:
		return invalid("destinations", "needs at least one destination")
	case n > MaxDestinations:
		return invalid("destinations", "has %d destinations, at most %d are allowed", n, MaxDestinations)
	}
	for i, d := range req.Destinations {
		if err := ValidateAddress(fmt.Sprintf("destinations[%d]", i), d); err != nil {
			return err
		}
	}
	if req.Metadata != nil {
		b, err := json.Marshal(req.Metadata)
		if err != nil {
			return invalid("metadata", "is not representable as JSON")
		}
		if len(b) > MaxMetadataBytes {
			return invalid("metadata", "is %d bytes of JSON, at most %d are allowed", len(b), MaxMetadataBytes)
		}
	}
	if req.Timeout < 0 || req.Timeout > MaxRequestTimeout {
		return invalid("timeout", "must be between 1 and %d seconds (0 for the default)", MaxRequestTimeout)
	}
	return nil
}
