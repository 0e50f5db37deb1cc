package keys

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events/eventstest"
)

func mustKeyring(t *testing.T, js jetstream.JetStream) *Keyring {
	t.Helper()
	k, err := OpenKeyring(context.Background(), js, 1, testLife, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// fakeTimers stand in for time.AfterFunc on a fake clock: they never fire
// by themselves; armed is when the last one would have.
type fakeTimers struct {
	now   *time.Time
	armed time.Time
}

func (f *fakeTimers) after(d time.Duration, _ func()) timer {
	f.armed = f.now.Add(d)
	return fakeTimer{}
}

type fakeTimer struct{}

func (fakeTimer) Stop() bool { return true }

// staleKeyring loads the keyset once and does not watch it: an instance
// that has not heard of a change yet. Its clock is *now, and its expiry
// timer never fires by itself (see fakeClockKeyring).
func staleKeyring(t *testing.T, js jetstream.JetStream, now *time.Time) *Keyring {
	k, _ := fakeClockKeyring(t, js, now)
	return k
}

// fakeClockKeyring is staleKeyring with its timers, to check when they
// would fire.
func fakeClockKeyring(t *testing.T, js jetstream.JetStream, now *time.Time) (*Keyring, *fakeTimers) {
	t.Helper()
	ctx := context.Background()
	kv, err := openKeysBucket(ctx, js, 1)
	if err != nil {
		t.Fatal(err)
	}
	ks, rev, err := loadOrCreate(ctx, kv)
	if err != nil {
		t.Fatal(err)
	}
	timers := &fakeTimers{now: now}
	k := &Keyring{kv: kv, life: testLife, now: func() time.Time { return *now }, after: timers.after, log: slog.New(slog.DiscardHandler)}
	if _, err := k.adopt(rev, ks); err != nil {
		t.Fatal(err)
	}
	return k, timers
}

// waitRevision waits until k has loaded revision rev.
func waitRevision(t *testing.T, k *Keyring, rev uint64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for k.Loaded().Revision < rev {
		if time.Now().After(deadline) {
			t.Fatalf("still at revision %d, want %d", k.Loaded().Revision, rev)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func wantCode(t *testing.T, err error, code string) {
	t.Helper()
	if err == nil || domain.ErrorCode(err) != code {
		t.Fatalf("want %s, got %v", code, err)
	}
}

func TestKeyringFollowsStageAndPromote(t *testing.T) {
	_, js := eventstest.MustJS(t)
	ctx := context.Background()
	a, b := mustKeyring(t, js), mustKeyring(t, js)
	if a.Loaded().Revision != b.Loaded().Revision || a.Codec().Mint("f", 1, [32]byte{}).KeyID != b.Codec().Mint("f", 1, [32]byte{}).KeyID {
		t.Fatal("two instances loaded different keysets")
	}
	var mu sync.Mutex
	var seen []uint64
	b.OnChange(func(l *LoadedKeys) error {
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, l.Revision)
		return nil
	})

	staged, err := a.Stage(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if a.Loaded().Revision != staged.Revision {
		t.Fatalf("the instance that staged is at revision %d, want %d at once", a.Loaded().Revision, staged.Revision)
	}
	waitRevision(t, b, staged.Revision)
	nextMAC := one(t, byState(staged.Keys, "mac")[KeyNext])
	if again, err := a.Stage(ctx, 0); err != nil || again.Revision != staged.Revision {
		t.Fatalf("staging again wrote revision %d (was %d): %v", again.Revision, staged.Revision, err)
	}

	wantCode(t, func() error { _, err := a.Promote(ctx, staged.Revision+7); return err }(), domain.EInvalidRequest)
	promoted, err := a.Promote(ctx, staged.Revision)
	if err != nil {
		t.Fatal(err)
	}
	waitRevision(t, b, promoted.Revision)
	child := a.Codec().Mint("f", 2, [32]byte{2})
	if child.KeyID != nextMAC {
		t.Fatalf("minted under %s after promotion, want %s", child.KeyID, nextMAC)
	}
	if _, _, err := b.Parse(ctx, child.Value()); err != nil {
		t.Fatalf("the other instance refuses a token of the promoted key: %v", err)
	}
	wantCode(t, func() error { _, err := a.Promote(ctx, 0); return err }(), domain.EInvalidRequest)

	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 3 || seen[1] != staged.Revision || seen[2] != promoted.Revision {
		t.Fatalf("listener saw revisions %v, want the first, %d, %d", seen, staged.Revision, promoted.Revision)
	}
	// A key dropped from the keyset must not live on in the bucket.
	kv, _ := js.KeyValue(ctx, Bucket)
	if h, err := kv.History(ctx, keysetKey); err != nil || len(h) != 1 {
		t.Fatalf("the bucket keeps %d revisions of the keyset: %v", len(h), err)
	}
}

func TestKeyringPromotesOnce(t *testing.T) {
	_, js := eventstest.MustJS(t)
	ctx := context.Background()
	a, b := mustKeyring(t, js), mustKeyring(t, js)
	staged, err := a.Stage(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 2)
	for _, k := range []*Keyring{a, b} {
		go func() { _, err := k.Promote(ctx, staged.Revision); errs <- err }()
	}
	first, second := <-errs, <-errs
	if (first == nil) == (second == nil) {
		t.Fatalf("two promotions of revision %d: %v, %v; want exactly one to succeed", staged.Revision, first, second)
	}
	if err := errors.Join(first, second); domain.ErrorCode(err) != domain.EInvalidRequest {
		t.Fatalf("the losing promotion: %v", err)
	}
}

// TestKeyringReloadsForUnknownKeys: an instance that missed a change reloads
// the keyset when a token names a key it does not hold, at most once per
// second.
func TestKeyringReloadsForUnknownKeys(t *testing.T) {
	_, js := eventstest.MustJS(t)
	ctx := context.Background()
	a := mustKeyring(t, js)
	now := time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)
	stale := staleKeyring(t, js, &now)

	rotate := func() domain.Token {
		t.Helper()
		staged, err := a.Stage(ctx, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := a.Promote(ctx, staged.Revision); err != nil {
			t.Fatal(err)
		}
		return a.Codec().Mint("f", 1, [32]byte{})
	}
	first := rotate()
	if _, codec, err := stale.Parse(ctx, first.Value()); err != nil || codec.Mint("f", 1, [32]byte{}).KeyID != first.KeyID {
		t.Fatalf("after a reload: %v", err)
	}
	second := rotate()
	now = now.Add(reloadEvery - time.Millisecond)
	if _, _, err := stale.Parse(ctx, second.Value()); !errors.Is(err, domain.ErrInvalidGrant) {
		t.Fatalf("a second reload within %v: %v", reloadEvery, err)
	}
	now = now.Add(time.Millisecond)
	if _, _, err := stale.Parse(ctx, second.Value()); err != nil {
		t.Fatalf("%v after the last reload: %v", reloadEvery, err)
	}
	// A forged token under a made-up key id is refused like any other.
	now = now.Add(reloadEvery)
	forged, _ := domain.NewTokenCodec(domain.MACKey{ID: "made-up", Secret: make([]byte, 32)})
	if _, _, err := stale.Parse(ctx, forged.Mint("f", 1, [32]byte{}).Value()); !errors.Is(err, domain.ErrInvalidGrant) {
		t.Fatalf("forged token: %v", err)
	}
}

// TestKeyringUpgradesTheOldFormatInPlace: a bucket written by the previous
// version is loaded as is and rewritten in the new format at the first change.
func TestKeyringUpgradesTheOldFormatInPlace(t *testing.T) {
	_, js := eventstest.MustJS(t)
	ctx := context.Background()
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: Bucket, History: 8})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Create(ctx, keysetKey, []byte(oldFormat)); err != nil {
		t.Fatal(err)
	}
	k := mustKeyring(t, js)
	if tok := k.Codec().Mint("f", 1, [32]byte{}); tok.KeyID != "mac-a" {
		t.Fatalf("mints under %s", tok.KeyID)
	}
	staged, err := k.Stage(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	entry, err := kv.Get(ctx, keysetKey)
	if err != nil {
		t.Fatal(err)
	}
	stored, err := decodeKeyset(entry.Value())
	if err != nil || entry.Revision() != staged.Revision {
		t.Fatalf("stored revision %d, staged %d: %v", entry.Revision(), staged.Revision, err)
	}
	got := byState(stored, "mac")
	if one(t, got[KeyCurrent]) != "mac-a" || one(t, got[KeyRetired]) != "mac-b" || len(got[KeyNext]) != 1 ||
		stored.MAC[len(stored.MAC)-1].ExpiresAt.IsZero() {
		t.Fatalf("upgraded keyset: %s", stored.summary())
	}
}

func TestKeysCreatedOnceAndShared(t *testing.T) {
	_, js := eventstest.MustJS(t)
	ctx := context.Background()
	results := make(chan Keyset, 4)
	for range 4 {
		go func() {
			ks, err := LoadOrCreateKeys(ctx, js, 1)
			if err != nil {
				t.Error(err)
			}
			results <- ks
		}()
	}
	first := <-results
	for range 3 {
		if ks := <-results; !reflect.DeepEqual(ks, first) {
			t.Fatal("instances starting together ended up with different keys")
		}
	}
}

// TestKeyringDropsExpiredKeysWithoutAChange: at a retired key's expiry the
// keyring stops verifying it and tells its listeners (the JWKS), at the
// same revision: nothing is written, no rotation is needed.
func TestKeyringDropsExpiredKeysWithoutAChange(t *testing.T) {
	_, js := eventstest.MustJS(t)
	ctx := context.Background()
	now := time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)
	k, timers := fakeClockKeyring(t, js, &now)
	old := k.Codec().Mint("f", 1, [32]byte{})
	staged, err := k.Stage(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	promoted, err := k.Promote(ctx, staged.Revision)
	if err != nil {
		t.Fatal(err)
	}
	var seen []*LoadedKeys
	k.OnChange(func(l *LoadedKeys) error { seen = append(seen, l); return nil })
	signingExpiry, setExpiry, macExpiry := now.Add(testLife.signing()), now.Add(testLife.set()), now.Add(testLife.mac())
	if !promoted.nextExpiry.Equal(signingExpiry) || !timers.armed.Equal(signingExpiry) {
		t.Fatalf("next expiry %v, timer armed for %v; want the retired signing key's %v", promoted.nextExpiry, timers.armed, signingExpiry)
	}

	now = signingExpiry.Add(-time.Nanosecond)
	k.expire() // early, as after the clock was set back: nothing changes
	if len(seen) != 1 || len(k.Loaded().Keys.Signing) != 2 {
		t.Fatalf("a key expired early: %s", k.Loaded().Keys.summary())
	}
	now = signingExpiry
	k.expire()
	l := k.Loaded()
	if len(seen) != 2 || seen[1] != l || l.Revision != promoted.Revision || len(l.Keys.Signing) != 1 || len(l.Keys.MAC) != 2 {
		t.Fatalf("at the signing key's expiry: revision %d (was %d), keys %s, listener told %d times",
			l.Revision, promoted.Revision, l.Keys.summary(), len(seen))
	}
	if !timers.armed.Equal(setExpiry) {
		t.Fatalf("timer armed for %v, want the retired SET key's expiry %v", timers.armed, setExpiry)
	}
	now = setExpiry
	k.expire()
	if l := k.Loaded(); len(seen) != 3 || len(l.Keys.SET) != 1 || len(l.Keys.MAC) != 2 || l.Revision != promoted.Revision {
		t.Fatalf("at the SET key's expiry: keys %s, listener told %d times", l.Keys.summary(), len(seen))
	}
	if !timers.armed.Equal(macExpiry) {
		t.Fatalf("timer armed for %v, want the retired MAC key's expiry %v", timers.armed, macExpiry)
	}
	if _, _, err := k.Parse(ctx, old.Value()); err != nil {
		t.Fatalf("the retired MAC key, not expired yet: %v", err)
	}
	now = macExpiry
	k.expire()
	if _, _, err := k.Parse(ctx, old.Value()); !errors.Is(err, domain.ErrInvalidGrant) {
		t.Fatalf("the retired MAC key after its expiry: %v", err)
	}
	if l := k.Loaded(); len(l.Keys.MAC) != 1 || !l.nextExpiry.IsZero() || l.Revision != promoted.Revision {
		t.Fatalf("after the last expiry: %s, next %v", l.Keys.summary(), l.nextExpiry)
	}
	// A token under the expired key makes the keyring read the bucket,
	// which still holds the key until the next change: it must not come
	// back from there.
	now = now.Add(reloadEvery)
	if _, _, err := k.Parse(ctx, old.Value()); !errors.Is(err, domain.ErrInvalidGrant) {
		t.Fatalf("the expired MAC key after a reload: %v", err)
	}
	kv, _ := js.KeyValue(ctx, Bucket)
	if e, err := kv.Get(ctx, keysetKey); err != nil || e.Revision() != promoted.Revision {
		t.Fatalf("the bucket was written: %v", err)
	}
}

// TestKeyringExpiryTimer: every instance drops a retired key when it
// expires, by its own timer, with keys living a second.
func TestKeyringExpiryTimer(t *testing.T) {
	_, js := eventstest.MustJS(t)
	ctx := context.Background()
	life := Lifetimes{Refresh: time.Hour, Access: 500 * time.Millisecond, Skew: 500 * time.Millisecond}
	open := func() *Keyring {
		k, err := OpenKeyring(ctx, js, 1, life, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	a, b := open(), open()
	retired := one(t, byState(a.Loaded().Keys, KindSigning)[KeyCurrent])
	var mu sync.Mutex
	var told []string
	b.OnChange(func(l *LoadedKeys) error {
		mu.Lock()
		defer mu.Unlock()
		told = append(told, l.Keys.summary())
		return nil
	})
	staged, err := a.Stage(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	promoted, err := a.Promote(ctx, staged.Revision)
	if err != nil {
		t.Fatal(err)
	}
	waitRevision(t, b, promoted.Revision)
	eventstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		for _, k := range []*Keyring{a, b} {
			if l := k.Loaded(); slices.Contains(byState(l.Keys, KindSigning)[KeyRetired], retired) || l.Revision != promoted.Revision {
				return fmt.Errorf("at revision %d (promoted %d): %s", l.Revision, promoted.Revision, l.Keys.summary())
			}
		}
		return nil
	})
	mu.Lock()
	defer mu.Unlock()
	if last := told[len(told)-1]; strings.Contains(last, retired) {
		t.Fatalf("the listener was last told %s", last)
	}
}

// TestKeyringRevoke: a revoked key stops verifying on every instance as
// soon as it loads the change; a revoked current key is replaced in the
// same write.
func TestKeyringRevoke(t *testing.T) {
	_, js := eventstest.MustJS(t)
	ctx := context.Background()
	a, b := mustKeyring(t, js), mustKeyring(t, js)
	compromised := a.Codec().Mint("f", 1, [32]byte{})
	staged, err := a.Stage(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	nextMAC := one(t, byState(staged.Keys, KindMAC)[KeyNext])

	_, _, err = a.Revoke(ctx, compromised.KeyID, staged.Revision+5)
	wantCode(t, err, domain.EInvalidRequest)
	_, _, err = a.Revoke(ctx, "unknown", 0)
	wantCode(t, err, domain.ENotFound)

	revoked, r, err := a.Revoke(ctx, compromised.KeyID, staged.Revision)
	if err != nil {
		t.Fatal(err)
	}
	if r.Kind != KindMAC || r.Revoked.ID != compromised.KeyID || r.Current == nil || r.Current.ID != nextMAC || r.Generated {
		t.Fatalf("revocation %+v", r)
	}
	waitRevision(t, b, revoked.Revision)
	for name, k := range map[string]*Keyring{"the instance that revoked": a, "the other": b} {
		if _, _, err := k.Parse(ctx, compromised.Value()); !errors.Is(err, domain.ErrInvalidGrant) {
			t.Fatalf("%s verifies a token of the revoked key: %v", name, err)
		}
		if tok := k.Codec().Mint("f", 1, [32]byte{}); tok.KeyID != nextMAC {
			t.Fatalf("%s mints under %s, want the staged key %s", name, tok.KeyID, nextMAC)
		}
	}
	// With nothing staged, a new key takes over.
	_, r, err = a.Revoke(ctx, nextMAC, 0)
	if err != nil || r.Current == nil || !r.Generated || a.Codec().Mint("f", 1, [32]byte{}).KeyID != r.Current.ID {
		t.Fatalf("revoking the current key with nothing staged: %+v, %v", r, err)
	}
	kv, _ := js.KeyValue(ctx, Bucket)
	e, err := kv.Get(ctx, keysetKey)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(e.Value()), compromised.KeyID) {
		t.Fatal("the bucket still holds the revoked key")
	}
}
