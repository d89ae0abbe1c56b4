package rpc

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"voipbin/pkg/apierr"
)

func TestEnvelopesRoundTripThroughEncodingJSON(t *testing.T) {
	now := time.Date(2026, 11, 26, 10, 0, 1, 123456000, time.UTC)
	reqs := []Request{
		{MessageID: "m1", Timestamp: now, Deadline: now.Add(3 * time.Second), Route: "/v1/calls?x=\"1\"", Method: "POST",
			Headers: map[string]string{"request_id": "r<1>", "customer_id": "c\u2028"}, Body: json.RawMessage(`{"a":[1,2,{"b":"\u00e9"}]}`)},
		{MessageID: "m2", Timestamp: now, Route: "/v1/calls/1", Method: "GET"},
	}
	for _, in := range reqs {
		b, err := in.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		if !json.Valid(b) {
			t.Fatalf("invalid JSON: %s", b)
		}
		var out Request
		if err := json.Unmarshal(b, &out); err != nil {
			t.Fatal(err)
		}
		if out.MessageID != in.MessageID || !out.Timestamp.Equal(in.Timestamp) || !out.Deadline.Equal(in.Deadline) ||
			out.Route != in.Route || out.Method != in.Method || !reflect.DeepEqual(out.Headers, in.Headers) || string(out.Body) != string(in.Body) {
			t.Fatalf("round trip:\n got %+v\nwant %+v", out, in)
		}
	}
	resps := []Response{
		{MessageID: "m1", Timestamp: now, StatusCode: 201, Body: json.RawMessage(`{"calls":[]}`)},
		{MessageID: "m2", Timestamp: now, StatusCode: 402, Error: apierr.New(apierr.PaymentRequired, "INSUFFICIENT_BALANCE", `say "no"`).WithDetails(apierr.Detail{"balance": 1.0})},
	}
	for _, in := range resps {
		b, err := in.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		var out Response
		if err := json.Unmarshal(b, &out); err != nil {
			t.Fatalf("%v: %s", err, b)
		}
		if out.MessageID != in.MessageID || out.StatusCode != in.StatusCode || string(out.Body) != string(in.Body) || !reflect.DeepEqual(out.Error, in.Error) {
			t.Fatalf("round trip:\n got %+v\nwant %+v", out, in)
		}
	}
}
