package keys_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events"
	"github.com/tokend/tokend/events/eventstest"
	"github.com/tokend/tokend/keys"
	"github.com/tokend/tokend/tokens"
)

// The keyring as the token service uses it.

var subjects = events.Subjects{Prefix: "tokens"}

func wantCode(t *testing.T, err error, code string) {
	t.Helper()
	if err == nil || domain.ErrorCode(err) != code {
		t.Fatalf("want %s, got %v", code, err)
	}
}

// TestServiceRetryAcrossAMissedRotation: instance A rotates a family under a
// key instance B has not loaded yet; the parent's retry on B must get the
// same child (B reloads the keys to derive it), not invalid_grant.
func TestServiceRetryAcrossAMissedRotation(t *testing.T) {
	nc, js := eventstest.MustJS(t)
	stream, err := events.Setup(context.Background(), js, subjects, events.StreamLimits{Replicas: 1})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	policy := domain.Policy{ReuseInterval: 10 * time.Second, IdleTTL: time.Hour, AbsoluteTTL: 24 * time.Hour}
	a := keys.MustKeyring(t, js)
	now := time.Now()
	stale := keys.StaleKeyring(t, js, &now)
	service := func(k *keys.Keyring) *tokens.Service {
		s := tokens.NewService(events.NewWriter(events.NewStore(nc, js, stream, subjects), 64), k.Codec(), policy, time.Now)
		s.UseKeyring(k)
		return s
	}
	onA, onB := service(a), service(stale)

	issued, err := onA.Issue(ctx, tokens.IssueRequest{Subject: "u", ClientID: "c"})
	if err != nil {
		t.Fatal(err)
	}
	staged, err := a.Stage(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Promote(ctx, staged.Revision); err != nil {
		t.Fatal(err)
	}
	rotated, err := onA.Refresh(ctx, tokens.RefreshRequest{Token: issued.Token.Value(), ClientID: "c"})
	if err != nil {
		t.Fatal(err)
	}
	if rotated.Token.KeyID == issued.Token.KeyID {
		t.Fatal("the child was minted under the old key")
	}
	retry, err := onB.Refresh(ctx, tokens.RefreshRequest{Token: issued.Token.Value(), ClientID: "c"})
	if err != nil || retry.Token.Value() != rotated.Token.Value() {
		t.Fatalf("retry on the instance that missed the rotation: %v (same child: %v)", err, retry.Token.Value() == rotated.Token.Value())
	}
	if _, err := onB.Refresh(ctx, tokens.RefreshRequest{Token: rotated.Token.Value(), ClientID: "c"}); err != nil {
		t.Fatalf("the child on that instance: %v", err)
	}
}

// TestUnreadableKeysAreUnavailable: when a token names a key this instance
// does not hold and the keyset cannot be read, the answer is "retry", not
// invalid_grant (which a client takes as final) nor "nothing revoked".
func TestUnreadableKeysAreUnavailable(t *testing.T) {
	ns := eventstest.MustJetStream(t)
	nc := eventstest.MustConnect(t, ns.ClientURL())
	js, _ := jetstream.New(nc)
	now := time.Now()
	stale := keys.StaleKeyring(t, js, &now)
	unseen, _ := domain.NewTokenCodec(domain.MACKey{ID: "unseen", Secret: make([]byte, 32)})
	token := unseen.Mint("f", 1, [32]byte{}).Value()
	ns.Shutdown()

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, _, err := stale.Parse(ctx, token)
	wantCode(t, err, domain.EUnavailable)
	s := tokens.NewService(events.NewWriter(nil, 1), stale.Codec(), domain.Policy{}, time.Now)
	s.UseKeyring(stale)
	// Within reloadEvery the failed read is reported again, not retried.
	_, _, err = s.RevokeToken(ctx, token, "", "", domain.Context{})
	wantCode(t, err, domain.EUnavailable)
}

// TestServiceAfterAKeyIsRevoked: what revoking a MAC key does to families
// (docs/operations.md, "A compromised key"). A family whose current token
// is under the key can no longer refresh; the retry, inside the reuse
// interval, of a parent whose child was minted under it fails too; a token
// under it revokes nothing; families under other keys are untouched.
func TestServiceAfterAKeyIsRevoked(t *testing.T) {
	nc, js := eventstest.MustJS(t)
	stream, err := events.Setup(context.Background(), js, subjects, events.StreamLimits{Replicas: 1})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	store := events.NewStore(nc, js, stream, subjects)
	ring := keys.MustKeyring(t, js)
	s := tokens.NewService(events.NewWriter(store, 64), ring.Codec(), domain.Policy{ReuseInterval: time.Hour, IdleTTL: time.Hour, AbsoluteTTL: 24 * time.Hour}, time.Now)
	s.UseKeyring(ring)
	issue := func() tokens.Grant {
		t.Helper()
		g, err := s.Issue(ctx, tokens.IssueRequest{Subject: "u", ClientID: "c"})
		if err != nil {
			t.Fatal(err)
		}
		return g
	}
	refresh := func(token string) (tokens.Grant, error) {
		return s.Refresh(ctx, tokens.RefreshRequest{Token: token, ClientID: "c"})
	}

	untouched := issue()   // under the first key, which is only retired
	retryParent := issue() // under the first key; its child will be under the compromised one
	staged, err := ring.Stage(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ring.Promote(ctx, staged.Revision); err != nil {
		t.Fatal(err)
	}
	compromised := issue()
	child, err := refresh(retryParent.Token.Value())
	if err != nil || child.Token.KeyID != compromised.Token.KeyID {
		t.Fatalf("the child under the current key: %v", err)
	}

	_, r, err := ring.Revoke(ctx, compromised.Token.KeyID, 0)
	if err != nil || r.Current == nil {
		t.Fatalf("revoke: %+v, %v", r, err)
	}
	if _, err := refresh(compromised.Token.Value()); !errors.Is(err, domain.ErrInvalidGrant) {
		t.Fatalf("a family whose token is under the revoked key refreshed: %v", err)
	}
	if _, err := refresh(child.Token.Value()); !errors.Is(err, domain.ErrInvalidGrant) {
		t.Fatalf("a child under the revoked key refreshed: %v", err)
	}
	if _, err := refresh(retryParent.Token.Value()); !errors.Is(err, domain.ErrInvalidGrant) {
		t.Fatalf("the retry of a parent whose child is under the revoked key: %v", err)
	}
	f, _, err := store.Load(ctx, retryParent.Family.ID)
	if err != nil || f.Status != domain.StatusActive || f.Generation != 2 {
		t.Fatalf("the family of the retried parent: %+v, %v", f, err)
	}
	if n, _, err := s.RevokeToken(ctx, compromised.Token.Value(), "", "", domain.Context{}); err != nil || n != 0 {
		t.Fatalf("revoking by a token under the revoked key: %d, %v", n, err)
	}
	if g, err := refresh(untouched.Token.Value()); err != nil || g.Token.KeyID != r.Current.ID {
		t.Fatalf("a family under another key: %v", err)
	}
}
