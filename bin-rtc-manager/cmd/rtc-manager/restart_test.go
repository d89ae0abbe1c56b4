package main

import (
	"context"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"voipbin/bin-rtc-manager/internal/siptest"
	"voipbin/pkg/callapi"
	"voipbin/pkg/rtcapi"
	"voipbin/pkg/testenv"
)

// binaryNode runs the rtc manager's binary as node nodeID, so a test can SIGKILL it mid-call.
type binaryNode struct {
	cmd    *exec.Cmd
	killed bool
}

func startBinaryNode(t *testing.T, w *world, nodeID string, extra map[string]string) *binaryNode {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "rtc-manager")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	env, _ := nodeEnv(t, w.url, nodeID, w.sim.Addr(), extra)
	n := &binaryNode{cmd: exec.Command(bin)}
	for k, v := range env {
		n.cmd.Env = append(n.cmd.Env, k+"="+v)
	}
	logs := &syncBuffer{}
	n.cmd.Stdout, n.cmd.Stderr = logs, logs
	if err := n.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		n.kill(t)
		if t.Failed() {
			t.Logf("logs of %s (the binary):\n%s", nodeID, logs.String())
		}
	})
	waitServing(t, w.rtc, nodeID)
	return n
}

func (n *binaryNode) kill(t *testing.T) time.Time {
	t.Helper()
	if !n.killed {
		if err := n.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		_ = n.cmd.Wait()
		n.killed = true
	}
	return time.Now()
}

// answeredCall dials the carrier number on the world's node(s) and returns the call and when
// rtc.answered says it was answered.
func answeredCall(t *testing.T, w *world, nodeID, number string) (string, time.Time) {
	t.Helper()
	callID, resp := w.dial(t, tel(number), 0)
	if resp.NodeID != nodeID {
		t.Fatalf("dialled by %s, want %s", resp.NodeID, nodeID)
	}
	testenv.Eventually(t, 10*time.Second, "answer", func() bool { return len(w.events.byCall(callID)) == 2 })
	var answered rtcapi.Event
	_ = json.Unmarshal(w.events.byCall(callID)[1].Data, &answered)
	return callID, answered.At
}

// waitBeat waits until Redis holds a heartbeat of nodeID later than after, and returns it.
func waitBeat(t *testing.T, nodeID string, after time.Time) time.Time {
	t.Helper()
	rdb := testenv.Redis(t)
	var beat time.Time
	testenv.Eventually(t, 5*time.Second, "a heartbeat after "+after.String(), func() bool {
		v, err := rdb.Get(context.Background(), "rtc:node:"+nodeID+":alive").Result()
		if err != nil {
			return false
		}
		_, at, _ := strings.Cut(v, " ")
		beat, err = time.Parse(time.RFC3339Nano, at)
		return err == nil && beat.After(after)
	})
	return beat
}

// A node killed mid-call while the carrier hangs up (+1200000003: 3 s after its answer), then
// started again with the same NODE_ID, ends the dialog its previous run left — and records what
// is true: the carrier hung up (by remote); at the same address the carrier's resent BYE arrives
// and its first sending is worked out from the resend schedule; elsewhere nobody saw when, and
// the end is dated the dead run's last heartbeat. (It used to end by local at the restart.)
func TestRestartedNodeRecordsTheCarriersHangup(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	tests := []struct {
		name string
		// sameAddress restarts on the dead run's SIP address, within the carrier's BYE resends;
		// otherwise elsewhere, after the carrier gave up (its own BYE got no answer).
		sameAddress bool
	}{
		{"elsewhere, after the carrier gave up: the reap's BYE gets 481", false},
		{"at the same address, within the BYE's resends: the resent BYE is taken", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newWorld(t)
			nodeID := testenv.Name("restarted")
			sipAddr := "127.0.0.1:" + strconv.Itoa(siptest.FreePort(t))
			first := startBinaryNode(t, w, nodeID, map[string]string{"SIP_LISTEN_ADDRESS": sipAddr})
			callID, answeredAt := answeredCall(t, w, nodeID, "+1200000003")
			beat := waitBeat(t, nodeID, answeredAt.Add(time.Second)) // killed about 2 s before the BYE
			killedAt := first.kill(t)

			extra := map[string]string{}
			if tt.sameAddress {
				extra["SIP_LISTEN_ADDRESS"] = sipAddr
				// Back just after the carrier's first BYE went to the dead address.
				testenv.Eventually(t, 10*time.Second, "the carrier's first BYE", func() bool {
					return time.Now().After(answeredAt.Add(3300 * time.Millisecond))
				})
			} else {
				testenv.Eventually(t, 15*time.Second, "the carrier to give up its BYE", func() bool { return w.sim.Active() == 0 })
			}
			startNodeID(t, w.url, nodeID, w.sim.Addr(), extra)
			end := w.waitEnded(t, callID, 20*time.Second)
			if end.By != callapi.HangupByRemote || end.SIPCode != 200 || end.Cause != 16 {
				t.Errorf("rtc.ended = %+v, want by remote, 200, cause 16", end)
			}
			if tt.sameAddress {
				// Dated by the resend schedule: the carrier's first sending, 3 s after its answer.
				if talk := end.At.Sub(answeredAt); talk < 2900*time.Millisecond || talk > 3500*time.Millisecond {
					t.Errorf("ended %s after the answer, want the carrier's first BYE at 3 s", talk)
				}
			} else if end.At.Before(beat) || end.At.After(killedAt) {
				t.Errorf("ended at %s, want the dead run's last heartbeat: between %s and the kill %s", end.At, beat, killedAt)
			}
			t.Logf("answered %s, killed %s, ended at %s (%.2f s after the answer)", answeredAt, killedAt, end.At, end.At.Sub(answeredAt).Seconds())
		})
	}
}

// The carrier's BYE for a dialog whose node died reaches the node now at that address (here a
// new node on the dead one's SIP port, up well before the BYE): it finds the dialog by its SIP
// Call-ID, answers 200 and records the end by remote at the BYE's arrival. (It used to answer
// 481, and the dialog stayed live until the call manager's reaper gave up on it.)
func TestBYEForADeadNodesDialogIsRecorded(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	w := newWorld(t)
	sipAddr := "127.0.0.1:" + strconv.Itoa(siptest.FreePort(t))
	deadID := testenv.Name("dead")
	dead := startBinaryNode(t, w, deadID, map[string]string{"SIP_LISTEN_ADDRESS": sipAddr})
	callID, answeredAt := answeredCall(t, w, deadID, "+1200000008") // the carrier hangs up 8 s after its answer
	dead.kill(t)

	next := w.node(t, map[string]string{"SIP_LISTEN_ADDRESS": sipAddr}) // another identity, same address
	end := w.waitEnded(t, callID, 20*time.Second)
	if end.By != callapi.HangupByRemote || end.SIPCode != 200 || end.Cause != 16 {
		t.Errorf("rtc.ended = %+v, want by remote, 200, cause 16", end)
	}
	if talk := end.At.Sub(answeredAt); talk < 7900*time.Millisecond || talk > 8500*time.Millisecond {
		t.Errorf("ended %s after the answer, want the carrier's BYE at 8 s", talk)
	}
	testenv.Eventually(t, 10*time.Second, "the carrier to see its BYE answered", func() bool { return w.sim.Active() == 0 })
	t.Logf("ended %.2f s after the answer, recorded by %s", end.At.Sub(answeredAt).Seconds(), next.id)
}
