package carrier_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"voipbin/bin-rtc-manager/internal/carrier"
	"voipbin/bin-rtc-manager/internal/dialog"
	"voipbin/bin-rtc-manager/internal/sip"
	"voipbin/pkg/callapi"
	"voipbin/pkg/testenv"
)

func TestPlan(t *testing.T) {
	tests := []struct {
		user string
		want carrier.Behaviour
	}{
		{"+1200000005", carrier.Behaviour{Kind: carrier.Answer, RingFor: time.Second, HangupAfter: 5 * time.Second}},
		{"1200000030", carrier.Behaviour{Kind: carrier.Answer, RingFor: time.Second, HangupAfter: 30 * time.Second}},
		{"+1200000000", carrier.Behaviour{Kind: carrier.Answer, RingFor: time.Second}},
		{"+1200", carrier.Behaviour{Kind: carrier.Answer, RingFor: time.Second}},
		{"+1200999999999", carrier.Behaviour{Kind: carrier.Answer, RingFor: time.Second, HangupAfter: 24 * time.Hour}},
		{"+1180000000", carrier.Behaviour{Kind: carrier.RingForever}},
		{"+1486000000", carrier.Behaviour{Kind: carrier.Reject, Code: 486}},
		{"+1403000000", carrier.Behaviour{Kind: carrier.Reject, Code: 403}},
		{"+1404000000", carrier.Behaviour{Kind: carrier.Reject, Code: 404}},
		{"+1503000000", carrier.Behaviour{Kind: carrier.Reject, Code: 503}},
		{"+1603000000", carrier.Behaviour{Kind: carrier.Reject, Code: 603}},
		{"+1700000000", carrier.Behaviour{Kind: carrier.Reject, Code: 404}},
		{"+1399000000", carrier.Behaviour{Kind: carrier.Reject, Code: 404}},
		{"+4915112345", carrier.Behaviour{Kind: carrier.Reject, Code: 404}},
		{"alice", carrier.Behaviour{Kind: carrier.Reject, Code: 404}},
		{"", carrier.Behaviour{Kind: carrier.Reject, Code: 404}},
		{"+12", carrier.Behaviour{Kind: carrier.Reject, Code: 404}},
	}
	for _, tt := range tests {
		t.Run(tt.user, func(t *testing.T) {
			if got := carrier.Plan(tt.user); got != tt.want {
				t.Errorf("Plan(%q) = %+v, want %+v", tt.user, got, tt.want)
			}
		})
	}
}

type recorder struct {
	mu    sync.Mutex
	steps []string
	tAns  time.Time
	tEnd  time.Time
	done  bool
}

func (r *recorder) add(s string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.steps = append(r.steps, s)
}
func (r *recorder) Start(context.Context, *dialog.Dialog) error { return nil }
func (r *recorder) Ringing(_ context.Context, _ string, code int) {
	r.add(fmt.Sprint("ringing ", code))
}
func (r *recorder) CSeq(context.Context, string, uint32) {}
func (r *recorder) Answered(_ context.Context, _ string, a dialog.Answer) {
	r.add(fmt.Sprint("answered ", a.SIPCode))
	r.mu.Lock()
	r.tAns = time.Now()
	r.mu.Unlock()
}
func (r *recorder) Ended(_ context.Context, _ string, e dialog.End) {
	r.add(fmt.Sprintf("ended %d by %s reason %q", e.SIPCode, e.By, e.Reason))
	r.mu.Lock()
	r.tEnd, r.done = time.Now(), true
	r.mu.Unlock()
}
func (r *recorder) snapshot() ([]string, bool, time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.steps...), r.done, r.tEnd.Sub(r.tAns)
}

// Every number of the plan, called by the rtc manager's user agent over UDP and TCP.
func TestNumberPlanOverSIP(t *testing.T) {
	t.Parallel()
	sim, err := carrier.New("127.0.0.1:0", testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	simDone := make(chan error, 1)
	go func() { simDone <- sim.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-simDone })

	ua, err := sip.NewUA(sip.Params{ListenAddress: "127.0.0.1:0", RTPPortMin: 20000, RTPPortMax: 30000, Log: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	uaCtx, uaCancel := context.WithCancel(context.Background())
	uaDone := make(chan error, 1)
	go func() { uaDone <- ua.Run(uaCtx) }()
	t.Cleanup(func() {
		hctx, c := context.WithTimeout(context.Background(), 10*time.Second)
		defer c()
		_ = ua.HangupAll(hctx)
		uaCancel()
		<-uaDone
		_ = ua.Close()
	})

	tests := []struct {
		number      string
		tcp         bool
		dialTimeout time.Duration
		maxDuration time.Duration
		want        []string
		talk        time.Duration // expected time from answer to end
	}{
		{number: "+1200000002", want: []string{"ringing 180", "answered 200", `ended 200 by remote reason ""`}, talk: 2 * time.Second},
		{number: "+1200000001", tcp: true, want: []string{"ringing 180", "answered 200", `ended 200 by remote reason ""`}, talk: time.Second},
		{number: "+1200000000", maxDuration: 2 * time.Second, want: []string{"ringing 180", "answered 200", `ended 200 by local reason "timeout"`}, talk: 2 * time.Second},
		{number: "+1180000000", dialTimeout: 2 * time.Second, want: []string{"ringing 180", `ended 487 by local reason "noanswer"`}},
		{number: "+1486000000", want: []string{"ringing 180", `ended 486 by remote reason ""`}},
		{number: "+1403000000", want: []string{"ringing 180", `ended 403 by remote reason ""`}},
		{number: "+1404000000", want: []string{`ended 404 by remote reason ""`}},
		{number: "+1503000000", want: []string{"ringing 180", `ended 503 by remote reason ""`}},
		{number: "+1603000000", tcp: true, want: []string{"ringing 180", `ended 603 by remote reason ""`}},
		{number: "+4915112345", want: []string{`ended 404 by remote reason ""`}},
	}
	for _, tt := range tests {
		name := tt.number
		if tt.tcp {
			name += "/tcp"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			uri := "sip:" + tt.number + "@" + sim.Addr()
			if tt.tcp {
				uri += ";transport=tcp"
			}
			dt, md := tt.dialTimeout, tt.maxDuration
			if dt == 0 {
				dt = 30 * time.Second
			}
			if md == 0 {
				md = time.Hour
			}
			r := &recorder{}
			d := &dialog.Dialog{CallID: testenv.Name("call"), RequestURI: uri, DialTimeout: dt, MaxDuration: md}
			if err := ua.Call(context.Background(), d, callapi.Address{Type: "tel", Target: "+15550001111"}, r); err != nil {
				t.Fatal(err)
			}
			testenv.Eventually(t, 20*time.Second, "the call to end", func() bool { _, done, _ := r.snapshot(); return done })
			got, _, talk := r.snapshot()
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("steps = %q, want %q", got, tt.want)
			}
			if tt.talk > 0 && (talk < tt.talk-100*time.Millisecond || talk > tt.talk+2*time.Second) {
				t.Errorf("answered for %s, want about %s", talk, tt.talk)
			}
		})
	}
}
