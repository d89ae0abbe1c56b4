package sip_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"voipbin/bin-rtc-manager/internal/carrier"
	"voipbin/bin-rtc-manager/internal/dialog"
	"voipbin/bin-rtc-manager/internal/sip"
	"voipbin/bin-rtc-manager/internal/siptest"
	"voipbin/pkg/callapi"
	"voipbin/pkg/testenv"
)

// recorder is a dialog.Progress that records what it is told.
type recorder struct {
	mu      sync.Mutex
	started *dialog.Dialog
	steps   []string
	answer  dialog.Answer
	end     *dialog.End
	tAns    time.Time
	tEnd    time.Time
}

func (r *recorder) Start(_ context.Context, d *dialog.Dialog) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := *d
	r.started = &c
	return nil
}

func (r *recorder) Ringing(_ context.Context, _ string, code int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.steps = append(r.steps, fmt.Sprintf("ringing %d", code))
}

func (r *recorder) Answered(_ context.Context, _ string, a dialog.Answer) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.steps = append(r.steps, fmt.Sprintf("answered %d", a.SIPCode))
	r.answer, r.tAns = a, time.Now()
}

func (r *recorder) Ended(_ context.Context, _ string, e dialog.End) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.steps = append(r.steps, fmt.Sprintf("ended %d by %s reason %q", e.SIPCode, e.By, e.Reason))
	r.end, r.tEnd = &e, time.Now()
}

func (r *recorder) CSeq(context.Context, string, uint32) {}

func (r *recorder) has(step string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range r.steps {
		if s == step {
			return true
		}
	}
	return false
}

func (r *recorder) ended() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.end != nil
}

func (r *recorder) got() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.steps...)
}

func newUA(t *testing.T, user, pass string) *sip.UA {
	t.Helper()
	return startUA(t, sip.Params{Username: user, Password: pass})
}

// startUA runs a UA on a free loopback port with p (ListenAddress and RTP ports filled in, Log
// when unset).
func startUA(t *testing.T, p sip.Params) *sip.UA {
	t.Helper()
	p.ListenAddress, p.RTPPortMin, p.RTPPortMax = "127.0.0.1:0", 20000, 30000
	if p.Log == nil {
		p.Log = testenv.Logger(t)
	}
	ua, err := sip.NewUA(p)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ua.Run(ctx) }()
	t.Cleanup(func() {
		hctx, hcancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer hcancel()
		_ = ua.HangupAll(hctx)
		cancel()
		<-done
		_ = ua.Close()
	})
	return ua
}

func dial(t *testing.T, ua *sip.UA, uri string, dialTimeout, maxDuration time.Duration) (*recorder, string) {
	t.Helper()
	return dialTo(t, ua, uri, false, dialTimeout, maxDuration, 0)
}

func dialQuota(t *testing.T, ua *sip.UA, uri string, dialTimeout, maxDuration time.Duration, quota int) (*recorder, string) {
	t.Helper()
	return dialTo(t, ua, uri, false, dialTimeout, maxDuration, quota)
}

// dialTo dials uri; trunk marks the dialog as one to the tel trunk.
func dialTo(t *testing.T, ua *sip.UA, uri string, trunk bool, dialTimeout, maxDuration time.Duration, quota int) (*recorder, string) {
	t.Helper()
	r := &recorder{}
	id := testenv.Name("call")
	d := &dialog.Dialog{CallID: id, CustomerID: "c1", NodeID: "n1", State: dialog.StateCalling, RequestURI: uri,
		Trunk: trunk, DialTimeout: dialTimeout, MaxDuration: maxDuration, Quota: quota}
	if err := ua.Call(context.Background(), d, callapi.Address{Type: "tel", Target: "+15550001111", Name: "Alice"}, r); err != nil {
		t.Fatalf("Call: %v", err)
	}
	return r, id
}

