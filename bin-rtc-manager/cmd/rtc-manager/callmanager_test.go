package main

import (
	"context"
	"net/http"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"voipbin/bin-rtc-manager/internal/siptest"
	"voipbin/pkg/apierr"
	"voipbin/pkg/billingapi"
	"voipbin/pkg/callapi"
	"voipbin/pkg/rpc"
	"voipbin/pkg/testenv"
)

// startCallManager builds and runs the real call manager (another module of the workspace, as a
// process: services never import each other) on the world's broker, with a database of its own
// and a billing stub that lets every call through.
func startCallManager(t *testing.T, w *world) *callapi.Client {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "call-manager")
	if out, err := exec.Command("go", "build", "-o", bin, "../../../bin-call-manager/cmd/call-manager").CombinedOutput(); err != nil {
		t.Fatalf("go build call-manager: %v\n%s", err, out)
	}
	env := []string{"DATABASE_DSN=" + testenv.MySQLDSN(t), "RABBITMQ_ADDRESS=" + w.url, "REDIS_ADDRESS=" + testenv.RedisAddress(),
		"ADMIN_ADDRESS=127.0.0.1:" + strconv.Itoa(siptest.FreePort(t)), "LOG_LEVEL=info"}
	if out, err := (&exec.Cmd{Path: bin, Args: []string{bin, "migrate"}, Env: env}).CombinedOutput(); err != nil {
		t.Fatalf("call-manager migrate: %v\n%s", err, out)
	}
	logs := &syncBuffer{}
	cmd := &exec.Cmd{Path: bin, Args: []string{bin}, Env: env, Stdout: logs, Stderr: logs}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("call-manager logs:\n%s", logs.String())
		}
	})

	billing := rpc.NewServer(w.conn, billingapi.Queue, testenv.Logger(t), rpc.ServerOptions{})
	billing.Handle(billingapi.RouteGate, func(context.Context, *rpc.Request) (*rpc.Response, error) {
		return rpc.JSON(http.StatusOK, billingapi.GateResponse{Allowed: true})
	})
	billing.Handle(billingapi.RouteRelease, func(context.Context, *rpc.Request) (*rpc.Response, error) {
		return &rpc.Response{StatusCode: http.StatusNoContent}, nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- billing.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	client := rpc.NewClient(w.conn, testenv.Logger(t), rpc.ClientOptions{})
	t.Cleanup(client.Close)
	calls := callapi.NewClient(client)
	testenv.Eventually(t, 30*time.Second, "the call manager to serve", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err := calls.Get(ctx, "", "00000000-0000-0000-0000-000000000000")
		return apierr.HasReason(err, callapi.ErrReasonCallNotFound)
	})
	return calls
}

// Calls placed on the call manager, dialled by this rtc manager to sipp, end with the right
// status, reason, side, SIP code, cause and duration in the call manager's record.
func TestThroughCallManager(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the call manager")
	}
	w := newWorld(t)
	w.node(t, nil)
	calls := startCallManager(t, w)

	waitStatus := func(t *testing.T, id string, status callapi.Status) {
		testenv.Eventually(t, 15*time.Second, "call "+string(status), func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			c, err := calls.Get(ctx, w.customer, id)
			return err == nil && c.Status == status
		})
	}
	hangup := func(after callapi.Status) func(t *testing.T, id string) {
		return func(t *testing.T, id string) {
			waitStatus(t, id, after)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if _, err := calls.Hangup(ctx, w.customer, id); err != nil {
				t.Fatalf("Hangup: %v", err)
			}
		}
	}
	tests := []struct {
		name     string
		scenario string
		args     []string
		timeout  int
		act      func(t *testing.T, id string)
		want     callapi.Call // status hangup is implied
	}{
		{name: "answered, remote BYE after 2 s", scenario: "uas_answer_bye.xml", args: []string{"-d", "2000"},
			want: callapi.Call{HangupReason: "normal", HangupBy: "remote", SIPCode: 200, HangupCause: 16, Duration: 2}},
		{name: "busy", scenario: "uas_busy.xml", want: callapi.Call{HangupReason: "busy", HangupBy: "remote", SIPCode: 486, HangupCause: 17}},
		{name: "503", scenario: "uas_503.xml", want: callapi.Call{HangupReason: "failed", HangupBy: "remote", SIPCode: 503, HangupCause: 41}},
		{name: "no answer", scenario: "uas_noanswer.xml", timeout: 2,
			want: callapi.Call{HangupReason: "noanswer", HangupBy: "local", SIPCode: 487, HangupCause: 19}},
		{name: "hung up while ringing", scenario: "uas_noanswer.xml", act: hangup(callapi.StatusRinging),
			want: callapi.Call{HangupReason: "cancel", HangupBy: "local", SIPCode: 487, HangupCause: 16}},
		{name: "hung up after the answer", scenario: "uas_answer_wait.xml", act: hangup(callapi.StatusProgressing),
			want: callapi.Call{HangupReason: "normal", HangupBy: "local", SIPCode: 200, HangupCause: 16}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			peer := siptest.StartSipp(t, tt.scenario, false, tt.args...)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			created, err := calls.Create(ctx, callapi.CreateRequest{CustomerID: w.customer,
				Source:       callapi.Address{Type: "tel", Target: "+15550001111"},
				Destinations: []callapi.Address{{Type: "sip", Target: "+15550002222@" + peer.Addr}}, Timeout: tt.timeout})
			if err != nil || len(created) != 1 {
				t.Fatalf("Create() = %v, %v", created, err)
			}
			id := created[0].ID
			if tt.act != nil {
				tt.act(t, id)
			}
			waitStatus(t, id, callapi.StatusHangup)
			got, err := calls.Get(ctx, w.customer, id)
			if err != nil {
				t.Fatal(err)
			}
			if got.HangupReason != tt.want.HangupReason || got.HangupBy != tt.want.HangupBy || got.SIPCode != tt.want.SIPCode ||
				got.HangupCause != tt.want.HangupCause || got.Duration != tt.want.Duration {
				t.Errorf("call = reason %s by %s sip %d cause %d duration %d; want reason %s by %s sip %d cause %d duration %d",
					got.HangupReason, got.HangupBy, got.SIPCode, got.HangupCause, got.Duration,
					tt.want.HangupReason, tt.want.HangupBy, tt.want.SIPCode, tt.want.HangupCause, tt.want.Duration)
			}
			peer.Wait(t, 20*time.Second)
		})
	}
}
