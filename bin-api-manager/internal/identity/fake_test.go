package identity_test

import (
	"context"
	"sort"
	"sync"
	"time"

	"voipbin/bin-api-manager/internal/identity"
)

// memStore is an in-memory UserStore, CustomerStore and AccessKeyStore that records effects.
type memStore struct {
	mu        sync.Mutex
	users     map[string]identity.User
	customers map[string]identity.Customer
	keys      map[string]identity.AccessKey
	deleted   map[string]bool
	created   []string // customer ids, in creation order (stands for customer.created events)
	lookups   int      // AccessKeyByHash calls
}

func newMemStore() *memStore {
	return &memStore{users: map[string]identity.User{}, customers: map[string]identity.Customer{},
		keys: map[string]identity.AccessKey{}, deleted: map[string]bool{}}
}

func (m *memStore) UserByUsername(_ context.Context, username string) (identity.User, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, u := range m.users {
		if u.Username == username {
			return u, nil
		}
	}
	return identity.User{}, identity.ErrUserNotFound
}

func (m *memStore) UserByID(_ context.Context, id string) (identity.User, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if u, ok := m.users[id]; ok {
		return u, nil
	}
	return identity.User{}, identity.ErrUserNotFound
}

func (m *memStore) HasSuperadmin(context.Context) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, u := range m.users {
		if u.Permission.Has(identity.PermSuperadmin) {
			return true, nil
		}
	}
	return false, nil
}

func (m *memStore) CreateUser(_ context.Context, u identity.User) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.addUser(u)
}

func (m *memStore) addUser(u identity.User) error {
	for _, x := range m.users {
		if x.Username == u.Username {
			return identity.ErrUsernameTaken
		}
	}
	m.users[u.ID] = u
	return nil
}

func (m *memStore) CreateCustomer(_ context.Context, c identity.Customer, admin identity.User) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.addUser(admin); err != nil {
		return err
	}
	m.customers[c.ID] = c
	m.created = append(m.created, c.ID)
	return nil
}

func (m *memStore) Customer(_ context.Context, id string) (identity.Customer, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if c, ok := m.customers[id]; ok {
		return c, nil
	}
	return identity.Customer{}, identity.ErrCustomerNotFound
}

func (m *memStore) Customers(_ context.Context, after identity.Cursor, limit int) ([]identity.Customer, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var all []identity.Customer
	for _, c := range m.customers {
		all = append(all, c)
	}
	sort.Slice(all, func(i, j int) bool {
		if !all[i].TMCreate.Equal(all[j].TMCreate) {
			return all[i].TMCreate.After(all[j].TMCreate)
		}
		return all[i].ID > all[j].ID
	})
	var out []identity.Customer
	for _, c := range all {
		if !after.IsZero() && !(c.TMCreate.Before(after.TMCreate) || c.TMCreate.Equal(after.TMCreate) && c.ID < after.ID) {
			continue
		}
		if len(out) == limit {
			break
		}
		out = append(out, c)
	}
	return out, nil
}

func (m *memStore) Users(_ context.Context, customerID string, all bool) ([]identity.User, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := []identity.User{}
	for _, u := range m.users {
		if all || u.CustomerID == customerID {
			out = append(out, u)
		}
	}
	return out, nil
}

func (m *memStore) SetUserPermission(_ context.Context, id string, p identity.Permission, now time.Time) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	u, ok := m.users[id]
	if !ok {
		return identity.ErrUserNotFound
	}
	u.Permission, u.TMUpdate = p, now
	m.users[id] = u
	return nil
}

func (m *memStore) DeleteUser(_ context.Context, id string, _ time.Time) ([]identity.AccessKey, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.users[id]; !ok {
		return nil, identity.ErrUserNotFound
	}
	delete(m.users, id)
	var gone []identity.AccessKey
	for _, k := range m.keys {
		if k.UserID == id && !m.deleted[k.ID] {
			m.deleted[k.ID] = true
			gone = append(gone, k)
		}
	}
	return gone, nil
}

func (m *memStore) CreateAccessKey(_ context.Context, k identity.AccessKey) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if k.ParentKeyID != "" {
		if _, ok := m.keys[k.ParentKeyID]; !ok || m.deleted[k.ParentKeyID] {
			return identity.ErrAccessKeyNotFound
		}
	}
	m.keys[k.ID] = k
	return nil
}

func (m *memStore) AccessKeyByHash(_ context.Context, hash [32]byte) (identity.AccessKey, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.lookups++
	for _, k := range m.keys {
		if k.TokenHash == hash && !m.deleted[k.ID] {
			return k, nil
		}
	}
	return identity.AccessKey{}, identity.ErrAccessKeyNotFound
}

func (m *memStore) AccessKey(_ context.Context, id string) (identity.AccessKey, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if k, ok := m.keys[id]; ok && !m.deleted[id] {
		return k, nil
	}
	return identity.AccessKey{}, identity.ErrAccessKeyNotFound
}

func (m *memStore) AccessKeys(_ context.Context, customerID string, all bool) ([]identity.AccessKey, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := []identity.AccessKey{}
	for _, k := range m.keys {
		if !m.deleted[k.ID] && (all || k.CustomerID == customerID) {
			out = append(out, k)
		}
	}
	return out, nil
}

func (m *memStore) DeleteAccessKey(_ context.Context, id string, _ time.Time) ([]identity.AccessKey, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	k, ok := m.keys[id]
	if !ok || m.deleted[id] {
		return nil, identity.ErrAccessKeyNotFound
	}
	m.deleted[id] = true
	gone := []identity.AccessKey{k}
	for i := 0; i < len(gone); i++ {
		for _, c := range m.keys {
			if c.ParentKeyID == gone[i].ID && !m.deleted[c.ID] {
				m.deleted[c.ID] = true
				gone = append(gone, c)
			}
		}
	}
	return gone, nil
}

// memCache is an in-memory KeyCache.
type memCache struct {
	mu   sync.Mutex
	keys map[[32]byte]identity.AccessKey
}

func newMemCache() *memCache { return &memCache{keys: map[[32]byte]identity.AccessKey{}} }

func (c *memCache) Get(_ context.Context, hash [32]byte) (identity.AccessKey, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	k, ok := c.keys[hash]
	return k, ok
}

func (c *memCache) Set(_ context.Context, k identity.AccessKey) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.keys[k.TokenHash] = k
}

func (c *memCache) Delete(_ context.Context, hash [32]byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.keys, hash)
}
