package identity

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"voipbin/pkg/apierr"
)

// Key is one HS256 key.
type Key struct {
	ID     string
	Secret []byte
}

// Claims are the claims of our JWTs: sub (the user id), customer_id, permission, iat, exp.
type Claims struct {
	CustomerID string     `json:"customer_id"`
	Permission Permission `json:"permission"`
	jwt.RegisteredClaims
}

// Tokens issues and verifies HS256 JWTs. The first key signs; every key verifies, chosen by the
// token's kid, so keys can be rotated without logging everyone out.
type Tokens struct {
	keys     []Key
	byID     map[string][]byte
	lifetime time.Duration
	now      func() time.Time
	parser   *jwt.Parser
}

// NewTokens makes a token issuer; lifetime is how long a token lives.
func NewTokens(keys []Key, lifetime time.Duration, now func() time.Time) (*Tokens, error) {
	if len(keys) == 0 {
		return nil, errors.New("identity: no JWT key")
	}
	if now == nil {
		now = time.Now
	}
	t := &Tokens{keys: keys, byID: map[string][]byte{}, lifetime: lifetime, now: now}
	for _, k := range keys {
		if len(k.Secret) < 32 {
			return nil, fmt.Errorf("identity: JWT key %q is shorter than 32 bytes", k.ID)
		}
		t.byID[k.ID] = k.Secret
	}
	// Only HS256: "none", RS256 with our secret as a "public key", and friends are all refused.
	t.parser = jwt.NewParser(jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
		jwt.WithExpirationRequired(), jwt.WithIssuedAt(), jwt.WithTimeFunc(func() time.Time { return t.now() }),
		jwt.WithLeeway(5*time.Second))
	return t, nil
}

// Lifetime is how long an issued token lives.
func (t *Tokens) Lifetime() time.Duration { return t.lifetime }

// Issue signs a token for u, returning it and its expiry.
func (t *Tokens) Issue(u User) (string, time.Time, error) {
	now := t.now().UTC().Truncate(time.Second)
	exp := now.Add(t.lifetime)
	tok := jwt.NewWithClaims(jwt.SigningMethodHS256, Claims{
		CustomerID: u.CustomerID, Permission: u.Permission,
		RegisteredClaims: jwt.RegisteredClaims{Subject: u.ID, IssuedAt: jwt.NewNumericDate(now), ExpiresAt: jwt.NewNumericDate(exp)},
	})
	tok.Header["kid"] = t.keys[0].ID
	s, err := tok.SignedString(t.keys[0].Secret)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("sign token: %w", err)
	}
	return s, exp, nil
}

// Parse verifies a token and returns its claims; any failure is INVALID_CREDENTIALS.
func (t *Tokens) Parse(token string) (Claims, error) {
	var c Claims
	_, err := t.parser.ParseWithClaims(token, &c, func(tok *jwt.Token) (any, error) {
		kid, _ := tok.Header["kid"].(string)
		if kid == "" && len(t.keys) == 1 {
			return t.keys[0].Secret, nil
		}
		if s, ok := t.byID[kid]; ok {
			return s, nil
		}
		return nil, fmt.Errorf("unknown kid %q", kid)
	})
	switch {
	case errors.Is(err, jwt.ErrTokenExpired):
		return Claims{}, apierr.New(apierr.Unauthenticated, ReasonInvalidCredentials, "token expired")
	case err != nil:
		return Claims{}, apierr.New(apierr.Unauthenticated, ReasonInvalidCredentials, "invalid token")
	case c.Subject == "":
		return Claims{}, apierr.New(apierr.Unauthenticated, ReasonInvalidCredentials, "invalid token: no subject")
	}
	return c, nil
}

// AccessKeyPrefix starts every access key, telling it apart from a JWT.
const AccessKeyPrefix = "vb_"

// NewAccessKeyToken makes a random access key: "vb_" and 43 base64url characters (256 bits).
func NewAccessKeyToken() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return AccessKeyPrefix + base64.RawURLEncoding.EncodeToString(b)
}

// HashAccessKey is the stored form of an access key.
func HashAccessKey(token string) [32]byte { return sha256.Sum256([]byte(token)) }
