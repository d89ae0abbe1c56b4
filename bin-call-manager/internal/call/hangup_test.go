package call

import (
	"testing"

	"voipbin/pkg/callapi"
)

func TestDerive(t *testing.T) {
	out, in := callapi.DirectionOutgoing, callapi.DirectionIncoming
	tests := []struct {
		name      string
		direction string
		from      callapi.Status
		e         Ending
		want      Outcome
	}{
		// Answered calls end normally; the side is the node's, else the far end.
		{"answered, remote BYE", out, progressing, Ending{Cause: 16, SIPCode: 200, By: "remote"}, Outcome{"normal", "remote", 16}},
		{"answered, no side reported", out, progressing, Ending{SIPCode: 200}, Outcome{"normal", "remote", 16}},
		{"answered, nothing reported", out, progressing, Ending{}, Outcome{"normal", "remote", 16}},
		{"terminating: we hung up", out, terminating, Ending{Cause: 16, SIPCode: 200, By: "remote"}, Outcome{"normal", "local", 16}},
		{"max duration on the node", out, progressing, Ending{Cause: 16, By: "local", Reason: "timeout"}, Outcome{"timeout", "local", 16}},
		{"timeout without a side", out, progressing, Ending{Reason: "timeout"}, Outcome{"timeout", "local", 102}},
		{"quota used up on the node", out, progressing, Ending{Cause: 16, SIPCode: 200, By: "local", Reason: "balance_exhausted"},
			Outcome{"balance_exhausted", "local", 16}},
		{"quota used up, no side reported", out, progressing, Ending{Reason: "balance_exhausted"}, Outcome{"balance_exhausted", "local", 16}},

		// Local cancel before the answer.
		{"canceling, 487", out, canceling, Ending{Cause: 127, SIPCode: 487, By: "local"}, Outcome{"cancel", "local", 127}},
		{"canceling, 487 without a cause", out, canceling, Ending{SIPCode: 487}, Outcome{"cancel", "local", 127}},
		{"canceling, nothing reported", out, canceling, Ending{}, Outcome{"cancel", "local", 16}},
		{"canceling, but the far end was busy first", out, canceling, Ending{Cause: 17, SIPCode: 486, By: "remote"}, Outcome{"cancel", "local", 17}},

		// Unanswered outgoing calls: classified by the final SIP status, else the cause.
		{"486 busy", out, ringing, Ending{Cause: 17, SIPCode: 486, By: "remote"}, Outcome{"busy", "remote", 17}},
		{"600 busy everywhere", out, dialing, Ending{SIPCode: 600}, Outcome{"busy", "remote", 17}},
		{"cause 17 only", out, dialing, Ending{Cause: 17}, Outcome{"busy", "remote", 17}},
		{"480 temporarily unavailable", out, ringing, Ending{SIPCode: 480}, Outcome{"noanswer", "remote", 18}},
		{"408 request timeout", out, dialing, Ending{SIPCode: 408}, Outcome{"noanswer", "remote", 102}},
		{"cause 19 only", out, ringing, Ending{Cause: 19}, Outcome{"noanswer", "remote", 19}},
		{"cause 18 only", out, ringing, Ending{Cause: 18}, Outcome{"noanswer", "remote", 18}},
		{"dial timeout on the node", out, ringing, Ending{Cause: 19, SIPCode: 487, By: "local", Reason: "noanswer"}, Outcome{"noanswer", "local", 19}},
		{"404 not found", out, dialing, Ending{Cause: 1, SIPCode: 404}, Outcome{"failed", "remote", 1}},
		{"403 forbidden", out, dialing, Ending{SIPCode: 403}, Outcome{"failed", "remote", 21}},
		{"503 service unavailable", out, dialing, Ending{SIPCode: 503}, Outcome{"failed", "remote", 41}},
		{"cause 34 only", out, dialing, Ending{Cause: 34}, Outcome{"failed", "remote", 34}},
		{"603 decline", out, ringing, Ending{SIPCode: 603}, Outcome{"failed", "remote", 21}},
		{"487 without our cancel", out, ringing, Ending{SIPCode: 487}, Outcome{"cancel", "local", 127}},
		{"cause 16 before any final response", out, ringing, Ending{Cause: 16}, Outcome{"cancel", "local", 16}},
		{"nothing known", out, dialing, Ending{}, Outcome{"failed", "remote", 41}},
		{"failed by us", out, dialing, Ending{Reason: "failed", By: "local", Cause: 41}, Outcome{"failed", "local", 41}},
		{"dialout reason", out, ringing, Ending{Reason: "dialout"}, Outcome{"dialout", "local", 102}},
		{"invalid hints are ignored", out, ringing, Ending{SIPCode: 486, By: "somebody", Reason: "bored"}, Outcome{"busy", "remote", 17}},

		// Incoming calls: the caller is the remote side.
		{"incoming, caller cancels", in, ringing, Ending{SIPCode: 487}, Outcome{"cancel", "remote", 127}},
		{"incoming, we are busy", in, ringing, Ending{SIPCode: 486}, Outcome{"busy", "local", 17}},
		{"incoming, answered, caller hangs up", in, progressing, Ending{Cause: 16}, Outcome{"normal", "remote", 16}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Derive(tt.direction, tt.from, tt.e); got != tt.want {
				t.Fatalf("Derive(%s, %s, %+v) = %+v, want %+v", tt.direction, tt.from, tt.e, got, tt.want)
			}
		})
	}
}

func TestCauseFromSIP(t *testing.T) {
	tests := []struct{ sip, want int }{
		{0, 0}, {200, 16}, {302, 127},
		{400, 41}, {401, 21}, {403, 21}, {404, 1}, {408, 102}, {410, 22}, {480, 18}, {484, 28},
		{486, 17}, {487, 127}, {488, 65}, {499, 21},
		{500, 41}, {502, 38}, {503, 41}, {504, 102}, {599, 41},
		{600, 17}, {603, 21}, {604, 1}, {606, 58}, {699, 21},
	}
	for _, tt := range tests {
		if got := CauseFromSIP(tt.sip); got != tt.want {
			t.Errorf("CauseFromSIP(%d) = %d, want %d", tt.sip, got, tt.want)
		}
	}
}

func TestSIPFromCause(t *testing.T) {
	tests := []struct{ cause, want int }{
		{0, 0}, {16, 0},
		{1, 404}, {3, 404}, {17, 486}, {18, 408}, {19, 480}, {20, 480}, {21, 403}, {22, 410}, {27, 502},
		{28, 484}, {31, 480}, {34, 503}, {38, 503}, {41, 503}, {47, 503}, {58, 503}, {65, 488},
		{79, 501}, {102, 504}, {111, 500}, {127, 500},
		{25, 480}, {44, 503}, {99, 500},
	}
	for _, tt := range tests {
		if got := SIPFromCause(tt.cause); got != tt.want {
			t.Errorf("SIPFromCause(%d) = %d, want %d", tt.cause, got, tt.want)
		}
	}
}

func TestDefaultCause(t *testing.T) {
	tests := map[string]int{"normal": 16, "cancel": 16, "busy": 17, "noanswer": 19, "timeout": 102, "dialout": 102, "failed": 41}
	for reason, want := range tests {
		if got := DefaultCause(reason); got != want {
			t.Errorf("DefaultCause(%s) = %d, want %d", reason, got, want)
		}
	}
}