func TestCallOutcomes(t *testing.T) {
	t.Parallel()
	hangupAfter := func(step string) func(t *testing.T, ua *sip.UA, r *recorder, id string) {
		return func(t *testing.T, ua *sip.UA, r *recorder, id string) {
			testenv.Eventually(t, 10*time.Second, step, func() bool { return r.has(step) })
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			found, err := ua.Hangup(ctx, id, "")
			if !found || err != nil {
				t.Errorf("Hangup() = %v, %v; want true, nil", found, err)
			}
		}
	}
	tests := []struct {
		name        string
		scenario    string
		args        []string
		tcp         bool
		dialTimeout time.Duration
		maxDuration time.Duration
		act         func(t *testing.T, ua *sip.UA, r *recorder, id string)
		want        []string
		minTalk     time.Duration // least time between answer and end
	}{
		{name: "answered then remote BYE", scenario: "uas_answer_bye.xml", args: []string{"-d", "1000"},
			want: []string{"ringing 180", "answered 200", `ended 200 by remote reason ""`}, minTalk: 900 * time.Millisecond},
		{name: "busy", scenario: "uas_busy.xml", want: []string{"ringing 180", `ended 486 by remote reason ""`}},
		{name: "service unavailable", scenario: "uas_503.xml", want: []string{`ended 503 by remote reason ""`}},
		{name: "no answer: dial timeout cancels", scenario: "uas_noanswer.xml", dialTimeout: time.Second,
			want: []string{"ringing 180", `ended 487 by local reason "noanswer"`}},
		{name: "local hangup before answer cancels", scenario: "uas_noanswer.xml", act: hangupAfter("ringing 180"),
			want: []string{"ringing 180", `ended 487 by local reason ""`}},
		{name: "local hangup after answer sends BYE", scenario: "uas_answer_wait.xml", act: hangupAfter("answered 200"),
			want: []string{"ringing 180", "answered 200", `ended 200 by local reason ""`}},
		{name: "max duration sends BYE", scenario: "uas_answer_wait.xml", maxDuration: time.Second,
			want: []string{"ringing 180", "answered 200", `ended 200 by local reason "timeout"`}, minTalk: 900 * time.Millisecond},
		{name: "over TCP", scenario: "uas_answer_bye.xml", tcp: true, args: []string{"-d", "200"},
			want: []string{"ringing 180", "answered 200", `ended 200 by remote reason ""`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ua := newUA(t, "", "")
			peer := siptest.StartSipp(t, tt.scenario, tt.tcp, tt.args...)
			uri := "sip:+15550002222@" + peer.Addr
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
			r, id := dial(t, ua, uri, dt, md)
			if tt.act != nil {
				tt.act(t, ua, r, id)
			}
			testenv.Eventually(t, 20*time.Second, "the dialog to end", r.ended)
			if got := r.got(); fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("steps = %q, want %q", got, tt.want)
			}
			if tt.minTalk > 0 {
				if talk := r.tEnd.Sub(r.tAns); talk < tt.minTalk || talk > tt.minTalk+3*time.Second {
					t.Errorf("talk time = %s, want about %s", talk, tt.minTalk)
				}
			}
			peer.Wait(t, 20*time.Second)
			testenv.Eventually(t, 5*time.Second, "the session to be released", func() bool { return !ua.Running(id) })
		})
	}
}

