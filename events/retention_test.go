package events

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events/eventstest"
)

func TestRetentionTTL(t *testing.T) {
	at := time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)
	r := Retention{AfterExpiry: 90 * 24 * time.Hour, Archive: 365 * 24 * time.Hour}
	env := func(typ domain.EventType, absExpiry time.Time) Envelope {
		return Envelope{Type: string(typ), Time: at, Data: Data{Family: Snapshot{AbsoluteExpiresAt: absExpiry}}}
	}
	tests := []struct {
		name string
		r    Retention
		env  Envelope
		want time.Duration
	}{
		{"an event of a live family stays until retention after the absolute expiry",
			r, env(domain.TokenRotated, at.Add(30*24*time.Hour)), 120 * 24 * time.Hour},
		{"an event after the absolute expiry stays retention from its own time",
			r, env(domain.RefreshRejected, at.Add(-time.Hour)), 90 * 24 * time.Hour},
		{"a summary stays the archive retention", r, env(domain.FamilyArchived, at), 365 * 24 * time.Hour},
		{"retention off keeps events forever", Retention{Archive: time.Hour}, env(domain.TokenIssued, at.Add(time.Hour)), 0},
		{"archive retention off keeps summaries forever", Retention{AfterExpiry: time.Hour}, env(domain.FamilyArchived, at), 0},
	}
	for _, tc := range tests {
		if got := tc.r.TTL(tc.env); got != tc.want {
			t.Errorf("%s: TTL = %v, want %v", tc.name, got, tc.want)
		}
	}
	// MaxAge outlasts every TTL of a deployment whose families live 30 days.
	absolute := 30 * 24 * time.Hour
	if got := r.MaxAge(absolute); got < r.TTL(env(domain.TokenIssued, at.Add(absolute))) || got < r.Archive+absolute {
		t.Errorf("MaxAge %v is shorter than a TTL", got)
	}
	if (Retention{}).MaxAge(absolute) != 0 || (Retention{AfterExpiry: time.Hour}).MaxAge(absolute) != 0 {
		t.Error("MaxAge must be 0 (none) while anything is kept forever")
	}
	for d, want := range map[time.Duration]string{time.Second: "1", 1500 * time.Millisecond: "2", time.Millisecond: "1", 90 * time.Hour: "324000"} {
		if got := ttlHeader(d); got != want {
			t.Errorf("ttlHeader(%v) = %s, want %s", d, got, want)
		}
	}
}

// TestEventsExpireWithTheirFamily: in a real stream (DenyDelete and
// DenyPurge on), a family's history, replay batch included, goes when the
// retention after its absolute expiry is over, and its summary later.
func TestEventsExpireWithTheirFamily(t *testing.T) {
	nc, js, stream := MustJetStream(t)
	fx := newFixture(t)
	// Real time: the server expires messages by its own clock.
	fx.now = time.Now()
	fx.decider.Policy = domain.Policy{ReuseInterval: time.Second, IdleTTL: time.Hour, AbsoluteTTL: 2 * time.Second}
	store := NewStore(nc, js, stream, testSubjects)
	store.Retention = Retention{AfterExpiry: time.Second, Archive: 4 * time.Second}
	s := NewService(NewWriter(store, 16), fx.codec, fx.decider.Policy, func() time.Time { return fx.now })
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

// TestSetupMigratesAnOldStream: a stream created by an earlier version (no
// size or age limits, deletes and purges denied) takes the new limits on
// the next start, keeping its events.
func TestSetupMigratesAnOldStream(t *testing.T) {
	nc := eventstest.MustConnect(t, eventstest.MustJetStream(t).ClientURL())
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	old := StreamConfig(testSubjects, StreamLimits{Replicas: 1})
	old.MaxAge, old.MaxBytes = 0, -1
	if _, err := js.CreateStream(ctx, old); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, testSubjects.Family("f"), []byte("{}")); err != nil {
		t.Fatal(err)
	}
	stream, err := Setup(ctx, js, testSubjects, StreamLimits{Replicas: 1, MaxBytes: 1 << 30, MaxAge: 24 * time.Hour})
	if err != nil {
		t.Fatalf("an existing stream could not take the new limits: %v", err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if c := info.Config; c.MaxAge != 24*time.Hour || c.MaxBytes != 1<<30 || !c.AllowMsgTTL || !c.DenyPurge || !c.DenyDelete {
		t.Fatalf("after migration: %+v", c)
	}
	if info.State.Msgs != 1 {
		t.Fatalf("migration lost events: %d left", info.State.Msgs)
	}
}

func TestJanitorArchivesExpiredFamiliesOnce(t *testing.T) {
	nc, js, stream := MustJetStream(t)
	fx := newFixture(t)
	s := NewService(NewWriter(NewStore(nc, js, stream, testSubjects), 16), fx.codec, fx.decider.Policy,
		func() time.Time { return fx.now })
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
		if f, _, _ := s.writer.store.Load(ctx, id); f.ArchivedAt.IsZero() {
			t.Fatalf("family %s not archived", id)
		}
	}
}
