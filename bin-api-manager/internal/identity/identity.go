// Package identity owns who may call the platform: customers (tenants), their users, access keys,
// passwords and JWTs, and the rules of who may see what. It is plain Go with no I/O: storage and
// caching come in through small interfaces that the mysql and cache adapters implement, and every
// failure a caller may see is an *apierr.Error with a stable reason.
package identity

import (
	"net/mail"
	"regexp"
	"strings"
	"time"
	"unicode/utf8"

	"voipbin/pkg/apierr"
	"voipbin/pkg/customerapi"
)

// Permission is a set of permission bits (DESIGN §5).
type Permission uint32

// The permission bits.
const (
	PermSuperadmin      Permission = 1
	PermCustomerAdmin   Permission = 32
	PermCustomerManager Permission = 64
)

// Has reports whether p holds any bit of q.
func (p Permission) Has(q Permission) bool { return p&q != 0 }

// Credential kinds an Identity may come from.
const (
	MethodJWT       = "jwt"
	MethodAccessKey = "accesskey"
)

// Identity is an authenticated caller.
type Identity struct {
	UserID string
	// CustomerID is the customer the caller belongs to; empty for a superadmin.
	CustomerID string
	Permission Permission
	// Method is MethodJWT or MethodAccessKey; AccessKeyID is set for the latter.
	Method      string
	AccessKeyID string
	// Expires is when the credential stops working: the JWT's exp, or the access key's expiry.
	Expires time.Time

	// keyHash finds the access key again when the identity is re-checked (Service.Check).
	keyHash [32]byte
}

// Superadmin reports whether the caller may act for every customer.
func (i Identity) Superadmin() bool { return i.Permission.Has(PermSuperadmin) }

// CanRead reports whether the caller may use the customer-facing resources at all.
func (i Identity) CanRead() bool {
	return i.Permission.Has(PermSuperadmin | PermCustomerAdmin | PermCustomerManager)
}

// CanAdmin reports whether the caller may manage its customer's settings (access keys, webhooks).
func (i Identity) CanAdmin() bool { return i.Permission.Has(PermSuperadmin | PermCustomerAdmin) }

// Scope is the customer a request acts for. A superadmin acts for the customer it names (empty:
// all customers). Anyone else always acts for its own customer; naming another one yields
// ok=false, which callers answer exactly like a missing resource.
func (i Identity) Scope(requested string) (customerID string, ok bool) {
	if i.Superadmin() {
		return requested, true
	}
	if requested != "" && requested != i.CustomerID {
		return "", false
	}
	return i.CustomerID, true
}

// Customer is a tenant.
type Customer struct {
	ID       string
	Name     string
	Email    string
	TMCreate time.Time
	TMUpdate time.Time
}

// API is the customer's wire form (the data of customer.created and the REST body).
func (c Customer) API() customerapi.Customer {
	return customerapi.Customer{ID: c.ID, Name: c.Name, Email: c.Email, TMCreate: c.TMCreate}
}

// User is a login of a customer (or a superadmin, with an empty CustomerID).
type User struct {
	ID           string
	CustomerID   string
	Username     string
	PasswordHash string
	Permission   Permission
	TMCreate     time.Time
	TMUpdate     time.Time
}

// AccessKey is a long-lived credential of a customer. Only its SHA-256 is stored; Token is set
// once, in the reply of its creation.
type AccessKey struct {
	ID         string
	CustomerID string
	UserID     string
	Name       string
	TokenHash  [32]byte
	Permission Permission
	// ParentKeyID is the access key that created this one ("" when a user's JWT did): the key is
	// deleted with its parent and never outlives it.
	ParentKeyID string
	TMExpire    time.Time
	TMCreate    time.Time
	Token       string
}