// The node ends an answered call itself when its quota runs out (BYE, reason balance_exhausted),
// however far the quota was extended while it ran, and nobody needs to be reachable for that.
func TestQuotaEndsTheCall(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		quota    int
		extendTo int // raised right after the answer (0: never)
		wantTalk time.Duration
	}{
		{name: "the first slice runs out", quota: 1, wantTalk: time.Second},
		{name: "an extension moves the deadline", quota: 1, extendTo: 2, wantTalk: 2 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ua := newUA(t, "", "")
			peer := siptest.StartSipp(t, "uas_answer_wait.xml", false)
			r, id := dialQuota(t, ua, "sip:+15550002222@"+peer.Addr, 30*time.Second, time.Hour, tt.quota)
			if tt.extendTo > 0 {
				testenv.Eventually(t, 10*time.Second, "the answer", func() bool { return r.has("answered 200") })
				if !ua.Extend(id, tt.extendTo) || !ua.Extend(id, tt.quota) { // a lower quota changes nothing
					t.Fatal("Extend() = false for a running dialog")
				}
			}
			testenv.Eventually(t, 10*time.Second, "the dialog to end", r.ended)
			if want := `ended 200 by local reason "balance_exhausted"`; !r.has(want) {
				t.Fatalf("steps = %q, want %q", r.got(), want)
			}
			if talk := r.tEnd.Sub(r.tAns); talk < tt.wantTalk-100*time.Millisecond || talk > tt.wantTalk+time.Second {
				t.Errorf("talk time = %s, want %s (the quota) and not much more", talk, tt.wantTalk)
			}
			peer.Wait(t, 20*time.Second)
			if ua.Extend(id, 10) {
				t.Error("Extend() = true for an ended dialog")
			}
		})
	}
}

// A hang-up can carry the reason the node reports (the call manager's balance_exhausted).
func TestHangupReason(t *testing.T) {
	t.Parallel()
	ua := newUA(t, "", "")
	peer := siptest.StartSipp(t, "uas_answer_wait.xml", false)
	r, id := dial(t, ua, "sip:+15550002222@"+peer.Addr, 30*time.Second, time.Hour)
	testenv.Eventually(t, 10*time.Second, "the answer", func() bool { return r.has("answered 200") })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if found, err := ua.Hangup(ctx, id, callapi.ReasonBalanceExhausted); !found || err != nil {
		t.Fatalf("Hangup() = %v, %v", found, err)
	}
	if want := `ended 200 by local reason "balance_exhausted"`; !r.has(want) {
		t.Fatalf("steps = %q, want %q", r.got(), want)
	}
	peer.Wait(t, 20*time.Second)
}

func TestDigestAuthentication(t *testing.T) {
	t.Parallel()
	ua := newUA(t, "trunkuser", "s3cret")
	peer := siptest.StartSipp(t, "uas_auth.xml", false)
	r, id := dialTo(t, ua, "sip:+15550003333@"+peer.Addr, true, 30*time.Second, time.Hour, 0)
	testenv.Eventually(t, 10*time.Second, "answer after the challenge", func() bool { return r.has("answered 200") })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := ua.Hangup(ctx, id, ""); err != nil {
		t.Fatal(err)
	}
	peer.Wait(t, 10*time.Second)
}

// A sip destination that challenges gets no digest: the trunk's credentials answer the trunk only,
// and the dial ends with the 401. The same challenge from the trunk is answered.
func TestTrunkCredentialsAnswerOnlyTheTrunk(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name     string
		trunk    bool
		scenario string
		want     string
		wantAuth bool
	}{
		{"sip destination: no credentials", false, "uas_challenge.xml", `ended 401 by remote reason ""`, false},
		{"tel trunk: credentials", true, "uas_auth.xml", "answered 200", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ua := newUA(t, "trunkuser", "s3cret")
			peer := siptest.StartSippCapture(t, tt.scenario, false)
			r, id := dialTo(t, ua, "sip:+15550003333@"+peer.Addr, tt.trunk, 30*time.Second, time.Hour, 0)
			testenv.Eventually(t, 10*time.Second, tt.want, func() bool { return r.has(tt.want) })
			if tt.trunk {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				if _, err := ua.Hangup(ctx, id, ""); err != nil {
					t.Fatal(err)
				}
			}
			peer.Wait(t, 10*time.Second)
			log := peer.Messages(t)
			if got := strings.Contains(log, "Authorization:"); got != tt.wantAuth {
				t.Errorf("an Authorization header was sent: %v, want %v\n%s", got, tt.wantAuth, log)
			}
			if got := strings.Contains(log, "trunkuser"); got != tt.wantAuth {
				t.Errorf("the trunk username was sent: %v, want %v", got, tt.wantAuth)
			}
		})
	}
}

