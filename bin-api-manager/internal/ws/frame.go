package ws

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"unicode/utf8"

	"github.com/gorilla/websocket"

	"voipbin/pkg/apierr"
)

// Client frame types (DESIGN §7).
const (
	frameSubscribe   = "subscribe"
	frameUnsubscribe = "unsubscribe"
)

// clientFrame is what a client sends: {"type":"subscribe","id":…,"topics":[…]}.
type clientFrame struct {
	Type   string          `json:"type"`
	ID     json.RawMessage `json:"id,omitempty"`
	Topics []string        `json:"topics"`
}

// parseFrame decodes a client frame. The id is returned whenever it could be read and is a string
// or a number, even when the frame is otherwise bad, so the error can answer it.
func parseFrame(data []byte, maxTopics int) (clientFrame, error) {
	var f clientFrame
	if err := json.Unmarshal(data, &f); err != nil {
		return clientFrame{}, apierr.New(apierr.InvalidArgument, ReasonInvalidFrame, "frame is not a JSON object: "+jsonProblem(err))
	}
	if !validID(f.ID) {
		f.ID = nil
		return f, apierr.New(apierr.InvalidArgument, ReasonInvalidFrame, "id must be a string or a number")
	}
	switch f.Type {
	case frameSubscribe, frameUnsubscribe:
	case "":
		return f, apierr.New(apierr.InvalidArgument, ReasonInvalidFrame, `type is required ("subscribe" or "unsubscribe")`)
	default:
		return f, apierr.Newf(apierr.InvalidArgument, ReasonInvalidFrame, `unknown type %.40q (want "subscribe" or "unsubscribe")`, f.Type)
	}
	if len(f.Topics) == 0 {
		return f, apierr.New(apierr.InvalidArgument, ReasonInvalidFrame, "topics must list at least one topic")
	}
	if len(f.Topics) > maxTopics {
		return f, apierr.Newf(apierr.InvalidArgument, ReasonTooManyTopics, "a frame may list at most %d topics", maxTopics)
	}
	return f, nil
}

// validID accepts an absent or null id, a string or a number.
func validID(id json.RawMessage) bool {
	id = bytes.TrimSpace(id)
	if len(id) == 0 || string(id) == "null" {
		return true
	}
	var v any
	if err := json.Unmarshal(id, &v); err != nil {
		return false
	}
	switch v.(type) {
	case string, float64:
		return true
	}
	return false
}

// hasID reports whether the frame carried an id to answer.
func hasID(id json.RawMessage) bool {
	id = bytes.TrimSpace(id)
	return len(id) > 0 && string(id) != "null"
}

func jsonProblem(err error) string {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return fmt.Sprintf("syntax error at byte %d", se.Offset)
	case errors.As(err, &te):
		return fmt.Sprintf("field %q must be %s", te.Field, te.Type.String())
	}
	return "unexpected end of input"
}

// ackFrame answers a client frame that carried an id.
type ackFrame struct {
	Type string          `json:"type"`
	ID   json.RawMessage `json:"id"`
}

// errorFrame refuses a client frame that carried an id.
type errorFrame struct {
	Type    string          `json:"type"`
	ID      json.RawMessage `json:"id"`
	Reason  string          `json:"reason"`
	Message string          `json:"message"`
}

func marshalAck(id json.RawMessage) []byte {
	b, _ := json.Marshal(ackFrame{Type: "ack", ID: id}) // cannot fail: id is validated JSON
	return b
}

func marshalError(id json.RawMessage, e *apierr.Error) []byte {
	b, _ := json.Marshal(errorFrame{Type: "error", ID: id, Reason: e.Reason, Message: e.Message})
	return b
}

// closeCodeFor is the close code that refuses a frame without an id: 1013 (try again later) when
// the platform could not serve it, else 1008 (policy violation).
func closeCodeFor(e *apierr.Error) int {
	if e.Status == apierr.Unavailable || e.Status == apierr.Internal {
		return websocket.CloseTryAgainLater
	}
	return websocket.ClosePolicyViolation
}

// closeText is "<REASON>: <message>", cut to the 123 bytes a close frame can carry.
func closeText(reason, message string) string {
	s := reason
	if message != "" {
		s += ": " + message
	}
	const maxLen = 123
	if len(s) <= maxLen {
		return s
	}
	s = s[:maxLen]
	for !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s
}
