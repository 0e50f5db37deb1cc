package pii

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokend/tokend/events/eventstest"
)

// testRetention gives a period of six minutes: nothing expires by the
// server's clock while a test runs; expiry follows the test's clock.
const testRetention = time.Hour

// testClock is a clock the test moves; instances may share it.
type testClock struct{ ns atomic.Int64 }

func newTestClock(t time.Time) *testClock {
	c := &testClock{}
	c.set(t)
	return c
}

func (c *testClock) Now() time.Time  { return time.Unix(0, c.ns.Load()) }
func (c *testClock) set(t time.Time) { c.ns.Store(t.UnixNano()) }

// periodStart is the start of a period of testRetention's (six minutes).
var periodStart = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

// openPeriods opens Periods on its own connection, as an instance would.
func (ts testServer) openPeriods(retention time.Duration, clock *testClock) *Periods {
	t := ts.t
	t.Helper()
	js, err := jetstream.New(eventstest.MustConnect(t, ts.url))
	if err != nil {
		t.Fatal(err)
	}
	p, err := OpenPeriods(t.Context(), js, testKeys(t, deploymentKey), PeriodConfig{Replicas: 1, Retention: retention, CacheSize: 16, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestPeriodsConcurrentCreateOneKey: instances creating the current
// period's key at once all get the one key that was stored.
func TestPeriodsConcurrentCreateOneKey(t *testing.T) {
	ts := newTestServer(t)
	clock := newTestClock(periodStart)
	instances := []*Periods{ts.openPeriods(testRetention, clock), ts.openPeriods(testRetention, clock)}
	const perInstance = 8
	keys := oneKeyForAll(t, 2*perInstance, func(i int) (DataKey, error) { return instances[i%2].Current(t.Context()) })
	if !IsPeriodRef(keys[0].Ref) {
		t.Fatalf("ref %q is not told a period ref", keys[0].Ref)
	}
	// Not only cached: read back from the bucket by a fresh instance too.
	k, err := ts.openPeriods(testRetention, clock).KeyFor(t.Context(), keys[0].Ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := sameKey(keys[0], k); err != nil {
		t.Fatal(err)
	}
}

// TestPeriodKeyExpiry: a part sealed under a period key opens for at
// least Retention and at most Retention and a period after it was sealed,
// on the instance that has the key cached as on one that reads it from
// the bucket, though the server still holds it.
func TestPeriodKeyExpiry(t *testing.T) {
	ts := newTestServer(t)
	clock := newTestClock(periodStart)
	p := ts.openPeriods(testRetention, clock)
	period := p.Period()
	if period != testRetention/10 {
		t.Fatalf("period %v; want a tenth of the retention", period)
	}
	first, err := p.Current(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	sealedFirst, err := Seal(first, "ev1", "fam", []byte("192.0.2.1"))
	if err != nil {
		t.Fatal(err)
	}
	lastInstant := periodStart.Add(period - 1)
	clock.set(lastInstant)
	last, err := p.Current(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if last.Ref != first.Ref {
		t.Fatalf("one period, two keys: %s and %s", first.Ref, last.Ref)
	}
	sealedLast, err := Seal(last, "ev2", "fam", []byte("192.0.2.2"))
	if err != nil {
		t.Fatal(err)
	}
	clock.set(periodStart.Add(period))
	next, err := p.Current(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if next.Ref == first.Ref || sameKey(first, next) == nil {
		t.Fatalf("the next period got the same key %s", next.Ref)
	}

	opens := func(p *Periods, eventID string, s Sealed) error {
		k, err := p.KeyFor(t.Context(), s.K)
		if err != nil {
			return err
		}
		_, err = Open(k, eventID, "fam", s)
		return err
	}
	fresh := ts.openPeriods(testRetention, clock) // nothing cached
	expiry := periodStart.Add(period + testRetention)
	for _, at := range []time.Time{
		lastInstant.Add(testRetention), // at least Retention after the last seal
		expiry.Add(-1),
	} {
		clock.set(at)
		for name, p := range map[string]*Periods{"cached": p, "fresh": fresh} {
			if err := opens(p, "ev1", sealedFirst); err != nil {
				t.Fatalf("%s instance at %v: %v", name, at, err)
			}
			if err := opens(p, "ev2", sealedLast); err != nil {
				t.Fatalf("%s instance at %v: %v", name, at, err)
			}
		}
	}
	// At most Retention and a period after the first seal.
	clock.set(expiry)
	for name, p := range map[string]*Periods{"cached": p, "fresh": fresh} {
		if err := opens(p, "ev1", sealedFirst); !errors.Is(err, ErrNoKey) {
			t.Fatalf("%s instance at the expiry: %v; want ErrNoKey", name, err)
		}
	}
	if _, err := p.stream.GetLastMsgForSubject(t.Context(), periodsSubject+periodBucketKey(first)); err != nil {
		t.Fatalf("the expired key's message should still be on the server (refused by its expiry alone): %v", err)
	}
	sealedNext, err := Seal(next, "ev3", "fam", []byte("192.0.2.3"))
	if err != nil {
		t.Fatal(err)
	}
	if err := opens(fresh, "ev3", sealedNext); err != nil {
		t.Fatalf("the next period's key: %v", err)
	}
	// A ref comes from a stored event: one no key can have is no key.
	for _, ref := range []string{"", "t:", "t:1.", "t:x.1", "t:+1893456720.1", "t:01893456720.1", "t:-1.1", "t:1893456720", first.Ref + "0", strings.TrimPrefix(first.Ref, periodRefPrefix)} {
		if _, err := fresh.KeyFor(t.Context(), ref); !errors.Is(err, ErrNoKey) {
			t.Errorf("ref %q: %v; want ErrNoKey", ref, err)
		}
	}
}

// periodBucketKey is the bucket key of k, a period key.
func periodBucketKey(k DataKey) string {
	key, _, _ := strings.Cut(strings.TrimPrefix(k.Ref, periodRefPrefix), ".")
	return key
}

// TestPeriodKeyServerTTL: the server removes a key's message by itself,
// but not before two sweeps had the chance to overwrite it first.
func TestPeriodKeyServerTTL(t *testing.T) {
	ts := newTestServer(t)
	clock := newTestClock(periodStart.Add(time.Minute))
	p := ts.openPeriods(testRetention, clock)
	k, err := p.Current(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	key := periodBucketKey(k)
	msg, err := p.stream.GetLastMsgForSubject(t.Context(), periodsSubject+key)
	if err != nil {
		t.Fatal(err)
	}
	ttl, err := time.ParseDuration(msg.Header.Get(jetstream.MsgTTLHeader))
	if err != nil {
		t.Fatalf("TTL header %q: %v", msg.Header.Get(jetstream.MsgTTLHeader), err)
	}
	expiry := periodStart.Add(p.Period() + testRetention)
	removal := clock.Now().Add(ttl)
	if removal.Before(expiry.Add(p.Period())) || removal.After(expiry.Add(p.Period()+minServerTTLGrace+time.Second)) {
		t.Fatalf("the server removes the key at %v; want a period to a minute after its expiry %v", removal, expiry)
	}
}

// TestSweepOverwritesExpiredKeys: after a sweep no file of the server's
// store holds an expired key's wrapped bytes, and its message is gone; a
// key not yet expired stays. Concurrent sweeps are harmless.
func TestSweepOverwritesExpiredKeys(t *testing.T) {
	ts := newTestServer(t)
	clock := newTestClock(periodStart)
	a, b := ts.openPeriods(testRetention, clock), ts.openPeriods(testRetention, clock)
	old, err := a.Current(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	// The next period's key after it keeps the old key's message inside
	// the block, where a removal only marks it deleted.
	clock.set(periodStart.Add(a.Period()))
	live, err := a.Current(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	oldWrapped, oldSubject := wrappedKey(t, a, old)
	liveWrapped, liveSubject := wrappedKey(t, a, live)
	eventstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if filesHolding(t, ts.storeDir, oldWrapped) == 0 || filesHolding(t, ts.storeDir, liveWrapped) == 0 {
			return errors.New("the wrapped keys are not in the store's files yet")
		}
		return nil
	})

	// Before the expiry a sweep keeps the key.
	clock.set(periodStart.Add(a.Period() + testRetention - 1))
	if err := a.Sweep(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, err := a.stream.GetLastMsgForSubject(t.Context(), oldSubject); err != nil {
		t.Fatalf("a key not yet expired was swept: %v", err)
	}

	clock.set(periodStart.Add(a.Period() + testRetention))
	var wg sync.WaitGroup
	for _, p := range []*Periods{a, b, a, b} {
		wg.Go(func() {
			if err := p.Sweep(t.Context()); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	// At once: the server overwrites the message before it answers.
	if n := filesHolding(t, ts.storeDir, oldWrapped); n > 0 {
		t.Fatalf("%d files of the store still hold the expired key", n)
	}
	if _, err := a.stream.GetLastMsgForSubject(t.Context(), oldSubject); !errors.Is(err, jetstream.ErrMsgNotFound) {
		t.Fatalf("the expired key's message: %v; want none", err)
	}
	if a.cache.Contains(strings.TrimPrefix(oldSubject, periodsSubject)) {
		t.Fatal("the expired key is still cached after the sweep")
	}
	if filesHolding(t, ts.storeDir, liveWrapped) == 0 {
		t.Fatal("the live key is in no file any more: the scan proves nothing")
	}
	if _, err := a.stream.GetLastMsgForSubject(t.Context(), liveSubject); err != nil {
		t.Fatalf("the live key's message: %v", err)
	}
	if _, err := b.KeyFor(t.Context(), live.Ref); err != nil {
		t.Fatalf("the live key after the sweep: %v", err)
	}
}

// wrappedKey returns k's wrapped value as stored, and its subject.
func wrappedKey(t *testing.T, p *Periods, k DataKey) ([]byte, string) {
	t.Helper()
	key := periodBucketKey(k)
	e, err := p.kv.Get(t.Context(), key)
	if err != nil {
		t.Fatal(err)
	}
	if rev := strconv.FormatUint(e.Revision(), 10); k.Ref != periodRefPrefix+key+"."+rev {
		t.Fatalf("ref %s, stored revision %s", k.Ref, rev)
	}
	return e.Value(), periodsSubject + key
}

// TestRunSweeps: Run sweeps a key soon after it expires, and returns once
// its context ends.
func TestRunSweeps(t *testing.T) {
	ts := newTestServer(t)
	clock := newTestClock(periodStart)
	p := ts.openPeriods(10*time.Second, clock) // sweeps every half second
	k, err := p.Current(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	_, subject := wrappedKey(t, p, k)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	clock.set(periodStart.Add(p.Period() + 10*time.Second))
	eventstest.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		if _, err := p.stream.GetLastMsgForSubject(t.Context(), subject); !errors.Is(err, jetstream.ErrMsgNotFound) {
			return fmt.Errorf("the expired key's message: %v; want none", err)
		}
		return nil
	})
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
}

func TestPeriodsRefuseShortRetention(t *testing.T) {
	_, js := eventstest.MustJS(t)
	for _, retention := range []time.Duration{0, 999 * time.Millisecond, 1500 * time.Millisecond} {
		_, err := OpenPeriods(t.Context(), js, testKeys(t, deploymentKey), PeriodConfig{Replicas: 1, Retention: retention})
		if err == nil || !strings.Contains(err.Error(), "retention") {
			t.Errorf("retention %v: %v; want refused", retention, err)
		}
	}
	p, err := OpenPeriods(t.Context(), js, testKeys(t, deploymentKey), PeriodConfig{Replicas: 1, Retention: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if p.Period() != time.Second {
		t.Fatalf("retention 1s: period %v; want a second", p.Period())
	}
	long, err := OpenPeriods(t.Context(), js, testKeys(t, deploymentKey), PeriodConfig{Replicas: 1, Retention: 365 * 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if long.Period() != 24*time.Hour {
		t.Fatalf("retention a year: period %v; want a day", long.Period())
	}
}

// TestRefsTellTheirStore: a subject key's ref is never taken for a period
// key's, and neither store opens the other's ref.
func TestRefsTellTheirStore(t *testing.T) {
	ts := newTestServer(t)
	clock := newTestClock(periodStart)
	s, p := ts.open(), ts.openPeriods(testRetention, clock)
	subjectKey, err := s.DataKey(t.Context(), "alice", true)
	if err != nil {
		t.Fatal(err)
	}
	periodKey, err := p.Current(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if IsPeriodRef(subjectKey.Ref) || !IsPeriodRef(periodKey.Ref) {
		t.Fatalf("subject ref %q, period ref %q: told apart wrongly", subjectKey.Ref, periodKey.Ref)
	}
	if _, err := p.KeyFor(t.Context(), subjectKey.Ref); !errors.Is(err, ErrNoKey) {
		t.Fatalf("period store, subject ref: %v; want ErrNoKey", err)
	}
	if _, err := s.KeyFor(t.Context(), periodKey.Ref); !errors.Is(err, ErrNoKey) {
		t.Fatalf("subject store, period ref: %v; want ErrNoKey", err)
	}
}