func TestDigestWrongPasswordFails(t *testing.T) {
	t.Parallel()
	ua := newUA(t, "trunkuser", "wrong")
	peer := siptest.StartSipp(t, "uas_auth.xml", false)
	r, _ := dialTo(t, ua, "sip:+15550003333@"+peer.Addr, true, 30*time.Second, time.Hour, 0)
	testenv.Eventually(t, 10*time.Second, "the dial to fail", r.ended)
	if want := `ended 403 by remote reason ""`; !r.has(want) {
		t.Errorf("steps = %q, want %q", r.got(), want)
	}
}

// A second node ends an answered dialog from its stored state alone: its BYE reaches the peer
// in the dialog the first node set up.
func TestEndStatelessBye(t *testing.T) {
	t.Parallel()
	// The peer is the carrier simulator (sipgo): unlike sipp, it answers a request at its Via.
	owner := newUA(t, "", "")
	peer := startCarrier(t)
	r, _ := dial(t, owner, "sip:+1200000000@"+peer.Addr(), 30*time.Second, time.Hour)
	testenv.Eventually(t, 10*time.Second, "answer", func() bool { return r.has("answered 200") })
	testenv.Eventually(t, 5*time.Second, "the peer's dialog", func() bool { return peer.Active() == 1 })

	r.mu.Lock()
	d := *r.started
	d.State, d.To, d.RemoteTarget, d.RouteSet = dialog.StateAnswered, r.answer.To, r.answer.RemoteTarget, r.answer.RouteSet
	r.mu.Unlock()
	other := newUA(t, "", "")
	t.Logf("other UA at %s", other.Addr())
	end, err := other.EndStateless(context.Background(), d)
	if err != nil || end.SIPCode != 200 || end.By != callapi.HangupByLocal {
		t.Fatalf("EndStateless() = %+v, %v; want 200 by local", end, err)
	}
	// The BYE ended the dialog at the peer.
	testenv.Eventually(t, 5*time.Second, "the peer to hang up", func() bool { return peer.Active() == 0 })
	// A dialog the peer has already ended (481) was ended by the peer, not by us.
	d.CSeq++
	end, err = other.EndStateless(context.Background(), d)
	if err != nil || end.By != callapi.HangupByRemote {
		t.Fatalf("EndStateless() of a dialog the peer ended = %+v, %v; want by remote", end, err)
	}
}

func startCarrier(t *testing.T) *carrier.Server {
	t.Helper()
	s, err := carrier.New("127.0.0.1:0", testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return s
}

func TestHangupAllEndsEveryDialog(t *testing.T) {
	t.Parallel()
	ua := newUA(t, "", "")
	ringing := siptest.StartSipp(t, "uas_noanswer.xml", false)
	talking := siptest.StartSipp(t, "uas_answer_wait.xml", false)
	r1, _ := dial(t, ua, "sip:+15550005555@"+ringing.Addr, 30*time.Second, time.Hour)
	r2, _ := dial(t, ua, "sip:+15550006666@"+talking.Addr, 30*time.Second, time.Hour)
	testenv.Eventually(t, 10*time.Second, "ringing and answered", func() bool { return r1.has("ringing 180") && r2.has("answered 200") })
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := ua.HangupAll(ctx); err != nil {
		t.Fatal(err)
	}
	if !r1.has(`ended 487 by local reason ""`) || !r2.has(`ended 200 by local reason ""`) {
		t.Errorf("steps = %q and %q", r1.got(), r2.got())
	}
	ringing.Wait(t, 10*time.Second)
	talking.Wait(t, 10*time.Second)
	if err := ua.Call(ctx, &dialog.Dialog{CallID: "late", RequestURI: "sip:x@127.0.0.1:9", DialTimeout: time.Second, MaxDuration: time.Second},
		callapi.Address{}, &recorder{}); err == nil {
		t.Error("Call() after HangupAll succeeded, want it refused")
	}
}
