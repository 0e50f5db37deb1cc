package signals

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events/eventstest"
)

// changes records what OnChange was told.
type changes struct {
	mu  sync.Mutex
	got []StreamChange
}

func (c *changes) add(ch StreamChange) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.got = append(c.got, ch)
}

// await waits until the n-th change (1-based) has come, and returns it.
func (c *changes) await(t *testing.T, n int) StreamChange {
	t.Helper()
	var out StreamChange
	eventstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		c.mu.Lock()
		defer c.mu.Unlock()
		if len(c.got) < n {
			return fmt.Errorf("%d changes, waiting for %d", len(c.got), n)
		}
		out = c.got[n-1]
		return nil
	})
	return out
}

// clock is a test clock a second ahead at each reading, and the keys of
// the stores that share it.
type clock struct {
	ticks     atomic.Int64
	sealing   sync.Once
	sharedKey *testKeys
}

func (c *clock) keys(t *testing.T) *testKeys {
	c.sealing.Do(func() { c.sharedKey = newTestKeys(t) })
	return c.sharedKey
}

func (c *clock) now() time.Time { return at.Add(time.Duration(c.ticks.Add(1)) * time.Second) }

// mustStore opens a store; the stores of one test share keys, as the
// instances of a deployment do.
func mustStore(t *testing.T, js jetstream.JetStream, c *changes, clk *clock) *Store {
	t.Helper()
	s, err := Open(context.Background(), js, Options{Replicas: 1, OnChange: c.add, Now: clk.now, Keys: clk.keys(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	return s
}

var push = &Delivery{Method: DeliveryPush, EndpointURL: "https://rp.example/ssf", AuthorizationHeader: "Bearer s3cret"}

func TestStoreLifecycle(t *testing.T) {
	_, js := eventstest.MustJS(t)
	ctx := context.Background()
	var clk clock
	var seenA, seenB changes
	a, b := mustStore(t, js, &seenA, &clk), mustStore(t, js, &seenB, &clk)

	st, err := a.Create(ctx, NewStream{Receiver: "rp-1", Request: StreamRequest{Delivery: push, Description: ptr("prod")}})
	if err != nil {
		t.Fatal(err)
	}
	stored := *push
	stored.AuthorizationHeader = "" // sealed: see seal_test.go
	if !ValidStreamID(st.ID) || st.Status != StatusEnabled || st.Receiver != "rp-1" || len(st.Audience) != 1 || st.Audience[0] != "rp-1" ||
		st.Revision == 0 || st.Delivery != stored || st.CreatedAt.IsZero() || !st.CreatedAt.Equal(st.UpdatedAt) {
		t.Fatalf("created %+v", st)
	}
	// Every instance learns of it, the creating one included.
	for _, seen := range []*changes{&seenA, &seenB} {
		if ch := seen.await(t, 1); ch.Previous != nil || ch.Deleted || ch.Stream.ID != st.ID || ch.Stream.Revision != st.Revision {
			t.Fatalf("created: %+v", ch)
		}
	}
	if got, ok := b.Lookup(st.ID); !ok || got.Description != "prod" || len(b.Streams()) != 1 {
		t.Fatalf("b holds %+v, %v", got, ok)
	}
	got, err := b.Get(ctx, st.ID)
	if err != nil || got.Revision != st.Revision || got.Delivery != st.Delivery || !got.CreatedAt.Equal(st.CreatedAt) {
		t.Fatalf("get: %+v, %v", got, err)
	}
	if list, err := b.List(ctx, "rp-1"); err != nil || len(list) != 1 || list[0].ID != st.ID {
		t.Fatalf("list rp-1: %+v, %v", list, err)
	}
	if list, err := b.List(ctx, "rp-2"); err != nil || len(list) != 0 {
		t.Fatalf("list rp-2: %+v, %v", list, err)
	}

	// Compare-and-set: a change made on a revision read earlier is refused.
	paused, changed, err := b.SetStatus(ctx, st.ID, st.Revision, StatusPaused, "maintenance")
	if err != nil || !changed || paused.Status != StatusPaused || paused.Revision <= st.Revision || !paused.UpdatedAt.After(st.UpdatedAt) {
		t.Fatalf("pause: %+v, %v, %v", paused, changed, err)
	}
	_, err = a.Update(ctx, st.ID, st.Revision, func(s *Stream) (bool, error) { return true, s.Patch(StreamRequest{Description: ptr("x")}) })
	if !errors.Is(err, ErrRevisionChanged) || domain.ErrorCode(err) != domain.EInvalidRequest {
		t.Fatalf("an update on a stale revision: %v", err)
	}
	if _, changed, err := a.SetStatus(ctx, st.ID, 0, StatusPaused, "maintenance"); changed || err != nil {
		t.Fatalf("pausing again: %v, %v", changed, err)
	}
	ch := seenA.await(t, 2)
	if ch.Previous == nil || ch.Previous.Status != StatusEnabled || ch.Stream.Status != StatusPaused || ch.Stream.Reason != "maintenance" {
		t.Fatalf("the pause as a change: %+v", ch)
	}

	// An update keeps what is not the receiver's to change.
	updated, err := a.Update(ctx, st.ID, 0, func(s *Stream) (bool, error) {
		s.Receiver, s.Audience, s.CreatedAt, s.ID = "rp-2", []string{"evil"}, time.Time{}, "other"
		return true, s.Patch(StreamRequest{EventsRequested: []string{TypeSessionRevoked}})
	})
	if err != nil || updated.ID != st.ID || updated.Receiver != "rp-1" || updated.Audience[0] != "rp-1" || !updated.CreatedAt.Equal(st.CreatedAt) ||
		len(updated.EventsDelivered) != 1 {
		t.Fatalf("update: %+v, %v", updated, err)
	}
	subject := IssSub(issuer, "user-42")
	if s, err := a.RemoveSubject(ctx, st.ID, subject); err != nil || len(s.ExcludedSubjects) != 1 {
		t.Fatalf("remove subject: %+v, %v", s, err)
	}
	if s, err := b.AddSubject(ctx, st.ID, subject); err != nil || len(s.ExcludedSubjects) != 0 {
		t.Fatalf("add subject: %+v, %v", s, err)
	}
	if _, err := a.RemoveSubject(ctx, st.ID, Subject{Format: "nope"}); domain.ErrorCode(err) != domain.EInvalidRequest {
		t.Fatalf("a malformed subject: %v", err)
	}

	// Deleting: compare-and-set too; then it is gone everywhere.
	cur, _ := a.Get(ctx, st.ID)
	if err := a.Delete(ctx, st.ID, st.Revision); !errors.Is(err, ErrRevisionChanged) {
		t.Fatalf("a delete on a stale revision: %v", err)
	}
	if err := a.Delete(ctx, st.ID, cur.Revision); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Get(ctx, st.ID); !errors.Is(err, ErrNotFound) || domain.ErrorCode(err) != domain.ENotFound {
		t.Fatalf("get after delete: %v", err)
	}
	for _, seen := range []*changes{&seenA, &seenB} {
		last := seen.await(t, 6) // created, paused, updated, removed, added, deleted
		if !last.Deleted || last.Stream.ID != st.ID {
			t.Fatalf("the deletion as a change: %+v", last)
		}
	}
	if _, ok := a.Lookup(st.ID); ok {
		t.Fatal("a deleted stream is still in memory")
	}
	if err := a.Delete(ctx, st.ID, 0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleting twice: %v", err)
	}
	for _, id := range []string{"", "x", "../../etc", "0123456789ABCDEF0123456789ABCDEF", "tokens.>"} {
		if _, err := a.Get(ctx, id); !errors.Is(err, ErrNotFound) {
			t.Errorf("get %q: %v", id, err)
		}
	}
}

func TestStoreCreateRules(t *testing.T) {
	_, js := eventstest.MustJS(t)
	ctx := context.Background()
	var clk clock
	s := mustStore(t, js, &changes{}, &clk)

	for i := range MaxStreamsPerReceiver {
		if _, err := s.Create(ctx, NewStream{Receiver: "rp-1", Request: StreamRequest{Description: ptr(fmt.Sprint(i))}}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Create(ctx, NewStream{Receiver: "rp-1"}); !errors.Is(err, ErrTooManyStreams) {
		t.Fatalf("stream %d of a receiver: %v", MaxStreamsPerReceiver+1, err)
	}
	if _, err := s.Create(ctx, NewStream{Receiver: "rp-2"}); err != nil {
		t.Fatalf("another receiver's first stream: %v", err)
	}
	hook := &Delivery{Method: DeliveryWebhook, EndpointURL: "https://siem.example/hook"}
	wh, err := s.Create(ctx, NewStream{CreatedBy: "alice", Request: StreamRequest{Delivery: hook}, WebhookSecret: whsec(1)})
	if err != nil || wh.Receiver != "" || wh.Audience[0] != hook.EndpointURL || !domain.ValidID(wh.Delivery.SecretRef) {
		t.Fatalf("a webhook: %+v, %v", wh, err)
	}
	for name, n := range map[string]NewStream{
		"no owner":                         {Request: StreamRequest{Delivery: hook}, WebhookSecret: whsec(1)},
		"a webhook for a receiver":         {Receiver: "rp-3", Request: StreamRequest{Delivery: hook}, WebhookSecret: whsec(1)},
		"a webhook without a secret":       {CreatedBy: "alice", Request: StreamRequest{Delivery: hook}},
		"a webhook with a short secret":    {CreatedBy: "alice", Request: StreamRequest{Delivery: hook}, WebhookSecret: "whsec_c2hvcnQ="},
		"a webhook secret without prefix":  {CreatedBy: "alice", Request: StreamRequest{Delivery: hook}, WebhookSecret: whsec(1)[len("whsec_"):]},
		"a receiver's stream with clients": {Receiver: "rp-3", Clients: []string{"web-app"}},
		"a webhook naming a bad client":    {CreatedBy: "alice", Request: StreamRequest{Delivery: hook}, WebhookSecret: whsec(1), Clients: []string{"a\nb"}},
		"a receiver with a bad id":         {Receiver: "rp\n3"},
		"too many audiences":               {Receiver: "rp-3", Audience: []string{"a", "b", "c", "d", "e"}},
		"an unsupported method":            {Receiver: "rp-3", Request: StreamRequest{Delivery: &Delivery{Method: "urn:x"}}},
		"an operator's poll stream":        {CreatedBy: "alice"},
		"a push stream without URL":        {Receiver: "rp-3", Request: StreamRequest{Delivery: &Delivery{Method: DeliveryPush}}},
	} {
		if _, err := s.Create(ctx, n); domain.ErrorCode(err) != domain.EInvalidRequest {
			t.Errorf("%s: %v", name, err)
		}
	}
	all, err := s.ListAll(ctx)
	if err != nil || len(all) != MaxStreamsPerReceiver+2 {
		t.Fatalf("%d streams, %v", len(all), err)
	}
	for i := 1; i < len(all); i++ {
		if all[i].CreatedAt.Before(all[i-1].CreatedAt) {
			t.Fatal("ListAll is not oldest first")
		}
	}

	kv, err := js.KeyValue(ctx, Bucket)
	if err != nil {
		t.Fatal(err)
	}
	status, err := kv.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if status.History() != 8 || status.Config().Replicas != 1 || status.Config().Storage != jetstream.FileStorage {
		t.Fatalf("bucket %+v", status.Config())
	}
}

// TestStoreFollowsTheBucket: an instance started later is told of every
// stream present; an entry that is no stream is dropped, as if deleted.
func TestStoreFollowsTheBucket(t *testing.T) {
	_, js := eventstest.MustJS(t)
	ctx := context.Background()
	var clk clock
	first := mustStore(t, js, &changes{}, &clk)
	st, err := first.Create(ctx, NewStream{Receiver: "rp-1"})
	if err != nil {
		t.Fatal(err)
	}
	var seen changes
	later := mustStore(t, js, &seen, &clk)
	if ch := seen.await(t, 1); ch.Stream.ID != st.ID || ch.Previous != nil || ch.Deleted {
		t.Fatalf("the stream present at Open: %+v", ch)
	}
	kv, _ := js.KeyValue(ctx, Bucket)
	// Stored by a version that supported fewer events: a stream that asked
	// for every event gets today's.
	if _, err := kv.Put(ctx, st.ID, []byte(`{"stream_id":"`+st.ID+`","status":"enabled","receiver":"rp-1","aud":["rp-1"],`+
		`"delivery":{"method":"urn:ietf:rfc:8936"},"events_delivered":["`+TypeSessionRevoked+`"]}`)); err != nil {
		t.Fatal(err)
	}
	if got, err := later.Get(ctx, st.ID); err != nil || !reflect.DeepEqual(got.EventsDelivered, EventsSupported) {
		t.Fatalf("an older entry delivers %v, %v", got.EventsDelivered, err)
	}
	seen.await(t, 2)
	if _, err := kv.Put(ctx, st.ID, []byte(`{"stream_id":"`+st.ID+`","status":"on fire"}`)); err != nil {
		t.Fatal(err)
	}
	if ch := seen.await(t, 3); !ch.Deleted || ch.Stream.ID != st.ID {
		t.Fatalf("an unusable entry: %+v", ch)
	}
	if _, ok := later.Lookup(st.ID); ok {
		t.Fatal("an unusable entry is delivered to")
	}
}
