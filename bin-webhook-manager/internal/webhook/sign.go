package webhook

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"
)

// Secret is a webhook's signing secret: "whsec_" followed by the standard base64 of 32 random
// bytes, the form Standard Webhooks libraries take as is. It formats and logs as "[redacted]";
// Reveal is the only way to its value.
//
// The two signatures use it as follows, so a receiver can verify either with what it was shown:
//   - X-VoIPBIN-Signature is keyed by the whole secret string, "whsec_…", as UTF-8 bytes;
//   - webhook-signature (Standard Webhooks) is keyed by the 32 bytes the base64 after "whsec_"
//     decodes to, as the Standard Webhooks specification and its libraries derive the key.
type Secret string

const secretPrefix = "whsec_"

// NewSecret makes a secret from 32 bytes of crypto/rand.
func NewSecret() (Secret, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("make secret: %w", err)
	}
	return Secret(secretPrefix + base64.StdEncoding.EncodeToString(b[:])), nil
}

// Reveal is the secret's value, for the create and rotate replies and for signing.
func (s Secret) Reveal() string { return string(s) }

// String keeps the secret out of %v and %s.
func (s Secret) String() string { return "[redacted]" }

// LogValue keeps the secret out of logs.
func (s Secret) LogValue() slog.Value { return slog.StringValue("[redacted]") }

// standardKey is the Standard Webhooks key: the base64 after the prefix, decoded. A secret not in
// that form (none is made so) is used as raw bytes.
func (s Secret) standardKey() []byte {
	if b, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(string(s), secretPrefix)); err == nil {
		return b
	}
	return []byte(s)
}

// Header names of a delivery (DESIGN §8).
const (
	HeaderSignature          = "X-VoIPBIN-Signature"
	HeaderWebhookID          = "webhook-id"
	HeaderWebhookTimestamp   = "webhook-timestamp"
	HeaderWebhookSignature   = "webhook-signature"
	HeaderContentType        = "Content-Type"
	ContentTypeJSON          = "application/json"
	standardSignatureVersion = "v1,"
)

// SignatureHeaders are the headers that sign body, sent as message id at time at.
func SignatureHeaders(secret Secret, id string, at time.Time, body []byte) map[string]string {
	ts := strconv.FormatInt(at.Unix(), 10)
	return map[string]string{
		HeaderContentType:      ContentTypeJSON,
		HeaderSignature:        Signature(secret, body),
		HeaderWebhookID:        id,
		HeaderWebhookTimestamp: ts,
		HeaderWebhookSignature: StandardSignature(secret, id, ts, body),
	}
}

// Signature is X-VoIPBIN-Signature: lowercase hex HMAC-SHA256 of body keyed by the secret, with
// no prefix.
func Signature(secret Secret, body []byte) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write(body)
	return hex.EncodeToString(m.Sum(nil))
}

// StandardSignature is webhook-signature: "v1," + base64 HMAC-SHA256 of "id.timestamp.body".
func StandardSignature(secret Secret, id, timestamp string, body []byte) string {
	m := hmac.New(sha256.New, secret.standardKey())
	m.Write([]byte(id + "." + timestamp + "."))
	m.Write(body)
	return standardSignatureVersion + base64.StdEncoding.EncodeToString(m.Sum(nil))
}
