package events

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events/eventstest"
)

var testSubjects = Subjects{Prefix: "tokens"}

// MustJetStream starts an in-process JetStream server and sets up the stream.
func MustJetStream(tb testing.TB) (*nats.Conn, jetstream.JetStream, jetstream.Stream) {
	tb.Helper()
	nc := eventstest.MustConnect(tb, eventstest.MustJetStream(tb).ClientURL())
	js, _ := jetstream.New(nc)
	stream, err := Setup(context.Background(), js, testSubjects, StreamLimits{Replicas: 1})
	if err != nil {
		tb.Fatal(err)
	}
	return nc, js, stream
}

type fixture struct {
	codec   *domain.TokenCodec
	decider domain.Decider
	now     time.Time
}

func newFixture(tb testing.TB) *fixture {
	tb.Helper()
	codec, err := domain.NewTokenCodec(domain.MACKey{ID: "k1", Secret: []byte("a MAC key for tests, 32 bytes ok")})
	if err != nil {
		tb.Fatal(err)
	}
	f := &fixture{codec: codec, now: time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)}
	f.decider = domain.Decider{Policy: domain.Policy{ReuseInterval: 10 * time.Second, IdleTTL: time.Hour, AbsoluteTTL: 24 * time.Hour},
		Now: func() time.Time { return f.now }, NewEventID: nuid.Next}
	return f
}

func (f *fixture) mint(family string, gen uint64) domain.Token {
	return f.codec.Mint(family, gen, [domain.SecretSize]byte{byte(gen), 1})
}

func TestAppendAndLoadInOneRead(t *testing.T) {
	nc, js, stream := MustJetStream(t)
	store := NewStore(nc, js, stream, testSubjects)
	fx := newFixture(t)
	ctx := context.Background()

	family := "fam-load"
	var all []domain.Event
	state, seq := domain.Family{}, uint64(0)
	apply := func(evs []domain.Event, err error) {
		t.Helper()
		if len(evs) == 0 {
			t.Fatalf("no events: %v", err)
		}
		after := state
		envs := make([]Envelope, len(evs))
		for i, e := range evs {
			after = domain.Evolve(after, e)
			envs[i] = Wrap(e, after)
		}
		if seq, err = store.Append(ctx, family, seq, envs); err != nil {
			t.Fatal(err)
		}
		state = after
		all = append(all, evs...)
	}
	apply(fx.decider.Decide(state, domain.Issue{Token: fx.mint(family, 1), Subject: "u", ClientID: "c", Scope: []string{"a", "b"}, Audience: []string{"https://x"}}))
	for gen := uint64(1); gen < 4; gen++ {
		fx.now = fx.now.Add(time.Minute)
		apply(fx.decider.Decide(state, domain.Refresh{Presented: fx.mint(family, gen), ClientID: "c", Child: fx.mint(family, gen+1)}))
	}
	fx.now = fx.now.Add(time.Minute)
	apply(fx.decider.Decide(state, domain.Refresh{Presented: fx.mint(family, 1), ClientID: "c"})) // ancestor: replay + revoke

	loaded, loadedSeq, err := store.Load(ctx, family)
	if err != nil {
		t.Fatal(err)
	}
	if loadedSeq != seq {
		t.Fatalf("loaded seq %d, last append %d", loadedSeq, seq)
	}
	if want := domain.Fold(all); !reflect.DeepEqual(normalize(loaded), normalize(want)) {
		t.Fatalf("state from the last message:\n%+v\nfold of every event:\n%+v", loaded, want)
	}
	if loaded.Status != domain.StatusRevoked || loaded.RevokedReason != domain.ReasonReplayDetected {
		t.Fatalf("after replay: %s %s", loaded.Status, loaded.RevokedReason)
	}
	if f, s, err := store.Load(ctx, "no-such-family"); err != nil || f.Exists() || s != 0 {
		t.Fatalf("unknown family: %+v %d %v", f, s, err)
	}

	// The stream leader's answer (a replicated stream's LoadLatest) is the
	// same state and sequence.
	if _, err := js.Publish(ctx, testSubjects.Family("fam-junk"), []byte(`{"type":"token.hacked"}`)); err != nil {
		t.Fatal(err)
	}
	for name, load := range map[string]func(context.Context, string) (domain.Family, uint64, error){
		"LoadLatest": store.LoadLatest, "from the leader": store.fromLeader,
	} {
		latest, latestSeq, err := load(ctx, family)
		if err != nil || latestSeq != seq || !reflect.DeepEqual(normalize(latest), normalize(loaded)) {
			t.Fatalf("%s: seq %d (want %d), %v\n%+v\nwant\n%+v", name, latestSeq, seq, err, latest, loaded)
		}
		if f, s, err := load(ctx, "no-such-family"); err != nil || f.Exists() || s != 0 {
			t.Fatalf("%s of an unknown family: %+v %d %v", name, f, s, err)
		}
		if _, _, err := load(ctx, "fam-junk"); !errors.Is(err, ErrMalformedEvent) {
			t.Fatalf("%s of a malformed event: %v, want ErrMalformedEvent", name, err)
		}
	}
}

