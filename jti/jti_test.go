package jti

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokend/tokend/events/eventstest"
)

func mustCache(tb testing.TB, url string) *Cache {
	tb.Helper()
	js, err := jetstream.New(eventstest.MustConnect(tb, url))
	if err != nil {
		tb.Fatal(err)
	}
	c, err := Open(context.Background(), js, 1, time.Now)
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

func mustSeen(tb testing.TB, c *Cache, key string, until time.Time) bool {
	tb.Helper()
	seen, err := c.Seen(context.Background(), key, until)
	if err != nil {
		tb.Fatal(err)
	}
	return seen
}

// TestSeenOnceAcrossInstances: a key is new once, whichever instance
// asks, and keys do not collide.
func TestSeenOnceAcrossInstances(t *testing.T) {
	url := eventstest.MustJetStream(t).ClientURL()
	a, b := mustCache(t, url), mustCache(t, url)
	until := time.Now().Add(time.Minute)
	if mustSeen(t, a, "assertion\x00svc\x00jti-1", until) {
		t.Fatal("a new key was reported as seen")
	}
	if !mustSeen(t, a, "assertion\x00svc\x00jti-1", until) {
		t.Fatal("the same key again on the same instance was new")
	}
	if !mustSeen(t, b, "assertion\x00svc\x00jti-1", until) {
		t.Fatal("the same key on another instance was new")
	}
	if mustSeen(t, b, "assertion\x00web\x00jti-1", until) {
		t.Fatal("another client's identical jti was reported as seen")
	}
}

// TestSeenConcurrently: of many instances recording one key at once,
// exactly one gets it as new.
func TestSeenConcurrently(t *testing.T) {
	url := eventstest.MustJetStream(t).ClientURL()
	caches := []*Cache{mustCache(t, url), mustCache(t, url), mustCache(t, url)}
	var fresh atomic.Int32
	var wg sync.WaitGroup
	for i := range 30 {
		wg.Go(func() {
			seen, err := caches[i%len(caches)].Seen(context.Background(), "race", time.Now().Add(time.Minute))
			if err != nil {
				t.Error(err)
			}
			if !seen {
				fresh.Add(1)
			}
		})
	}
	wg.Wait()
	if fresh.Load() != 1 {
		t.Fatalf("%d callers got the key as new, want 1", fresh.Load())
	}
}

// TestEntriesExpire: once its time is up a key is forgotten, and can be
// recorded again, by its own TTL.
func TestEntriesExpire(t *testing.T) {
	c := mustCache(t, eventstest.MustJetStream(t).ClientURL())
	mustSeen(t, c, "short", time.Now().Add(time.Second))
	mustSeen(t, c, "long", time.Now().Add(time.Hour))
	if !mustSeen(t, c, "short", time.Now().Add(time.Second)) {
		t.Fatal("the key was forgotten at once")
	}
	eventstest.CheckFor(t, 20*time.Second, 100*time.Millisecond, func() error {
		if mustSeen(t, c, "short", time.Now().Add(time.Second)) {
			return errors.New("the key is still remembered")
		}
		return nil
	})
	if !mustSeen(t, c, "long", time.Now().Add(time.Hour)) {
		t.Fatal("a key with a long TTL expired with the short one")
	}
}

// TestUnreachableIsAnError: when the bucket cannot be asked, Seen says so
// instead of taking the key for new.
func TestUnreachableIsAnError(t *testing.T) {
	ns := eventstest.MustJetStream(t)
	c := mustCache(t, ns.ClientURL())
	ns.Shutdown()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if seen, err := c.Seen(ctx, "k", time.Now().Add(time.Minute)); err == nil {
		t.Fatalf("no error from a stopped server (seen %v)", seen)
	}
}

func TestTTLUntil(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		until time.Duration
		want  time.Duration
	}{
		{-time.Minute, time.Second},
		{0, time.Second},
		{300 * time.Millisecond, time.Second},
		{time.Second, time.Second},
		{1500 * time.Millisecond, 2 * time.Second},
		{61 * time.Minute, 61 * time.Minute},
		{61*time.Minute + time.Nanosecond, 61*time.Minute + time.Second},
	} {
		if got := ttlUntil(now, now.Add(tc.until)); got != tc.want {
			t.Errorf("ttlUntil(+%v) = %v, want %v", tc.until, got, tc.want)
		}
	}
}

// BenchmarkSeen is the cost of recording one new identifier, as every DPoP
// proof and client assertion does: one write to the file-stored bucket,
// awaited, with 8 callers at once as on a busy token endpoint.
//
//	go test -run '^$' -bench Seen ./jti
func BenchmarkSeen(b *testing.B) {
	c := mustCache(b, eventstest.MustJetStream(b).ClientURL())
	var n atomic.Int64
	b.SetParallelism(8)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			key := "bench|" + strconv.FormatInt(n.Add(1), 10)
			if mustSeen(b, c, key, time.Now().Add(65*time.Second)) {
				b.Fatal("a new key was seen before")
			}
		}
	})
}
