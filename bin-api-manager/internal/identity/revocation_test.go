package identity_test

import (
	"context"
	"testing"
	"time"

	"voipbin/bin-api-manager/internal/identity"
	"voipbin/pkg/apierr"
)

// login makes a customer user with perm and returns its token.
func (f *fixture) user(t *testing.T, admin identity.Identity, username string, perm identity.Permission) (identity.User, string) {
	t.Helper()
	u, err := f.svc.CreateUser(context.Background(), admin, identity.NewUser{Username: username, Password: "password-1", Permission: perm})
	if err != nil {
		t.Fatal(err)
	}
	s, err := f.svc.Login(context.Background(), username, "password-1")
	if err != nil {
		t.Fatal(err)
	}
	return u, s.Token
}

func TestTokensAndKeysOfADeletedOrDowngradedUserAreRevoked(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	_, admin := f.customer(t, "alice")

	tests := []struct {
		name   string
		change func(t *testing.T, u identity.User) error
	}{
		{"deleted", func(t *testing.T, u identity.User) error { _, err := f.svc.DeleteUser(ctx, admin, u.ID); return err }},
		{"downgraded", func(t *testing.T, u identity.User) error {
			_, err := f.svc.SetUserPermission(ctx, admin, u.ID, identity.PermCustomerManager)
			return err
		}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u, token := f.user(t, admin, "bob"+string(rune('a'+i)), identity.PermCustomerAdmin)
			id, err := f.svc.Authenticate(ctx, token)
			if err != nil {
				t.Fatal(err)
			}
			key, err := f.svc.CreateAccessKey(ctx, id, "ci", time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			keyID, err := f.svc.Authenticate(ctx, key.Token)
			if err != nil {
				t.Fatal(err)
			}
			if err := tt.change(t, u); err != nil {
				t.Fatal(err)
			}
			if _, err := f.svc.Authenticate(ctx, token); !apierr.HasReason(err, identity.ReasonCredentialsRevoked) {
				t.Fatalf("the token after the change: %v, want CREDENTIALS_REVOKED", err)
			}
			if err := f.svc.Check(ctx, id); !apierr.HasReason(err, identity.ReasonCredentialsRevoked) {
				t.Fatalf("Check of the token's identity: %v", err)
			}
			if err := f.svc.Check(ctx, keyID); !apierr.HasReason(err, identity.ReasonCredentialsRevoked) {
				t.Fatalf("Check of the key's identity: %v", err)
			}
			if _, err := f.svc.Authenticate(ctx, key.Token); err == nil {
				t.Fatal("the user's key still works")
			}
		})
	}

	// An upgrade revokes nothing; a fresh login after a downgrade works with the new permission.
	u, token := f.user(t, admin, "carol", identity.PermCustomerManager)
	if _, err := f.svc.SetUserPermission(ctx, admin, u.ID, identity.PermCustomerManager|identity.PermCustomerAdmin); err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.Authenticate(ctx, token); err != nil {
		t.Fatalf("token after an upgrade: %v", err)
	}
}

func TestUserManagementRules(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	_, alice := f.customer(t, "alice")
	_, bob := f.customer(t, "bob")
	u, _ := f.user(t, alice, "manager", identity.PermCustomerManager)
	manager := identity.Identity{UserID: u.ID, CustomerID: alice.CustomerID, Permission: identity.PermCustomerManager}

	tests := []struct {
		name       string
		err        error
		wantReason string
	}{
		{"another customer's user is not found", func() error { _, err := f.svc.DeleteUser(ctx, bob, u.ID); return err }(), identity.ReasonUserNotFound},
		{"a manager may not manage users", func() error { _, err := f.svc.Users(ctx, manager, ""); return err }(), apierr.ReasonPermissionDenied},
		{"nobody changes itself", func() error {
			_, err := f.svc.SetUserPermission(ctx, alice, alice.UserID, identity.PermCustomerManager)
			return err
		}(), identity.ReasonCannotModifySelf},
		{"no superadmin bit for a customer's user", func() error {
			_, err := f.svc.SetUserPermission(ctx, alice, u.ID, identity.PermSuperadmin)
			return err
		}(), apierr.ReasonInvalidArgument},
		{"a superadmin names the customer", func() error {
			_, err := f.svc.CreateUser(ctx, f.su, identity.NewUser{Username: "x-user", Password: "password-1", Permission: 64})
			return err
		}(), apierr.ReasonInvalidArgument},
		{"a superadmin's customer must exist", func() error {
			_, err := f.svc.CreateUser(ctx, f.su, identity.NewUser{CustomerID: "00000000-0000-0000-0000-000000000001", Username: "y-user", Password: "password-1", Permission: 64})
			return err
		}(), identity.ReasonCustomerNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !apierr.HasReason(tt.err, tt.wantReason) {
				t.Fatalf("err = %v, want %s", tt.err, tt.wantReason)
			}
		})
	}
	users, err := f.svc.Users(ctx, alice, "")
	if err != nil || len(users) != 2 {
		t.Fatalf("alice's users = %v, %v", users, err)
	}
}

func TestKeyCreatedByAKeyIsBoundToIt(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	_, admin := f.customer(t, "alice")
	parent, err := f.svc.CreateAccessKey(ctx, admin, "parent", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if parent.ParentKeyID != "" {
		t.Fatalf("a key made with a JWT has parent %q", parent.ParentKeyID)
	}
	pid, err := f.svc.Authenticate(ctx, parent.Token)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.CreateAccessKey(ctx, pid, "longer", 2*time.Hour); !apierr.HasReason(err, apierr.ReasonInvalidArgument) {
		t.Fatalf("a child outliving its parent: %v, want INVALID_ARGUMENT", err)
	}
	child, err := f.svc.CreateAccessKey(ctx, pid, "child", 30*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if child.ParentKeyID != parent.ID || child.Permission != parent.Permission {
		t.Fatalf("child = %+v", child)
	}
	cid, err := f.svc.Authenticate(ctx, child.Token)
	if err != nil {
		t.Fatal(err)
	}
	grandchild, err := f.svc.CreateAccessKey(ctx, cid, "grandchild", 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}

	if _, err := f.svc.DeleteAccessKey(ctx, admin, parent.ID); err != nil {
		t.Fatal(err)
	}
	for _, k := range []identity.AccessKey{parent, child, grandchild} {
		if _, err := f.svc.Authenticate(ctx, k.Token); !apierr.HasReason(err, identity.ReasonInvalidCredentials) {
			t.Fatalf("key %s after its ancestor's deletion: %v", k.Name, err)
		}
	}
	if err := f.svc.Check(ctx, cid); !apierr.HasReason(err, identity.ReasonCredentialsRevoked) {
		t.Fatalf("Check of the child: %v", err)
	}
	// A key of a deleted parent cannot be made (the parent's identity was taken before).
	if _, err := f.svc.CreateAccessKey(ctx, pid, "late", time.Minute); !apierr.HasReason(err, identity.ReasonCredentialsRevoked) {
		t.Fatalf("creating with a deleted parent: %v", err)
	}
}
