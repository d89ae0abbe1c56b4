package call

import (
	"errors"
	"testing"
	"time"

	"voipbin/pkg/callapi"
)

const (
	dialing     = callapi.StatusDialing
	ringing     = callapi.StatusRinging
	progressing = callapi.StatusProgressing
	canceling   = callapi.StatusCanceling
	terminating = callapi.StatusTerminating
	hangup      = callapi.StatusHangup
)

func TestNext(t *testing.T) {
	type want struct {
		to      callapi.Status
		moves   bool
		invalid bool
	}
	stay := func(s callapi.Status) want { return want{to: s} }
	move := func(s callapi.Status) want { return want{to: s, moves: true} }
	tests := []struct {
		from callapi.Status
		in   Input
		want want
	}{
		{dialing, InputRinging, move(ringing)},
		{ringing, InputRinging, stay(ringing)},
		{progressing, InputRinging, stay(progressing)},
		{canceling, InputRinging, stay(canceling)},
		{terminating, InputRinging, stay(terminating)},
		{hangup, InputRinging, stay(hangup)},

		{dialing, InputAnswered, move(progressing)},
		{ringing, InputAnswered, move(progressing)},
		{progressing, InputAnswered, stay(progressing)},
		{canceling, InputAnswered, stay(canceling)}, // a 2xx crossing our CANCEL
		{terminating, InputAnswered, stay(terminating)},
		{hangup, InputAnswered, stay(hangup)},

		{dialing, InputHangupRequest, move(canceling)},
		{ringing, InputHangupRequest, move(canceling)},
		{progressing, InputHangupRequest, move(terminating)},
		{canceling, InputHangupRequest, stay(canceling)},
		{terminating, InputHangupRequest, stay(terminating)},
		{hangup, InputHangupRequest, want{to: hangup, invalid: true}},

		{dialing, InputEnded, move(hangup)},
		{ringing, InputEnded, move(hangup)},
		{progressing, InputEnded, move(hangup)},
		{canceling, InputEnded, move(hangup)},
		{terminating, InputEnded, move(hangup)},
		{hangup, InputEnded, stay(hangup)},
	}
	for _, tt := range tests {
		t.Run(string(tt.from)+"/"+tt.in.String(), func(t *testing.T) {
			to, moves, err := Next(tt.from, tt.in)
			got := want{to: to, moves: moves, invalid: errors.Is(err, ErrStateInvalid)}
			if got != tt.want {
				t.Fatalf("Next(%s, %s) = %+v, want %+v", tt.from, tt.in, got, tt.want)
			}
		})
	}
}

var t0 = time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)

func newCall(t *testing.T) *Call {
	t.Helper()
	c := New(NewParams{ID: "c0a80000-0000-4000-8000-000000000001", CustomerID: "5e4a0000-0000-4000-8000-000000000001",
		Source:      callapi.Address{Type: callapi.AddressTel, Target: "+15550000001"},
		Destination: callapi.Address{Type: callapi.AddressTel, Target: "+15550000002"},
		DialTimeout: 60 * time.Second, Deadline: t0.Add(2 * time.Hour), FirstCheck: t0.Add(30 * time.Second)}, t0)
	return c
}

