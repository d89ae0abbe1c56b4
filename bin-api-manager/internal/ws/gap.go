package ws

import (
	"encoding/json"
	"time"
)

// GapFrame tells a client that events may have been missed: this instance's event stream was
// interrupted (a broker restart or a lost connection) and has just resumed on a new queue, and the
// events published in between are not replayed. The client should re-read the state of what it
// follows (GET /v1.0/calls/{id}, …) and carry on: its subscriptions are kept.
type GapFrame struct {
	Type   string `json:"type"`   // "events_gap"
	Reason string `json:"reason"` // "event stream interrupted"
	// Since is when the interruption was noticed; events published from shortly before it (the
	// broker's detection delay) until this frame may be missing.
	Since time.Time `json:"since"`
}

// FrameEventsGap is GapFrame's type.
const FrameEventsGap = "events_gap"

// streamResumed runs when the consumer is back after an interruption, before any event of the new
// queue is handed out: every connection holding a topic is told, in order with its events.
func (h *Handler) streamResumed(interrupted time.Time) {
	frame, _ := json.Marshal(GapFrame{Type: FrameEventsGap, Reason: "event stream interrupted", Since: interrupted.UTC()})
	h.mu.Lock()
	conns := make([]*conn, 0, len(h.conns))
	for c := range h.conns {
		conns = append(conns, c)
	}
	h.mu.Unlock()
	told := 0
	for _, c := range conns {
		if c.notifyGap(frame) {
			told++
		}
	}
	h.metrics.gaps.Inc()
	h.log.Warn("websocket event stream resumed after an interruption; clients told to re-read state",
		"interrupted_at", interrupted.UTC(), "connections_told", told)
}

// notifyGap queues the gap frame if the connection follows anything.
func (c *conn) notifyGap(frame []byte) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.topics) == 0 || c.closed {
		return false
	}
	c.offerLocked(outFrame{data: frame})
	return true
}
