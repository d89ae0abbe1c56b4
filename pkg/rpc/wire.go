package rpc

import (
	"encoding/json"
	"sort"
	"strconv"
	"time"
)

// The envelopes are written by hand: encoding/json would re-validate and re-compact the body, which
// is already JSON (it was marshalled by the sender), and that second pass over every body is the
// largest cost of a round trip after the network itself. Decoding still validates everything.

func appendString(b []byte, s string) []byte {
	q, _ := json.Marshal(s) // escapes exactly as encoding/json does; short strings only
	return append(b, q...)
}

func appendTime(b []byte, t time.Time) []byte {
	b = append(b, '"')
	b = t.UTC().AppendFormat(b, time.RFC3339Nano)
	return append(b, '"')
}

func appendBody(b []byte, body json.RawMessage) []byte {
	if len(body) == 0 {
		return append(b, "null"...)
	}
	return append(b, body...)
}

// MarshalJSON writes the request envelope.
func (r Request) MarshalJSON() ([]byte, error) {
	b := make([]byte, 0, 256+len(r.Body))
	b = append(b, `{"message_id":`...)
	b = appendString(b, r.MessageID)
	b = append(b, `,"timestamp":`...)
	b = appendTime(b, r.Timestamp)
	if !r.Deadline.IsZero() {
		b = append(b, `,"deadline":`...)
		b = appendTime(b, r.Deadline)
	}
	b = append(b, `,"route":`...)
	b = appendString(b, r.Route)
	b = append(b, `,"method":`...)
	b = appendString(b, r.Method)
	if len(r.Headers) > 0 {
		keys := make([]string, 0, len(r.Headers))
		for k := range r.Headers {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		b = append(b, `,"headers":{`...)
		for i, k := range keys {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, k)
			b = append(b, ':')
			b = appendString(b, r.Headers[k])
		}
		b = append(b, '}')
	}
	if len(r.Body) > 0 {
		b = append(b, `,"body":`...)
		b = appendBody(b, r.Body)
	}
	return append(b, '}'), nil
}

// MarshalJSON writes the response envelope.
func (r Response) MarshalJSON() ([]byte, error) {
	b := make([]byte, 0, 128+len(r.Body))
	b = append(b, `{"message_id":`...)
	b = appendString(b, r.MessageID)
	b = append(b, `,"timestamp":`...)
	b = appendTime(b, r.Timestamp)
	b = append(b, `,"status_code":`...)
	b = strconv.AppendInt(b, int64(r.StatusCode), 10)
	if len(r.Body) > 0 {
		b = append(b, `,"body":`...)
		b = appendBody(b, r.Body)
	}
	if r.Error != nil {
		e, err := json.Marshal(r.Error)
		if err != nil {
			return nil, err
		}
		b = append(b, `,"error":`...)
		b = append(b, e...)
	}
	return append(b, '}'), nil
}