func TestAPIPrefix(t *testing.T) {
	for _, tc := range []struct {
		opts jetstream.JetStreamOptions
		want string
	}{
		{jetstream.JetStreamOptions{}, "$JS.API."},
		{jetstream.JetStreamOptions{Domain: "hub"}, "$JS.hub.API."},
		{jetstream.JetStreamOptions{APIPrefix: "$JS.acc.API"}, "$JS.acc.API."},
		{jetstream.JetStreamOptions{APIPrefix: "$JS.acc.API."}, "$JS.acc.API."},
	} {
		if got := apiPrefix(tc.opts); got != tc.want {
			t.Errorf("apiPrefix(%+v) = %q, want %q", tc.opts, got, tc.want)
		}
	}
}

// BenchmarkLoad compares the direct get of a family's last event (Load,
// the write path, and LoadLatest on a stream of one replica) with the
// stream leader's message get (LoadLatest on a replicated stream).
//
//	go test -run '^$' -bench Load ./events
func BenchmarkLoad(b *testing.B) {
	nc, js, stream := MustJetStream(b)
	store := NewStore(nc, js, stream, testSubjects)
	fx := newFixture(b)
	ctx := context.Background()
	families := make([]string, 100)
	for i := range families {
		families[i] = fmt.Sprintf("fam-%d", i)
		evs, _ := fx.decider.Decide(domain.Family{}, domain.Issue{Token: fx.mint(families[i], 1), Subject: "u", ClientID: "c",
			Scope: []string{"openid", "api:read"}, Audience: []string{"https://api.example.com"}})
		if _, err := store.Append(ctx, families[i], 0, []Envelope{Wrap(evs[0], domain.Evolve(domain.Family{}, evs[0]))}); err != nil {
			b.Fatal(err)
		}
	}
	for name, load := range map[string]func(context.Context, string) (domain.Family, uint64, error){
		"direct": store.Load, "leader": store.fromLeader,
	} {
		b.Run(name, func(b *testing.B) {
			for i := 0; b.Loop(); i++ {
				if f, _, err := load(ctx, families[i%len(families)]); err != nil || !f.Exists() {
					b.Fatal(f, err)
				}
			}
		})
	}
}

// normalize drops monotonic clock readings and nil-vs-empty differences that
// a JSON round trip does not keep.
func normalize(f domain.Family) domain.Family {
	for _, t := range []*time.Time{&f.RotatedAt, &f.CreatedAt, &f.LastUsedAt, &f.IdleExpiresAt, &f.AbsoluteExpiresAt, &f.RevokedAt} {
		*t = t.UTC().Round(0)
	}
	if len(f.Scope) == 0 {
		f.Scope = nil
	}
	if len(f.Audience) == 0 {
		f.Audience = nil
	}
	return f
}

