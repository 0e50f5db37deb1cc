package tokens

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events"
	"github.com/tokend/tokend/ratelimit"
)

// limitedService is a service whose refresh limit holds one rotation per
// family, with a frozen limiter clock so the bucket never refills while the
// decider's clock moves past the reuse interval.
func limitedService(t *testing.T) (*Service, *events.Store, *fixture, *[]string) {
	fx := newFixture(t)
	frozen := fx.now
	s, store := newTestService(t, fx)
	s.RefreshLimit = ratelimit.NewKeyedLimiter(0.001, 1, 64, func() time.Time { return frozen })
	s.IssueLimit = ratelimit.NewKeyedLimiter(0.001, 2, 64, func() time.Time { return frozen })
	var refused []string
	s.OnRateLimited = func(limit string) { refused = append(refused, limit) }
	return s, store, fx, &refused
}

func wantLimited(t *testing.T, err error) {
	t.Helper()
	var de *domain.Error
	if !errors.As(err, &de) || de.Code != domain.EUnavailable || de.RetryAfterMs <= 0 || !de.RateLimited {
		t.Fatalf("want temporarily_unavailable with retry_after_ms, got %v", err)
	}
}

func TestRefreshLimitSparesReuseAndReplay(t *testing.T) {
	s, store, fx, refused := limitedService(t)
	ctx := context.Background()
	issued, err := s.Issue(ctx, IssueRequest{Subject: "u", ClientID: "web"})
	if err != nil {
		t.Fatal(err)
	}
	child, err := s.Refresh(ctx, RefreshRequest{Token: issued.Token.Value(), ClientID: "web"})
	if err != nil {
		t.Fatal(err)
	}
	// The bucket is empty now: another rotation waits...
	_, err = s.Refresh(ctx, RefreshRequest{Token: child.Token.Value(), ClientID: "web"})
	wantLimited(t, err)
	// ...but a parallel refresh or retry with the parent still gets its child.
	again, err := s.Refresh(ctx, RefreshRequest{Token: issued.Token.Value(), ClientID: "web"})
	if err != nil || again.Token.Value() != child.Token.Value() {
		t.Fatalf("the reuse path was rate limited: %v", err)
	}
	if got := len(*refused); got != 1 {
		t.Fatalf("%d refusals reported, want 1", got)
	}
	// Nothing of the refused commands was stored.
	f, _, err := store.Load(ctx, issued.Family.ID)
	if err != nil || f.Generation != 2 {
		t.Fatalf("family at generation %d after refused commands: %v", f.Generation, err)
	}
	// A replay is never held back: the family dies at once.
	fx.now = fx.now.Add(time.Minute)
	_, err = s.Refresh(ctx, RefreshRequest{Token: issued.Token.Value(), ClientID: "web"})
	if domain.ErrorCode(err) != domain.EInvalidGrant {
		t.Fatalf("replay while rate limited: %v", err)
	}
	if f, _, _ := store.Load(ctx, issued.Family.ID); f.Status != domain.StatusRevoked {
		t.Fatalf("the replay did not revoke the family: %s", f.Status)
	}
}

func TestIssueLimitPerClient(t *testing.T) {
	s, _, _, refused := limitedService(t)
	ctx := context.Background()
	for range 2 {
		if _, err := s.Issue(ctx, IssueRequest{Subject: "u", ClientID: "web"}); err != nil {
			t.Fatal(err)
		}
	}
	_, err := s.Issue(ctx, IssueRequest{Subject: "u", ClientID: "web"})
	wantLimited(t, err)
	if _, err := s.Issue(ctx, IssueRequest{Subject: "u", ClientID: "mobile"}); err != nil {
		t.Fatalf("another client was limited: %v", err)
	}
	if len(*refused) != 1 || (*refused)[0] != LimitIssuePerClient {
		t.Fatalf("refusals reported: %v", *refused)
	}
}

