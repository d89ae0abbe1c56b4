package call

import (
	"errors"
	"testing"
	"time"

	"voipbin/pkg/callapi"
)

func TestFilterOf(t *testing.T) {
	cur := Cursor{TMCreate: t0, ID: "c0a80000-0000-4000-8000-000000000001"}
	tests := []struct {
		name       string
		q          callapi.ListQuery
		want       Filter
		wantCursor bool
		wantField  string
	}{
		{"defaults: cursor paging", callapi.ListQuery{}, Filter{Limit: DefaultPageSize}, true, ""},
		{"page size and token", callapi.ListQuery{PageSize: 10, PageToken: cur.Token()}, Filter{Limit: 10, After: &cur}, true, ""},
		{"limit and offset", callapi.ListQuery{Limit: 5, Offset: 10}, Filter{Limit: 5, Offset: 10}, false, ""},
		{"offset alone", callapi.ListQuery{Offset: 10}, Filter{Limit: DefaultPageSize, Offset: 10}, false, ""},
		{"filters", callapi.ListQuery{CustomerID: "5e4a0000-0000-4000-8000-000000000001", Status: "hangup", Direction: "outgoing"},
			Filter{CustomerID: "5e4a0000-0000-4000-8000-000000000001", Status: hangup, Direction: "outgoing", Limit: DefaultPageSize}, true, ""},
		{"page size too big", callapi.ListQuery{PageSize: 101}, Filter{}, false, "page_size"},
		{"negative page size", callapi.ListQuery{PageSize: -1}, Filter{}, false, "page_size"},
		{"limit too big", callapi.ListQuery{Limit: 1000}, Filter{}, false, "limit"},
		{"negative offset", callapi.ListQuery{Offset: -1}, Filter{}, false, "offset"},
		{"mixed styles", callapi.ListQuery{PageSize: 10, Offset: 10}, Filter{}, false, "page_token"},
		{"bad token", callapi.ListQuery{PageToken: "garbage!"}, Filter{}, false, "page_token"},
		{"token of other JSON", callapi.ListQuery{PageToken: "e30"}, Filter{}, false, "page_token"},
		{"bad status", callapi.ListQuery{Status: "busy"}, Filter{}, false, "status"},
		{"bad direction", callapi.ListQuery{Direction: "sideways"}, Filter{}, false, "direction"},
		{"bad customer", callapi.ListQuery{CustomerID: "me"}, Filter{}, false, "customer_id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, cursor, err := filterOf(tt.q)
			if tt.wantField != "" {
				var ie *InvalidError
				if !errors.As(err, &ie) || ie.Field != tt.wantField {
					t.Fatalf("filterOf = %v, want an InvalidError on %s", err, tt.wantField)
				}
				return
			}
			if err != nil {
				t.Fatalf("filterOf = %v", err)
			}
			sameAfter := (got.After == nil) == (tt.want.After == nil) &&
				(got.After == nil || (got.After.ID == tt.want.After.ID && got.After.TMCreate.Equal(tt.want.After.TMCreate)))
			got.After, tt.want.After = nil, nil
			if got != tt.want || !sameAfter || cursor != tt.wantCursor {
				t.Fatalf("filterOf = %+v (cursor %v), want %+v (cursor %v)", got, cursor, tt.want, tt.wantCursor)
			}
		})
	}
}

func TestTokenRoundTrip(t *testing.T) {
	c := Cursor{TMCreate: t0.Add(123456 * time.Microsecond), ID: "c0a80000-0000-4000-8000-000000000001"}
	got, err := ParseToken(c.Token())
	if err != nil || got.ID != c.ID || !got.TMCreate.Equal(c.TMCreate) {
		t.Fatalf("ParseToken(Token()) = %+v, %v; want %+v", got, err, c)
	}
}