// Reasons of the identity errors.
const (
	ReasonAuthenticationRequired = "AUTHENTICATION_REQUIRED"
	ReasonInvalidCredentials     = "INVALID_CREDENTIALS"
	ReasonCustomerNotFound       = "CUSTOMER_NOT_FOUND"
	ReasonAccessKeyNotFound      = "ACCESSKEY_NOT_FOUND"
	ReasonUsernameTaken          = "USERNAME_TAKEN"
	// ReasonCredentialsRevoked: the credential was valid but its user was deleted, the user's
	// permission was lowered below the credential's, or its access key was deleted.
	ReasonCredentialsRevoked = "CREDENTIALS_REVOKED"
	ReasonUserNotFound       = "USER_NOT_FOUND"
)

// Errors. Adapters return the NotFound and Taken ones; the rest come from the Service.
var (
	ErrAuthenticationRequired = apierr.New(apierr.Unauthenticated, ReasonAuthenticationRequired, "authentication required: send a token or an access key")
	ErrInvalidCredentials     = apierr.New(apierr.Unauthenticated, ReasonInvalidCredentials, "invalid username or password")
	ErrPermissionDenied       = apierr.New(apierr.PermissionDenied, apierr.ReasonPermissionDenied, "permission denied")
	ErrCustomerNotFound       = apierr.New(apierr.NotFound, ReasonCustomerNotFound, "customer not found")
	ErrUserNotFound           = apierr.New(apierr.NotFound, ReasonUserNotFound, "user not found")
	ErrAccessKeyNotFound      = apierr.New(apierr.NotFound, ReasonAccessKeyNotFound, "access key not found")
	ErrUsernameTaken          = apierr.New(apierr.AlreadyExists, ReasonUsernameTaken, "username is taken")
)

// NewCustomer is what creating a customer takes.
type NewCustomer struct {
	Name     string
	Email    string
	Username string
	Password string
}

var usernamePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._@-]{2,63}$`)

// Password bounds: bcrypt reads at most 72 bytes.
const (
	MinPasswordLen = 8
	MaxPasswordLen = 72
)

// Validate reports the first invalid field.
func (n NewCustomer) Validate() error {
	if err := validName("name", n.Name); err != nil {
		return err
	}
	if n.Email != "" {
		a, err := mail.ParseAddress(n.Email)
		if err != nil || a.Address != n.Email || len(n.Email) > 255 {
			return apierr.Invalid("email", "must be a plain e-mail address like ops@example.com")
		}
	}
	if !usernamePattern.MatchString(n.Username) {
		return apierr.Invalid("username", "must be 3-64 characters of letters, digits and . _ @ -, starting with a letter or digit")
	}
	if len(n.Password) < MinPasswordLen || len(n.Password) > MaxPasswordLen {
		return apierr.Invalid("password", "must be 8-72 bytes long")
	}
	return nil
}

func validName(field, s string) error {
	if strings.TrimSpace(s) == "" || utf8.RuneCountInString(s) > 255 || !utf8.ValidString(s) {
		return apierr.Invalid(field, "must be 1-255 characters and not blank")
	}
	return nil
}

// CustomerPermissions are the bits a customer's user may hold.
const CustomerPermissions = PermCustomerAdmin | PermCustomerManager

// NewUser is what creating a customer's user takes.
type NewUser struct {
	// CustomerID is the user's customer: a superadmin names it, anyone else creates users of its
	// own customer.
	CustomerID string
	Username   string
	Password   string
	Permission Permission
}

// Validate reports the first invalid field.
func (n NewUser) Validate() error {
	if !usernamePattern.MatchString(n.Username) {
		return apierr.Invalid("username", "must be 3-64 characters of letters, digits and . _ @ -, starting with a letter or digit")
	}
	if len(n.Password) < MinPasswordLen || len(n.Password) > MaxPasswordLen {
		return apierr.Invalid("password", "must be 8-72 bytes long")
	}
	return validCustomerPermission(n.Permission)
}

func validCustomerPermission(p Permission) error {
	if p == 0 || p&^CustomerPermissions != 0 {
		return apierr.Invalid("permission", "must be 32 (customer admin), 64 (customer manager) or 96 (both)")
	}
	return nil
}

// Access key lifetimes.
const (
	MinAccessKeyLifetime = time.Minute
	MaxAccessKeyLifetime = 10 * 365 * 24 * time.Hour
)