// TestForeignPresentationsChargedToPresenter: a client presenting another
// client's token pays for it from its own bucket. Charged to the family,
// a handful of foreign tries would lock the owner out.
func TestForeignPresentationsChargedToPresenter(t *testing.T) {
	s, _, _, refused := limitedService(t)
	frozen := func() time.Time { return time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC) }
	s.RefreshLimit = ratelimit.NewKeyedLimiter(0.001, 2, 64, frozen)
	s.ForeignLimit = ratelimit.NewKeyedLimiter(0.001, 3, 64, frozen)
	ctx := context.Background()
	issued, err := s.Issue(ctx, IssueRequest{Subject: "u", ClientID: "web"})
	if err != nil {
		t.Fatal(err)
	}
	stolen := issued.Token.Value()
	for i := range 3 {
		if _, err := s.Refresh(ctx, RefreshRequest{Token: stolen, ClientID: "intruder"}); domain.ErrorCode(err) != domain.EInvalidGrant {
			t.Fatalf("foreign try %d: %v, want invalid_grant", i, err)
		}
	}
	_, err = s.Refresh(ctx, RefreshRequest{Token: stolen, ClientID: "intruder"})
	wantLimited(t, err)
	if _, err := s.Refresh(ctx, RefreshRequest{Token: stolen, ClientID: "other-intruder"}); domain.ErrorCode(err) != domain.EInvalidGrant {
		t.Fatalf("a second foreign client shares the first one's bucket: %v", err)
	}
	// The owner's family budget is untouched: both its rotations go through.
	next, err := s.Refresh(ctx, RefreshRequest{Token: stolen, ClientID: "web"})
	if err != nil {
		t.Fatalf("the owner was locked out by foreign presentations: %v", err)
	}
	if _, err := s.Refresh(ctx, RefreshRequest{Token: next.Token.Value(), ClientID: "web"}); err != nil {
		t.Fatalf("the owner's second rotation: %v", err)
	}
	if len(*refused) != 1 || (*refused)[0] != LimitForeignPerClient {
		t.Fatalf("refusals reported: %v", *refused)
	}
}

// TestLeakedKeyPresentationsChargedToPresenter: tokens forged with a MAC
// key retired before the family existed are refused as retired_key and
// paid for by the presenting client, so a leaked old key cannot spend a
// family's budget and lock its owner out.
func TestLeakedKeyPresentationsChargedToPresenter(t *testing.T) {
	fx := newFixture(t)
	current := domain.MACKey{ID: "k1", Secret: []byte("a MAC key for tests, 32 bytes ok")}
	leaked := domain.MACKey{ID: "k0", Secret: []byte("an old key, retired an hour ago."), RetiredAt: fx.now.Add(-time.Hour)}
	var err error
	if fx.codec, err = domain.NewTokenCodec(current, leaked); err != nil {
		t.Fatal(err)
	}
	s, store := newTestService(t, fx)
	frozen := func() time.Time { return fx.now }
	s.RefreshLimit = ratelimit.NewKeyedLimiter(0.001, 1, 64, frozen)
	s.ForeignLimit = ratelimit.NewKeyedLimiter(0.001, 2, 64, frozen)
	ctx := context.Background()
	issued, err := s.Issue(ctx, IssueRequest{Subject: "u", ClientID: "web"})
	if err != nil {
		t.Fatal(err)
	}
	withLeakedKey, _ := domain.NewTokenCodec(domain.MACKey{ID: leaked.ID, Secret: leaked.Secret})
	forged := withLeakedKey.Mint(issued.Family.ID, 1, [domain.SecretSize]byte{9}).Value()
	for i := range 2 {
		if _, err := s.Refresh(ctx, RefreshRequest{Token: forged, ClientID: "web"}); domain.ErrorCode(err) != domain.EInvalidGrant {
			t.Fatalf("forged try %d: %v, want invalid_grant", i, err)
		}
	}
	_, err = s.Refresh(ctx, RefreshRequest{Token: forged, ClientID: "web"})
	wantLimited(t, err)
	if f, _, _ := store.Load(ctx, issued.Family.ID); f.Status != domain.StatusActive {
		t.Fatalf("forged ancestors revoked the family: %s", f.Status)
	}
	if _, err := s.Refresh(ctx, RefreshRequest{Token: issued.Token.Value(), ClientID: "web"}); err != nil {
		t.Fatalf("the owner's rotation after forged presentations: %v", err)
	}
}
