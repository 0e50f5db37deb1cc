package events

import (
	"context"
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
	deployment := []struct {
		r    Retention
		typ  string
		want time.Duration
	}{
		{r, SubjectRevoked, r.AfterExpiry},
		{r, KeyRevoked, r.AfterExpiry},
		{r, SSFVerification, VerificationTTL},
		{Retention{AfterExpiry: time.Hour}, SSFVerification, time.Hour},
		{Retention{}, SSFVerification, VerificationTTL},
		{Retention{}, ClientRevoked, 0},
	}
	for _, tc := range deployment {
		if got := tc.r.DeploymentTTL(DeploymentEvent{Type: tc.typ}); got != tc.want {
			t.Errorf("DeploymentTTL(%s) with %+v = %v, want %v", tc.typ, tc.r, got, tc.want)
		}
	}
	for d, want := range map[time.Duration]string{time.Second: "1", 1500 * time.Millisecond: "2", time.Millisecond: "1", 90 * time.Hour: "324000"} {
		if got := ttlHeader(d); got != want {
			t.Errorf("ttlHeader(%v) = %s, want %s", d, got, want)
		}
	}
}

// TestSetupMigratesAnOldStream: a stream created by an earlier version (no
// size or age limits, deletes and purges denied, only the family subjects)
// takes the new limits and the deployment events' subjects on the next
// start, keeping its events.
func TestSetupMigratesAnOldStream(t *testing.T) {
	nc := eventstest.MustConnect(t, eventstest.MustJetStream(t).ClientURL())
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	old := StreamConfig(testSubjects, StreamLimits{Replicas: 1})
	old.MaxAge, old.MaxBytes = 0, -1
	old.Subjects = []string{testSubjects.Events()}
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
	store := NewStore(nc, js, stream, testSubjects)
	for _, ev := range []DeploymentEvent{
		SubjectRevokedEvent("user-1", "user_disabled", 2, 1, time.Now()),
		VerificationEvent("s1", "", time.Now()),
	} {
		if _, err := store.AppendDeployment(ctx, ev); err != nil {
			t.Fatalf("a migrated stream refuses %s: %v", ev.Type, err)
		}
	}
}
