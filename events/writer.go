package events

import (
	"context"
	"errors"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"

	"github.com/tokend/tokend/domain"
)

// maxAttempts bounds decide-append rounds per command: each lost round means
// another writer advanced the family, so a handful always suffices unless the
// family is being hammered, and then the caller should back off.
const maxAttempts = 16

// DefaultCacheSize is the number of family states kept in memory per instance.
const DefaultCacheSize = 65536

// Writer is the single writer per family: within a process one command per
// family runs at a time, and across processes the expected-last-subject-
// sequence fence on every append lets exactly one of two racing writers win.
type Writer struct {
	store *Store
	locks keyedLocks
	cache *lru.Cache[string, loaded]

	// Hooks for metrics, set before the writer is used: OnAppend gets the
	// events of every stored append, OnConflict every fence conflict, and
	// OnStoreError every failed load or append.
	OnAppend     func([]domain.Event)
	OnConflict   func()
	OnStoreError func(error)
}

type loaded struct {
	family domain.Family
	seq    uint64
	// origin tells how the family's next events are sealed (those of a
	// family whose SubjectErased, its Subject the pseudonym, hold none).
	origin origin
}

// Decision is what Handle stored: the family before and after, the events
// appended and the stream sequence of the last one.
type Decision struct {
	Before, After domain.Family
	Events        []domain.Event
	Seq           uint64
}

// NewWriter returns a writer keeping up to cacheSize family states.
func NewWriter(store *Store, cacheSize int) *Writer {
	if cacheSize <= 0 {
		cacheSize = DefaultCacheSize
	}
	cache, _ := lru.New[string, loaded](cacheSize)
	return &Writer{store: store, locks: keyedLocks{m: map[string]*keyedLock{}}, cache: cache}
}

// Handle loads the family, runs decide on it and appends the events decide
// returns, all or nothing, fenced on the family's last sequence. On a fence conflict it
// reloads and decides again, so decide must be safe to run more than once.
// decide's error is returned once its events (if any) are stored; store
// failures are EUnavailable errors.
func (w *Writer) Handle(ctx context.Context, familyID string, decide func(domain.Family) ([]domain.Event, error)) (Decision, error) {
	unlock := w.locks.lock(familyID)
	defer unlock()
	conflicted := false
	for range maxAttempts {
		cur, err := w.load(ctx, familyID, conflicted)
		if err != nil {
			w.storeError(err)
			return Decision{}, unavailable(err)
		}
		events, decideErr := decide(cur.family)
		if len(events) == 0 {
			return Decision{Before: cur.family, After: cur.family, Seq: cur.seq}, decideErr
		}
		after := cur.family
		origin := originFor(cur.family, cur.origin, events[0].Time)
		envs := make([]Envelope, len(events))
		for i, e := range events {
			after = domain.Evolve(after, e)
			envs[i] = Wrap(e, after)
			envs[i].origin, envs[i].Erased = origin, cur.family.SubjectErased
		}
		seq, err := w.store.Append(ctx, familyID, cur.seq, envs)
		if errors.Is(err, ErrConflict) {
			// Read the next state from the stream leader: on a replicated
			// stream the direct get that lost may be a lagging follower's,
			// which would lose again.
			conflicted = true
			w.cache.Remove(familyID)
			if w.OnConflict != nil {
				w.OnConflict()
			}
			continue
		}
		if err != nil {
			w.cache.Remove(familyID)
			w.storeError(err)
			return Decision{}, unavailable(err)
		}
		last := &envs[len(envs)-1]
		next := loaded{family: after, seq: seq, origin: last.origin}
		// Acknowledged, so stored by now.
		next.family.RotatedAt = rotatedAt(last.Type, after.RotatedAt, time.Now())
		if last.Erased {
			next.family.Subject, next.family.SubjectErased = last.Subject, true
		}
		w.cache.Add(familyID, next)
		if w.OnAppend != nil {
			w.OnAppend(events)
		}
		return Decision{Before: cur.family, After: after, Events: events, Seq: seq}, decideErr
	}
	return Decision{}, &domain.Error{Code: domain.EUnavailable, Message: "family is busy, retry", RetryAfterMs: 50}
}

// LoadLatest reads a family with Store.LoadLatest, past the cache: for
// reads that must reflect every acknowledged append, this instance's or
// another's. Failures are EUnavailable errors.
func (w *Writer) LoadLatest(ctx context.Context, familyID string) (domain.Family, uint64, error) {
	f, seq, err := w.store.LoadLatest(ctx, familyID)
	if err != nil {
		w.storeError(err)
		return domain.Family{}, 0, unavailable(err)
	}
	return f, seq, nil
}

func (w *Writer) load(ctx context.Context, familyID string, latest bool) (loaded, error) {
	if l, ok := w.cache.Get(familyID); ok {
		return l, nil
	}
	l, err := w.store.loadState(ctx, familyID, latest && w.store.replicated())
	if err != nil {
		return loaded{}, err
	}
	if l.family.Exists() {
		w.cache.Add(familyID, l)
	}
	return l, nil
}

func (w *Writer) storeError(err error) {
	if w.OnStoreError != nil {
		w.OnStoreError(err)
	}
}

func unavailable(err error) error {
	var de *domain.Error
	if errors.As(err, &de) {
		return err
	}
	return &wrappedUnavailable{cause: err}
}

// wrappedUnavailable keeps the store failure for logs while the caller sees
// only temporarily_unavailable.
type wrappedUnavailable struct{ cause error }

func (e *wrappedUnavailable) Error() string { return "event store unavailable: " + e.cause.Error() }
func (e *wrappedUnavailable) Unwrap() []error {
	return []error{&domain.Error{Code: domain.EUnavailable, Message: "event store unavailable, retry"}, e.cause}
}

// keyedLocks serializes work per key; entries live only while in use.
type keyedLocks struct {
	mu sync.Mutex
	m  map[string]*keyedLock
}

type keyedLock struct {
	sync.Mutex
	users int
}

func (k *keyedLocks) lock(key string) (unlock func()) {
	k.mu.Lock()
	l := k.m[key]
	if l == nil {
		l = &keyedLock{}
		k.m[key] = l
	}
	l.users++
	k.mu.Unlock()
	l.Lock()
	return func() {
		l.Unlock()
		k.mu.Lock()
		if l.users--; l.users == 0 {
			delete(k.m, key)
		}
		k.mu.Unlock()
	}
}
