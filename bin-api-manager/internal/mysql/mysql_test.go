package mysql_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"voipbin/bin-api-manager/internal/identity"
	"voipbin/bin-api-manager/internal/mysql"
	"voipbin/bin-api-manager/migrations"
	"voipbin/pkg/amqp"
	"voipbin/pkg/customerapi"
	"voipbin/pkg/event"
	"voipbin/pkg/migrate"
	"voipbin/pkg/testenv"
)

func newDB(t *testing.T) *sql.DB {
	t.Helper()
	db := testenv.MySQL(t)
	if _, err := migrate.Up(context.Background(), db, migrations.FS, "customer", testenv.Logger(t)); err != nil {
		t.Fatal(err)
	}
	return db
}

func now() time.Time { return time.Now().UTC().Truncate(time.Microsecond) }

func newCustomer(name string) (identity.Customer, identity.User) {
	t := now()
	c := identity.Customer{ID: uuid.NewString(), Name: name, Email: name + "@example.com", TMCreate: t, TMUpdate: t}
	u := identity.User{ID: uuid.NewString(), CustomerID: c.ID, Username: name, PasswordHash: "hash-" + name,
		Permission: identity.PermCustomerAdmin, TMCreate: t, TMUpdate: t}
	return c, u
}

func TestUsers(t *testing.T) {
	ctx := context.Background()
	s := mysql.NewStore(newDB(t), nil)
	if has, err := s.HasSuperadmin(ctx); err != nil || has {
		t.Fatalf("empty store: HasSuperadmin = %v, %v", has, err)
	}
	su := identity.User{ID: uuid.NewString(), Username: "root", PasswordHash: "h", Permission: identity.PermSuperadmin, TMCreate: now(), TMUpdate: now()}
	if err := s.CreateUser(ctx, su); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateUser(ctx, identity.User{ID: uuid.NewString(), Username: "root", Permission: 1, TMCreate: now(), TMUpdate: now()}); err != identity.ErrUsernameTaken {
		t.Fatalf("duplicate username: %v, want ErrUsernameTaken", err)
	}
	if has, err := s.HasSuperadmin(ctx); err != nil || !has {
		t.Fatalf("HasSuperadmin = %v, %v", has, err)
	}
	got, err := s.UserByUsername(ctx, "root")
	if err != nil || got != su {
		t.Fatalf("UserByUsername = %+v, %v; want %+v", got, err, su)
	}
	if got, err := s.UserByID(ctx, su.ID); err != nil || got != su {
		t.Fatalf("UserByID = %+v, %v", got, err)
	}
	for _, id := range []string{uuid.NewString(), "not-a-uuid"} {
		if _, err := s.UserByID(ctx, id); err != identity.ErrUserNotFound {
			t.Fatalf("UserByID(%q) = %v, want ErrUserNotFound", id, err)
		}
	}
	if _, err := s.UserByUsername(ctx, "nobody"); err != identity.ErrUserNotFound {
		t.Fatalf("UserByUsername(nobody) = %v", err)
	}
}

