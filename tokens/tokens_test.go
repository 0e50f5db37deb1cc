package tokens

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events"
	"github.com/tokend/tokend/events/eventstest"
)

var testSubjects = events.Subjects{Prefix: "tokens"}

// MustJetStream starts an in-process JetStream server and sets up the stream.
func MustJetStream(tb testing.TB) (*nats.Conn, jetstream.JetStream, jetstream.Stream) {
	tb.Helper()
	nc, js := eventstest.MustJS(tb)
	stream, err := events.Setup(context.Background(), js, testSubjects, events.StreamLimits{Replicas: 1})
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

// newTestService returns a service on a fresh stream with the fixture's
// keys and policy at the fixture's time, and its store for checking what
// was stored.
func newTestService(tb testing.TB, fx *fixture) (*Service, *events.Store) {
	tb.Helper()
	nc, js, stream := MustJetStream(tb)
	store := events.NewStore(nc, js, stream, testSubjects)
	return NewService(events.NewWriter(store, 64), fx.codec, fx.decider.Policy, func() time.Time { return fx.now }), store
}
