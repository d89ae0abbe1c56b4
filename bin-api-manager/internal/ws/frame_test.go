package ws

import (
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"

	"voipbin/pkg/apierr"
)

func TestParseFrame(t *testing.T) {
	tests := []struct {
		name       string
		in         string
		wantType   string
		wantID     string // raw JSON of the id kept for the answer, "" for none
		wantReason string
	}{
		{name: "subscribe with string id", in: `{"type":"subscribe","id":"s1","topics":["a"]}`, wantType: "subscribe", wantID: `"s1"`},
		{name: "unsubscribe with numeric id", in: `{"type":"unsubscribe","id":7,"topics":["a"]}`, wantType: "unsubscribe", wantID: `7`},
		{name: "no id", in: `{"type":"subscribe","topics":["a"]}`, wantType: "subscribe"},
		{name: "null id", in: `{"type":"subscribe","id":null,"topics":["a"]}`, wantType: "subscribe", wantID: `null`},
		{name: "unknown fields are ignored", in: `{"type":"subscribe","topics":["a"],"extra":{"x":1}}`, wantType: "subscribe"},
		{name: "not JSON", in: `subscribe me`, wantReason: ReasonInvalidFrame},
		{name: "JSON array", in: `["subscribe"]`, wantReason: ReasonInvalidFrame},
		{name: "topics not a list", in: `{"type":"subscribe","id":"s","topics":"a"}`, wantReason: ReasonInvalidFrame},
		{name: "object id", in: `{"type":"subscribe","id":{"a":1},"topics":["a"]}`, wantType: "subscribe", wantReason: ReasonInvalidFrame},
		{name: "missing type keeps the id", in: `{"id":"s2","topics":["a"]}`, wantID: `"s2"`, wantReason: ReasonInvalidFrame},
		{name: "unknown type keeps the id", in: `{"type":"publish","id":"s3","topics":["a"]}`, wantType: "publish", wantID: `"s3"`, wantReason: ReasonInvalidFrame},
		{name: "no topics", in: `{"type":"subscribe","id":1,"topics":[]}`, wantType: "subscribe", wantID: `1`, wantReason: ReasonInvalidFrame},
		{name: "too many topics", in: `{"type":"subscribe","id":1,"topics":["a","b","c","d"]}`, wantType: "subscribe", wantID: `1`, wantReason: ReasonTooManyTopics},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseFrame([]byte(tt.in), 3)
			if tt.wantReason == "" && err != nil {
				t.Fatalf("parseFrame error = %v", err)
			}
			if tt.wantReason != "" && !apierr.HasReason(err, tt.wantReason) {
				t.Fatalf("parseFrame error = %v, want reason %s", err, tt.wantReason)
			}
			if got.Type != tt.wantType {
				t.Errorf("type = %q, want %q", got.Type, tt.wantType)
			}
			if string(got.ID) != tt.wantID {
				t.Errorf("id = %s, want %s", got.ID, tt.wantID)
			}
		})
	}
}

func TestAnswerFrames(t *testing.T) {
	var ack map[string]any
	if err := json.Unmarshal(marshalAck(json.RawMessage(`"s1"`)), &ack); err != nil {
		t.Fatal(err)
	}
	if ack["type"] != "ack" || ack["id"] != "s1" || len(ack) != 2 {
		t.Errorf("ack = %v, want {type:ack, id:s1}", ack)
	}
	var e map[string]any
	err := apierr.New(apierr.PermissionDenied, ReasonPermissionDenied, "not yours")
	if err := json.Unmarshal(marshalError(json.RawMessage(`42`), err), &e); err != nil {
		t.Fatal(err)
	}
	if e["type"] != "error" || e["id"] != float64(42) || e["reason"] != ReasonPermissionDenied || e["message"] != "not yours" {
		t.Errorf("error frame = %v", e)
	}
}

func TestCloseText(t *testing.T) {
	if got := closeText("PERMISSION_DENIED", "no"); got != "PERMISSION_DENIED: no" {
		t.Errorf("closeText = %q", got)
	}
	long := closeText("INVALID_TOPIC", strings.Repeat("é", 100))
	if len(long) > 123 || !utf8.ValidString(long) || !strings.HasPrefix(long, "INVALID_TOPIC: é") {
		t.Errorf("closeText of a long message = %q (%d bytes), want ≤123 valid UTF-8 bytes", long, len(long))
	}
}