func TestCreateCustomerWritesTheEventInTheSameTransaction(t *testing.T) {
	ctx := context.Background()
	db := newDB(t)
	var kicks atomic.Int32
	s := mysql.NewStore(db, func() { kicks.Add(1) })

	c, u := newCustomer("acme")
	if err := s.CreateCustomer(ctx, c, u); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Customer(ctx, c.ID); err != nil || got != c {
		t.Fatalf("Customer = %+v, %v; want %+v", got, err, c)
	}
	if got, err := s.UserByUsername(ctx, "acme"); err != nil || got.CustomerID != c.ID {
		t.Fatalf("admin user = %+v, %v", got, err)
	}
	if kicks.Load() != 1 {
		t.Fatalf("relay kicked %d times, want 1", kicks.Load())
	}

	var exchange, key string
	var payload []byte
	if err := db.QueryRow("SELECT exchange, routing_key, payload FROM customer_outbox").Scan(&exchange, &key, &payload); err != nil {
		t.Fatal(err)
	}
	var ev event.Event
	if err := json.Unmarshal(payload, &ev); err != nil {
		t.Fatal(err)
	}
	var data customerapi.Customer
	_ = json.Unmarshal(ev.Data, &data)
	if exchange != event.ExchangeCustomer || key != event.RoutingKey(c.ID, customerapi.EventCreated) ||
		ev.EventType != customerapi.EventCreated || ev.ResourceType != "customer" || ev.ResourceID != c.ID ||
		ev.CustomerID != c.ID || ev.Sequence != 1 || data.ID != c.ID || data.Name != "acme" {
		t.Fatalf("outbox row: %s %s %+v %+v", exchange, key, ev, data)
	}

	// A failure after the customer insert (the username is taken) rolls everything back.
	c2, u2 := newCustomer("acme")
	if err := s.CreateCustomer(ctx, c2, u2); err != identity.ErrUsernameTaken {
		t.Fatalf("duplicate username: %v", err)
	}
	if _, err := s.Customer(ctx, c2.ID); err != identity.ErrCustomerNotFound {
		t.Fatalf("customer of a failed create: %v, want not found", err)
	}
	var n int
	_ = db.QueryRow("SELECT COUNT(*) FROM customer_outbox").Scan(&n)
	if n != 1 || kicks.Load() != 1 {
		t.Fatalf("outbox rows %d kicks %d after a failed create, want 1 and 1", n, kicks.Load())
	}
}

