package call

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"time"

	"github.com/google/uuid"

	"voipbin/pkg/callapi"
)

// Paging limits of GET /v1/calls.
const (
	DefaultPageSize = 25
	MaxPageSize     = 100
)

// Filter selects calls for Store.List: not deleted, matching every set field, newest first
// (tm_create, then id, descending), after the cursor if set, skipping Offset, at most Limit.
type Filter struct {
	CustomerID string
	Status     callapi.Status
	Direction  string
	After      *Cursor
	Offset     int
	Limit      int
}

// Cursor is the position after the last call of a page.
type Cursor struct {
	TMCreate time.Time `json:"t"`
	ID       string    `json:"id"`
}

// Token encodes the cursor as an opaque page token.
func (c Cursor) Token() string {
	b, _ := json.Marshal(c)
	return base64.RawURLEncoding.EncodeToString(b)
}

// ParseToken decodes a page token.
func ParseToken(token string) (Cursor, error) {
	var c Cursor
	b, err := base64.RawURLEncoding.DecodeString(token)
	if err == nil {
		err = json.Unmarshal(b, &c)
	}
	if err == nil {
		_, err = uuid.Parse(c.ID)
	}
	if err != nil || c.TMCreate.IsZero() {
		return Cursor{}, invalid("page_token", "is not a page token this service issued")
	}
	return c, nil
}

var statuses = map[callapi.Status]bool{
	callapi.StatusDialing: true, callapi.StatusRinging: true, callapi.StatusProgressing: true,
	callapi.StatusTerminating: true, callapi.StatusCanceling: true, callapi.StatusHangup: true,
}

// List lists calls newest first, by cursor (page_size, page_token; next_page_token is empty on
// the last page; the default) or by limit and offset (never a next_page_token), filtered by customer (""
// for all), status and direction.
func (s *Service) List(ctx context.Context, q callapi.ListQuery) (callapi.ListResponse, error) {
	f, cursorMode, err := filterOf(q)
	if err != nil {
		return callapi.ListResponse{}, err
	}
	want := f.Limit
	if cursorMode {
		f.Limit++ // one more tells whether there is a next page
	}
	calls, err := s.Store.List(ctx, f)
	if err != nil {
		return callapi.ListResponse{}, err
	}
	resp := callapi.ListResponse{Result: make([]callapi.Call, 0, min(len(calls), want))}
	for i, c := range calls {
		if i == want {
			last := calls[want-1]
			resp.NextPageToken = Cursor{TMCreate: last.TMCreate, ID: last.ID}.Token()
			break
		}
		resp.Result = append(resp.Result, c.Call)
	}
	return resp, nil
}

func filterOf(q callapi.ListQuery) (Filter, bool, error) {
	f := Filter{CustomerID: q.CustomerID, Status: callapi.Status(q.Status), Direction: q.Direction}
	if f.CustomerID != "" {
		if _, err := uuid.Parse(f.CustomerID); err != nil {
			return f, false, invalid("customer_id", "must be a UUID")
		}
	}
	if f.Status != "" && !statuses[f.Status] {
		return f, false, invalid("status", "must be one of dialing, ringing, progressing, canceling, terminating, hangup")
	}
	if f.Direction != "" && f.Direction != callapi.DirectionIncoming && f.Direction != callapi.DirectionOutgoing {
		return f, false, invalid("direction", "must be incoming or outgoing")
	}
	// Cursor paging unless limit/offset is asked for: a client that sets nothing still learns
	// that there is more.
	offsetMode := q.Limit != 0 || q.Offset != 0
	cursorMode := !offsetMode
	if offsetMode && (q.PageSize != 0 || q.PageToken != "") {
		return f, false, invalid("page_token", "cursor paging (page_size, page_token) and limit/offset cannot be mixed")
	}
	size, name := q.PageSize, "page_size"
	if !cursorMode {
		size, name = q.Limit, "limit"
	}
	switch {
	case size < 0 || size > MaxPageSize:
		return f, false, invalid(name, "must be between 1 and %d", MaxPageSize)
	case size == 0:
		size = DefaultPageSize
	}
	f.Limit = size
	if q.Offset < 0 {
		return f, false, invalid("offset", "must not be negative")
	}
	f.Offset = q.Offset
	if q.PageToken != "" {
		c, err := ParseToken(q.PageToken)
		if err != nil {
			return f, false, err
		}
		f.After = &c
	}
	return f, cursorMode, nil
}
