package tokens

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events"
	"github.com/tokend/tokend/events/eventstest"
)

// TestEventsExpireWithTheirFamily: in a real stream (DenyDelete and
// DenyPurge on), a family's history, replay batch included, goes when the
// retention after its absolute expiry is over, and its summary later.
func TestEventsExpireWithTheirFamily(t *testing.T) {
	nc, js, stream := MustJetStream(t)
	fx := newFixture(t)
	// Real time: the server expires messages by its own clock.
	fx.now = time.Now()
	fx.decider.Policy = domain.Policy{ReuseInterval: time.Second, IdleTTL: time.Hour, AbsoluteTTL: 2 * time.Second}
	store := events.NewStore(nc, js, stream, testSubjects)
	store.Retention = events.Retention{AfterExpiry: time.Second, Archive: 4 * time.Second}
	s := NewService(events.NewWriter(store, 16), fx.codec, fx.decider.Policy, func() time.Time { return fx.now })
	ctx := context.Background()

	g, err := s.Issue(ctx, IssueRequest{Subject: "u", ClientID: "c"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Refresh(ctx, RefreshRequest{Token: g.Token.Value(), ClientID: "c"}); err != nil {
		t.Fatal(err)
	}
	fx.now = fx.now.Add(1100 * time.Millisecond) // past the reuse interval: the parent is a replay
	if _, err := s.Refresh(ctx, RefreshRequest{Token: g.Token.Value(), ClientID: "c"}); domain.ErrorCode(err) != domain.EInvalidGrant {
		t.Fatalf("replay: %v", err)
	}
	if ok, err := s.Archive(ctx, g.Family.ID); ok || err != nil {
		t.Fatalf("archived before the absolute expiry: %v %v", ok, err)
	}
	fx.now = g.Family.AbsoluteExpiresAt
	if ok, err := s.Archive(ctx, g.Family.ID); !ok || err != nil {
		t.Fatalf("not archived at the absolute expiry: %v %v", ok, err)
	}
	if ok, _ := s.Archive(ctx, g.Family.ID); ok {
		t.Fatal("archived twice")
	}
	subject := testSubjects.Family(g.Family.ID)
	count := func() uint64 {
		info, err := stream.Info(ctx, jetstream.WithSubjectFilter(subject))
		if err != nil {
			t.Fatal(err)
		}
		return info.State.Subjects[subject]
	}
	if n := count(); n != 5 { // issued, rotated, replay_detected, family.revoked, family.archived
		t.Fatalf("%d events stored, want 5", n)
	}
	eventstest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		if n := count(); n != 1 {
			return fmt.Errorf("%d events left, want the summary alone", n)
		}
		return nil
	})
	f, _, err := store.Load(ctx, g.Family.ID)
	if err != nil || f.ArchivedAt.IsZero() || f.Status != domain.StatusRevoked || f.Generation != 2 {
		t.Fatalf("the summary does not hold the final state: %+v %v", f, err)
	}
	eventstest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		if n := count(); n != 0 {
			return fmt.Errorf("%d events left, want none", n)
		}
		return nil
	})
}

func TestJanitorArchivesExpiredFamiliesOnce(t *testing.T) {
	fx := newFixture(t)
	s, store := newTestService(t, fx)
	ctx := context.Background()
	var ids []string
	for i := range 3 {
		g, err := s.Issue(ctx, IssueRequest{Subject: fmt.Sprint("u", i), ClientID: "c"})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, g.Family.ID)
	}
	fx.now = fx.now.Add(fx.decider.Policy.AbsoluteTTL)
	var archived []int
	j := &Janitor{Tokens: s, Now: func() time.Time { return fx.now }, OnArchived: func(n int) { archived = append(archived, n) },
		// A read model lagging behind: it still lists everything, twice.
		Expired: func(_ context.Context, before time.Time, limit int) ([]string, error) {
			if !before.Equal(fx.now) || limit < 1 {
				t.Errorf("Expired(%v, %d)", before, limit)
			}
			return append(ids, ids...), nil
		}}
	for range 2 {
		if _, err := j.Sweep(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if len(archived) != 1 || archived[0] != 3 {
		t.Fatalf("archived per sweep: %v, want [3]", archived)
	}
	for _, id := range ids {
		if f, _, _ := store.Load(ctx, id); f.ArchivedAt.IsZero() {
			t.Fatalf("family %s not archived", id)
		}
	}
}