func types(evs []Event) []string {
	var out []string
	for _, e := range evs {
		out = append(out, e.Type)
	}
	return out
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// step is one thing that happens to a call in a scenario.
type step struct {
	in     Input
	at     time.Duration // after t0
	ending Ending
}

func apply(c *Call, s step) {
	at := t0.Add(s.at)
	switch s.in {
	case InputRinging:
		c.Ringing(at, at)
	case InputAnswered:
		c.Answer(at, at)
	case InputHangupRequest:
		_, _ = c.RequestHangup(at)
	case InputEnded:
		e := s.ending
		e.At = at
		c.End(e, at)
	}
}

// TestLifecycle drives whole calls, with duplicates and late arrivals, and checks the events,
// their sequence numbers and the final record.
func TestLifecycle(t *testing.T) {
	tests := []struct {
		name         string
		steps        []step
		wantEvents   []string
		wantStatus   callapi.Status
		wantReason   string
		wantBy       string
		wantCause    int
		wantDuration int
	}{
		{name: "answered, remote hangs up after 61.9 s",
			steps: []step{{in: InputRinging, at: time.Second}, {in: InputAnswered, at: 3 * time.Second},
				{in: InputEnded, at: 64900 * time.Millisecond, ending: Ending{Cause: 16, SIPCode: 200, By: "remote"}}},
			wantEvents: []string{"call.created", "call.ringing", "call.answered", "call.ended"},
			wantStatus: hangup, wantReason: "normal", wantBy: "remote", wantCause: 16, wantDuration: 61},
		{name: "duplicates and late arrivals change nothing",
			steps: []step{{in: InputRinging, at: time.Second}, {in: InputRinging, at: time.Second},
				{in: InputAnswered, at: 2 * time.Second}, {in: InputRinging, at: 3 * time.Second}, {in: InputAnswered, at: 2 * time.Second},
				{in: InputEnded, at: 12 * time.Second, ending: Ending{Cause: 16, SIPCode: 200}},
				{in: InputEnded, at: 13 * time.Second, ending: Ending{Cause: 17, SIPCode: 486}},
				{in: InputAnswered, at: 14 * time.Second}, {in: InputRinging, at: 15 * time.Second}},
			wantEvents: []string{"call.created", "call.ringing", "call.answered", "call.ended"},
			wantStatus: hangup, wantReason: "normal", wantBy: "remote", wantCause: 16, wantDuration: 10},
		{name: "busy",
			steps: []step{{in: InputRinging, at: time.Second},
				{in: InputEnded, at: 2 * time.Second, ending: Ending{Cause: 17, SIPCode: 486, By: "remote"}}},
			wantEvents: []string{"call.created", "call.ringing", "call.ended"},
			wantStatus: hangup, wantReason: "busy", wantBy: "remote", wantCause: 17},
		{name: "local hang-up before the answer",
			steps: []step{{in: InputRinging, at: time.Second}, {in: InputHangupRequest, at: 2 * time.Second},
				{in: InputHangupRequest, at: 2 * time.Second},
				{in: InputAnswered, at: 3 * time.Second}, // 2xx crossing the CANCEL
				{in: InputEnded, at: 3 * time.Second, ending: Ending{Cause: 127, SIPCode: 487, By: "local"}}},
			wantEvents: []string{"call.created", "call.ringing", "call.updated", "call.ended"},
			wantStatus: hangup, wantReason: "cancel", wantBy: "local", wantCause: 127},
		{name: "local hang-up after the answer",
			steps: []step{{in: InputAnswered, at: time.Second}, {in: InputHangupRequest, at: 5 * time.Second},
				{in: InputEnded, at: 5500 * time.Millisecond, ending: Ending{Cause: 16, SIPCode: 200, By: "local"}}},
			wantEvents: []string{"call.created", "call.answered", "call.updated", "call.ended"},
			wantStatus: hangup, wantReason: "normal", wantBy: "local", wantCause: 16, wantDuration: 4},
		{name: "hang-up requested then the far end hangs up first",
			steps: []step{{in: InputAnswered, at: time.Second}, {in: InputHangupRequest, at: 5 * time.Second},
				{in: InputEnded, at: 5 * time.Second, ending: Ending{Cause: 16, SIPCode: 200, By: "remote"}}},
			wantEvents: []string{"call.created", "call.answered", "call.updated", "call.ended"},
			wantStatus: hangup, wantReason: "normal", wantBy: "local", wantCause: 16, wantDuration: 4},
		{name: "ended before any event from rtc (dial failed)",
			steps:      []step{{in: InputEnded, at: 0, ending: Ending{Reason: "failed", By: "local", Cause: 41}}},
			wantEvents: []string{"call.created", "call.ended"},
			wantStatus: hangup, wantReason: "failed", wantBy: "local", wantCause: 41},
		{name: "max duration reached on the node",
			steps: []step{{in: InputAnswered, at: time.Second},
				{in: InputEnded, at: time.Hour + time.Second, ending: Ending{Cause: 16, SIPCode: 200, By: "local", Reason: "timeout"}}},
			wantEvents: []string{"call.created", "call.answered", "call.ended"},
			wantStatus: hangup, wantReason: "timeout", wantBy: "local", wantCause: 16, wantDuration: 3600},
		{name: "ended event with a clock behind the answer",
			steps: []step{{in: InputAnswered, at: 10 * time.Second},
				{in: InputEnded, at: 9 * time.Second, ending: Ending{Cause: 16}}},
			wantEvents: []string{"call.created", "call.answered", "call.ended"},
			wantStatus: hangup, wantReason: "normal", wantBy: "remote", wantCause: 16, wantDuration: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newCall(t)
			var evs []Event
			evs = append(evs, c.TakeEvents()...)
			for _, s := range tt.steps {
				apply(c, s)
				evs = append(evs, c.TakeEvents()...)
			}
			if got := types(evs); !equal(got, tt.wantEvents) {
				t.Fatalf("events = %v, want %v", got, tt.wantEvents)
			}
			for i, ev := range evs {
				if ev.Sequence != int64(i+1) || ev.Call.Status != ev.To {
					t.Errorf("event %d (%s): sequence %d, data status %s, to %s; want sequence %d and data status = to",
						i, ev.Type, ev.Sequence, ev.Call.Status, ev.To, i+1)
				}
			}
			if c.Sequence != int64(len(evs)) {
				t.Errorf("call sequence = %d, want %d", c.Sequence, len(evs))
			}
			got := []any{c.Status, c.HangupReason, c.HangupBy, c.HangupCause, c.Duration}
			want := []any{tt.wantStatus, tt.wantReason, tt.wantBy, tt.wantCause, tt.wantDuration}
			for i := range got {
				if got[i] != want[i] {
					t.Fatalf("(status, reason, by, cause, duration) = %v, want %v", got, want)
				}
			}
			if c.TMCheck != nil {
				t.Errorf("an ended call keeps a reaper check time")
			}
			last := evs[len(evs)-1]
			if last.Call.Duration != tt.wantDuration || last.Call.TMHangup == nil {
				t.Errorf("call.ended data: duration %d, tm_hangup %v", last.Call.Duration, last.Call.TMHangup)
			}
		})
	}
}