func TestCustomerCreatedReachesTheExchange(t *testing.T) {
	ctx := context.Background()
	db := newDB(t)
	conn := testenv.Rabbit(t)
	queue := testenv.Name("customer_events")
	testenv.DeleteQueuesAtCleanup(t, conn, queue)
	ch, err := conn.Channel(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	if err := event.DeclareExchange(ch, event.ExchangeCustomer); err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(queue, false, true, false, false, nil); err != nil {
		t.Fatal(err)
	}
	c, u := newCustomer(testenv.Name("c"))
	if err := ch.QueueBind(queue, event.CustomerKey(c.ID), event.ExchangeCustomer, false, nil); err != nil {
		t.Fatal(err)
	}
	s := mysql.NewStore(db, nil)
	if err := s.CreateCustomer(ctx, c, u); err != nil {
		t.Fatal(err)
	}
	relay := event.NewRelay(db, conn, mysql.OutboxTable, testenv.Logger(t), event.RelayOptions{})
	if n, err := relay.Flush(ctx); err != nil || n != 1 {
		t.Fatalf("Flush = %d, %v; want 1 event", n, err)
	}
	var got amqp.Delivery
	testenv.Eventually(t, 5*time.Second, "customer.created on the queue", func() bool {
		d, ok, err := ch.Get(queue, true)
		got = d
		return err == nil && ok
	})
	var ev event.Event
	if err := json.Unmarshal(got.Body, &ev); err != nil || ev.EventType != customerapi.EventCreated || ev.ResourceID != c.ID {
		t.Fatalf("event = %+v, %v", ev, err)
	}
}

func TestCustomersPaging(t *testing.T) {
	ctx := context.Background()
	s := mysql.NewStore(newDB(t), nil)
	base := now()
	var want []string
	for i := range 5 {
		c, u := newCustomer("user" + string(rune('a'+i)))
		// two share a timestamp, so the id breaks the tie
		c.TMCreate = base.Add(time.Duration(i/2) * time.Second)
		if err := s.CreateCustomer(ctx, c, u); err != nil {
			t.Fatal(err)
		}
		want = append(want, c.ID)
	}
	var got []string
	after := identity.Cursor{}
	for {
		page, err := s.Customers(ctx, after, 2)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		for _, c := range page {
			got = append(got, c.ID)
		}
		last := page[len(page)-1]
		after = identity.Cursor{TMCreate: last.TMCreate, ID: last.ID}
	}
	if len(got) != len(want) {
		t.Fatalf("paged %d customers, want %d", len(got), len(want))
	}
	seen := map[string]bool{}
	for _, id := range got {
		if seen[id] {
			t.Fatalf("%s twice", id)
		}
		seen[id] = true
	}
}

func TestAccessKeys(t *testing.T) {
	ctx := context.Background()
	s := mysql.NewStore(newDB(t), nil)
	c, u := newCustomer("acme")
	if err := s.CreateCustomer(ctx, c, u); err != nil {
		t.Fatal(err)
	}
	k := identity.AccessKey{ID: uuid.NewString(), CustomerID: c.ID, UserID: u.ID, Name: "ci",
		TokenHash: identity.HashAccessKey("vb_one"), Permission: identity.PermCustomerAdmin,
		TMExpire: now().Add(time.Hour), TMCreate: now()}
	suKey := identity.AccessKey{ID: uuid.NewString(), UserID: uuid.NewString(), Name: "root",
		TokenHash: identity.HashAccessKey("vb_two"), Permission: identity.PermSuperadmin,
		TMExpire: now().Add(time.Hour), TMCreate: now()}
	for _, key := range []identity.AccessKey{k, suKey} {
		if err := s.CreateAccessKey(ctx, key); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := s.AccessKeyByHash(ctx, k.TokenHash); err != nil || got != k {
		t.Fatalf("AccessKeyByHash = %+v, %v; want %+v", got, err, k)
	}
	if got, err := s.AccessKey(ctx, suKey.ID); err != nil || got != suKey {
		t.Fatalf("AccessKey = %+v, %v; want %+v", got, err, suKey)
	}
	lists := []struct {
		name       string
		customerID string
		all        bool
		want       int
	}{{"customer", c.ID, false, 1}, {"superadmins' own", "", false, 1}, {"all", "", true, 2}, {"other", uuid.NewString(), false, 0}}
	for _, l := range lists {
		got, err := s.AccessKeys(ctx, l.customerID, l.all)
		if err != nil || len(got) != l.want {
			t.Errorf("%s: %d keys, %v; want %d", l.name, len(got), err, l.want)
		}
	}
	if gone, err := s.DeleteAccessKey(ctx, k.ID, now()); err != nil || len(gone) != 1 || gone[0] != k {
		t.Fatalf("delete: %+v, %v", gone, err)
	}
	if _, err := s.DeleteAccessKey(ctx, k.ID, now()); err != identity.ErrAccessKeyNotFound {
		t.Fatalf("second delete: %v", err)
	}
	if _, err := s.AccessKeyByHash(ctx, k.TokenHash); err != identity.ErrAccessKeyNotFound {
		t.Fatalf("deleted key by hash: %v", err)
	}
	if _, err := s.AccessKey(ctx, k.ID); err != identity.ErrAccessKeyNotFound {
		t.Fatalf("deleted key by id: %v", err)
	}
}

func newKey(c identity.Customer, u identity.User, parent string) identity.AccessKey {
	id := uuid.NewString()
	return identity.AccessKey{ID: id, CustomerID: c.ID, UserID: u.ID, ParentKeyID: parent, Name: "k",
		TokenHash: identity.HashAccessKey("vb_" + id), Permission: identity.PermCustomerAdmin,
		TMExpire: now().Add(time.Hour), TMCreate: now()}
}

// TestDeletingAKeyDeletesItsDescendants: a key created by a key dies with it, down the chain, and
// a key cannot be created under a deleted parent.
func TestDeletingAKeyDeletesItsDescendants(t *testing.T) {
	ctx := context.Background()
	s := mysql.NewStore(newDB(t), nil)
	c, u := newCustomer("acme")
	if err := s.CreateCustomer(ctx, c, u); err != nil {
		t.Fatal(err)
	}
	root := newKey(c, u, "")
	child := newKey(c, u, root.ID)
	grandchild := newKey(c, u, child.ID)
	sibling := newKey(c, u, "")
	for _, k := range []identity.AccessKey{root, child, grandchild, sibling} {
		if err := s.CreateAccessKey(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := s.AccessKey(ctx, child.ID); err != nil || got.ParentKeyID != root.ID {
		t.Fatalf("child = %+v, %v", got, err)
	}
	gone, err := s.DeleteAccessKey(ctx, root.ID, now())
	if err != nil {
		t.Fatal(err)
	}
	if len(gone) != 3 || gone[0].ID != root.ID {
		t.Fatalf("deleted %+v, want the root, its child and grandchild", gone)
	}
	for _, k := range []identity.AccessKey{root, child, grandchild} {
		if _, err := s.AccessKeyByHash(ctx, k.TokenHash); err != identity.ErrAccessKeyNotFound {
			t.Fatalf("key %s after its ancestor's deletion: %v", k.ID, err)
		}
	}
	if _, err := s.AccessKey(ctx, sibling.ID); err != nil {
		t.Fatalf("an unrelated key went too: %v", err)
	}
	if err := s.CreateAccessKey(ctx, newKey(c, u, root.ID)); err != identity.ErrAccessKeyNotFound {
		t.Fatalf("a key under a deleted parent: %v, want ErrAccessKeyNotFound", err)
	}
}

// TestKeyCreationRacingItsParentsDeletion creates children while the parent is deleted: whatever
// the interleaving, no live child is left.
func TestKeyCreationRacingItsParentsDeletion(t *testing.T) {
	ctx := context.Background()
	db := newDB(t)
	s := mysql.NewStore(db, nil)
	c, u := newCustomer("acme")
	if err := s.CreateCustomer(ctx, c, u); err != nil {
		t.Fatal(err)
	}
	for round := range 5 {
		parent := newKey(c, u, "")
		if err := s.CreateAccessKey(ctx, parent); err != nil {
			t.Fatal(err)
		}
		errs := make(chan error, 9)
		for range 8 {
			go func() {
				err := s.CreateAccessKey(ctx, newKey(c, u, parent.ID))
				if err == identity.ErrAccessKeyNotFound {
					err = nil
				}
				errs <- err
			}()
		}
		go func() { _, err := s.DeleteAccessKey(ctx, parent.ID, now()); errs <- err }()
		for range 9 {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
		var live int
		pb, _ := uuid.MustParse(parent.ID).MarshalBinary()
		if err := db.QueryRow("SELECT COUNT(*) FROM customer_accesskeys WHERE parent_key_id = ? AND tm_delete IS NULL", pb).Scan(&live); err != nil {
			t.Fatal(err)
		}
		if live != 0 {
			t.Fatalf("round %d: %d children outlived their deleted parent", round, live)
		}
	}
}

func TestDeleteAndDowngradeUsers(t *testing.T) {
	ctx := context.Background()
	s := mysql.NewStore(newDB(t), nil)
	c, u := newCustomer("acme")
	if err := s.CreateCustomer(ctx, c, u); err != nil {
		t.Fatal(err)
	}
	k := newKey(c, u, "")
	if err := s.CreateAccessKey(ctx, k); err != nil {
		t.Fatal(err)
	}
	if users, err := s.Users(ctx, c.ID, false); err != nil || len(users) != 1 || users[0].ID != u.ID {
		t.Fatalf("users = %+v, %v", users, err)
	}
	if err := s.SetUserPermission(ctx, u.ID, identity.PermCustomerManager, now()); err != nil {
		t.Fatal(err)
	}
	if err := s.SetUserPermission(ctx, u.ID, identity.PermCustomerManager, now()); err != nil {
		t.Fatalf("setting the same permission again: %v", err)
	}
	if got, err := s.UserByID(ctx, u.ID); err != nil || got.Permission != identity.PermCustomerManager {
		t.Fatalf("after the downgrade: %+v, %v", got, err)
	}
	gone, err := s.DeleteUser(ctx, u.ID, now())
	if err != nil || len(gone) != 1 || gone[0].ID != k.ID {
		t.Fatalf("DeleteUser: %+v, %v", gone, err)
	}
	if _, err := s.UserByID(ctx, u.ID); err != identity.ErrUserNotFound {
		t.Fatalf("deleted user: %v", err)
	}
	if _, err := s.AccessKeyByHash(ctx, k.TokenHash); err != identity.ErrAccessKeyNotFound {
		t.Fatalf("the deleted user's key: %v", err)
	}
	if _, err := s.DeleteUser(ctx, u.ID, now()); err != identity.ErrUserNotFound {
		t.Fatalf("second delete: %v", err)
	}
	if err := s.SetUserPermission(ctx, u.ID, identity.PermCustomerAdmin, now()); err != identity.ErrUserNotFound {
		t.Fatalf("downgrading a deleted user: %v", err)
	}
}
