package events

import (
	"context"
	"testing"
	"time"

	"github.com/tokend/tokend/domain"
)

// TestRotationStoredLateStartsTheReuseIntervalWhenStored: a rotation
// decided, then stored 30 s later (tokend frozen between the two), takes
// effect when stored, in the writer's cache and for whoever loads it from
// the stream: a retry of its lost reply right after the freeze gets the
// same child. A rotation stored when decided, or decided by a clock far
// from the store's (a test's), keeps its decision time.
func TestRotationStoredLateStartsTheReuseIntervalWhenStored(t *testing.T) {
	nc, js, stream := MustJetStream(t)
	store := NewStore(nc, js, stream, testSubjects)
	ctx := context.Background()
	fx := newFixture(t)
	for _, tc := range []struct {
		name       string
		decidedAgo time.Duration
		wantStored bool
	}{
		{"stored 30 s after its decision", 30 * time.Second, true},
		{"stored as decided", 0, false},
		{"decided by a clock a day off", 24 * time.Hour, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := NewWriter(store, 16)
			family := domain.NewID([]byte(tc.name))
			fx.now = time.Now().Add(-tc.decidedAgo).UTC()
			tok1 := fx.mint(family, 1)
			if _, err := w.Handle(ctx, family, func(f domain.Family) ([]domain.Event, error) {
				return fx.decider.Decide(f, domain.Issue{Token: tok1, Subject: "u", ClientID: "c"})
			}); err != nil {
				t.Fatal(err)
			}
			before := time.Now()
			d, err := w.Handle(ctx, family, func(f domain.Family) ([]domain.Event, error) {
				return fx.decider.Decide(f, domain.Refresh{Presented: tok1, ClientID: "c", Child: fx.mint(family, 2)})
			})
			if err != nil {
				t.Fatal(err)
			}
			decided := d.Events[0].Time
			check := func(where string, f domain.Family) {
				t.Helper()
				switch stored := !f.RotatedAt.Before(before); {
				case stored != tc.wantStored:
					t.Errorf("%s: RotatedAt %v (decided %v, stored after %v)", where, f.RotatedAt, decided, before)
				case !tc.wantStored && !f.RotatedAt.Equal(decided):
					t.Errorf("%s: RotatedAt %v, want the decision's %v", where, f.RotatedAt, decided)
				}
			}
			cached, err := w.load(ctx, family, false)
			if err != nil {
				t.Fatal(err)
			}
			check("the writer's cache", cached.family)
			for _, latest := range []bool{false, true} {
				f, _, err := store.load(ctx, family, latest)
				if err != nil {
					t.Fatal(err)
				}
				check("loaded from the stream", f)
			}
		})
	}
}
