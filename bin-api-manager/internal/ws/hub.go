package ws

import (
	"sync"

	"voipbin/pkg/event"
)

// hub indexes the connections by the scopes their topics name (a customer id, or "*"), so an
// event is matched only against the connections that could want it.
type hub struct {
	mu      sync.RWMutex
	byScope map[string]map[*conn]struct{}
}

func newHub() *hub { return &hub{byScope: map[string]map[*conn]struct{}{}} }

func (h *hub) add(scope string, c *conn) {
	h.mu.Lock()
	defer h.mu.Unlock()
	set := h.byScope[scope]
	if set == nil {
		set = map[*conn]struct{}{}
		h.byScope[scope] = set
	}
	set[c] = struct{}{}
}

func (h *hub) remove(scope string, c *conn) {
	h.mu.Lock()
	defer h.mu.Unlock()
	set := h.byScope[scope]
	delete(set, c)
	if len(set) == 0 {
		delete(h.byScope, scope)
	}
}

// dispatch offers frame (the encoded ev) to every connection with a matching topic. It never
// blocks on a connection: a full buffer disconnects that client instead.
func (h *hub) dispatch(ev event.Event, frame []byte) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	own := h.byScope[ev.CustomerID]
	for c := range own {
		c.deliver(ev, frame)
	}
	for c := range h.byScope["*"] {
		if _, dup := own[c]; dup { // a superadmin holding both scopes gets the event once
			continue
		}
		c.deliver(ev, frame)
	}
}