func TestFenceRefusesStaleAppendAtomically(t *testing.T) {
	nc, js, stream := MustJetStream(t)
	store := NewStore(nc, js, stream, testSubjects)
	fx := newFixture(t)
	ctx := context.Background()
	family := "fam-fence"

	issued, _ := fx.decider.Decide(domain.Family{}, domain.Issue{Token: fx.mint(family, 1), Subject: "u", ClientID: "c"})
	state := domain.Evolve(domain.Family{}, issued[0])
	seq, err := store.Append(ctx, family, 0, []Envelope{Wrap(issued[0], state)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Append(ctx, family, 0, []Envelope{Wrap(issued[0], state)}); !errors.Is(err, ErrConflict) {
		t.Fatalf("second issue on the same subject: %v, want ErrConflict", err)
	}

	revoke := func(reason string) []Envelope {
		evs, _ := fx.decider.Decide(state, domain.Revoke{Reason: reason})
		replay := evs[0]
		replay.Type, replay.ID = domain.ReplayDetected, nuid.Next()
		return []Envelope{Wrap(replay, state), Wrap(evs[0], domain.Evolve(state, evs[0]))}
	}
	// A stale batch: its fence fails, so neither message may land.
	if _, err := store.Append(ctx, family, seq-1+100, revoke("stale")); !errors.Is(err, ErrConflict) {
		t.Fatalf("stale batch: %v, want ErrConflict", err)
	}
	info, _ := stream.Info(ctx)
	if info.State.Msgs != 1 {
		t.Fatalf("a refused batch stored %d messages", info.State.Msgs-1)
	}
	last, err := store.Append(ctx, family, seq, revoke("fresh"))
	if err != nil {
		t.Fatal(err)
	}
	if last != seq+2 {
		t.Fatalf("batch of two ended at seq %d, want %d", last, seq+2)
	}
}

func TestWriterRetriesOnConflict(t *testing.T) {
	nc, js, stream := MustJetStream(t)
	store := NewStore(nc, js, stream, testSubjects)
	fx := newFixture(t)
	ctx := context.Background()
	family := "fam-retry"
	a, b := NewWriter(store, 16), NewWriter(store, 16)

	issue := func(f domain.Family) ([]domain.Event, error) {
		return fx.decider.Decide(f, domain.Issue{Token: fx.mint(family, 1), Subject: "u", ClientID: "c"})
	}
	if _, err := a.Handle(ctx, family, issue); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Handle(ctx, family, func(f domain.Family) ([]domain.Event, error) {
		return fx.decider.Decide(f, domain.Revoke{Reason: "by-b"})
	}); err != nil {
		t.Fatal(err)
	}
	// a's cached state still says active; its first attempt must be fenced
	// off and its second must see b's revocation.
	var attempts atomic.Int32
	d, err := a.Handle(ctx, family, func(f domain.Family) ([]domain.Event, error) {
		attempts.Add(1)
		return fx.decider.Decide(f, domain.Revoke{Reason: "by-a"})
	})
	if err != nil {
		t.Fatal(err)
	}
	if attempts.Load() != 2 || len(d.Events) != 0 || d.After.RevokedReason != "by-b" {
		t.Fatalf("attempts %d, events %d, reason %q", attempts.Load(), len(d.Events), d.After.RevokedReason)
	}
}

func TestDecodeRefusesForeignMessages(t *testing.T) {
	for _, data := range []string{``, `{}`, `[]`, `{"id":"x","type":"token.hacked","family_id":"f","generation":1,"data":{"family":{"status":"active"}}}`,
		`{"id":"x","type":"token.issued","family_id":"other","generation":1,"data":{"family":{"status":"active"}}}`} {
		if _, err := Decode([]byte(data), "f"); !errors.Is(err, ErrMalformedEvent) {
			t.Errorf("%q: %v", data, err)
		}
	}
}

// fromLeader is Load answered by the stream leader, as LoadLatest reads on
// a replicated stream.
func (s *Store) fromLeader(ctx context.Context, familyID string) (domain.Family, uint64, error) {
	return s.load(ctx, familyID, true)
}