func TestRequestHangupOfEndedCallIsInvalid(t *testing.T) {
	c := newCall(t)
	c.End(Ending{Cause: 17, SIPCode: 486}, t0)
	changed, err := c.RequestHangup(t0)
	if changed || !errors.Is(err, ErrStateInvalid) {
		t.Fatalf("RequestHangup on an ended call = %v, %v; want false, ErrStateInvalid", changed, err)
	}
}

func TestDuration(t *testing.T) {
	at := func(d time.Duration) *time.Time { x := t0.Add(d); return &x }
	tests := []struct {
		name     string
		answered *time.Time
		hangup   time.Time
		want     int
	}{
		{"never answered", nil, t0.Add(time.Minute), 0},
		{"same instant", at(0), t0, 0},
		{"just under a second", at(0), t0.Add(999 * time.Millisecond), 0},
		{"exactly a second", at(0), t0.Add(time.Second), 1},
		{"whole seconds round down", at(time.Second), t0.Add(62*time.Second + 999*time.Millisecond), 61},
		{"hangup before answer (skew)", at(5 * time.Second), t0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Duration(tt.answered, tt.hangup); got != tt.want {
				t.Fatalf("Duration = %d, want %d", got, tt.want)
			}
		})
	}
}

func TestVisibleTo(t *testing.T) {
	c := newCall(t)
	other := "5e4a0000-0000-4000-8000-000000000099"
	if !c.VisibleTo("") || !c.VisibleTo(c.CustomerID) || c.VisibleTo(other) {
		t.Fatal("scope: want visible to superadmin and owner only")
	}
	now := t0
	c.TMDelete = &now
	if c.VisibleTo("") || c.VisibleTo(c.CustomerID) {
		t.Fatal("a deleted call is visible")
	}
}
