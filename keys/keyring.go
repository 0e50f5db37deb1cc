package keys

import (
	"bytes"
	"context"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokend/tokend/domain"
)

// LoadedKeys is one revision of the keyset, ready to use.
type LoadedKeys struct {
	Revision uint64 // the KV revision it was read from; 0 for fixed keys
	// Keys are the keys in effect: the revision without the retired keys
	// past their expiry (Keyset.InEffect). They change without a new
	// revision when a retired key expires.
	Keys  Keyset
	Codec *domain.TokenCodec

	stored     Keyset    // the revision as read, from which Keys are derived again at each expiry
	nextExpiry time.Time // when Keys change next without a write; zero: never

	setKID string          // the current SET key's id, "" if there is none
	setKey *rsa.PrivateKey // parsed once per revision, not per SET

	sealKID  string            // the current MAC key's id
	sealKeys map[string][]byte // by MAC key id, for every MAC key in effect (sealKey)

	nonceKey  []byte   // the current MAC key's (nonceKeyOf)
	nonceKeys [][]byte // every MAC key in effect's, the current one's first
}

// sealInfo is the HKDF info of the keys that seal secrets kept outside
// TOKENS_KEYS: derived, so that no MAC key is used for two purposes.
const sealInfo = "tokend ssf secret v1"

// sealKey derives the AES-256 key that a MAC key's secret seals with.
func sealKey(secret []byte) ([]byte, error) { return hkdf.Key(sha256.New, secret, nil, sealInfo, 32) }

// nonceInfo is the HKDF info of the keys of DPoP server nonces (RFC 9449
// section 8), apart from every other use of a MAC key.
const nonceInfo = "tokend dpop nonce v1"

func nonceKeyOf(secret []byte) ([]byte, error) {
	return hkdf.Key(sha256.New, secret, nil, nonceInfo, 32)
}

// NonceKeys returns the HMAC keys of DPoP server nonces: current mints
// them, all verify them. They derive from the MAC keys in effect
// (HKDF-SHA256), so every instance of a deployment accepts the nonces of
// every other without sharing state, and a nonce minted before a MAC key
// rotation is accepted after it while the retired key is in effect.
// Fixed keys (FixedKeys) have a random key of their own: their nonces
// are accepted by that keyring only.
func (l *LoadedKeys) NonceKeys() (current []byte, all [][]byte) { return l.nonceKey, l.nonceKeys }

// SealKey returns the key that seals a secret tokend must keep outside
// TOKENS_KEYS (an SSF stream's delivery secrets), with the id of the MAC
// key it derives from (HKDF-SHA256 of the current MAC key's secret), so
// that TOKENS_KEYS stays the one secret a deployment stores: whoever reads
// the sealed secret without the keys learns nothing. Seal with the key
// current now (Keyring.Loaded()), keep kid with the ciphertext, and open
// with OpenKey(kid). Fixed keys (FixedKeys) have none.
func (l *LoadedKeys) SealKey() (kid string, key []byte, err error) {
	if l.sealKID == "" {
		return "", nil, &domain.Error{Code: domain.EUnavailable, Message: "no MAC key is loaded to seal secrets with, retry", RetryAfterMs: 1000}
	}
	return l.sealKID, l.sealKeys[l.sealKID], nil
}

// OpenKey returns the sealing key derived from MAC key kid, if kid is in
// effect (current, staged, or retired and not expired). A secret sealed
// under a key that expired or was revoked cannot be opened any more: seal
// it again under the current key before then (SealKey).
func (l *LoadedKeys) OpenKey(kid string) ([]byte, bool) {
	key, ok := l.sealKeys[kid]
	return key, ok
}

// KeysetRevision is Revision, for those who take the keys as an
// interface: a sealed secret whose key is unknown here was sealed under
// a later revision if it says so, not with a key since revoked.
func (l *LoadedKeys) KeysetRevision() uint64 { return l.Revision }

// SETSigner returns the current SET key, with its id for the JWS header
// (kid), to sign Security Event Tokens with RS256. The key is parsed when
// the revision is loaded; it may be used concurrently. Call it for each SET
// on Keyring.Loaded() (an atomic load), so SETs are signed with the key
// current now. It fails when the keys have no SET key: fixed keys
// (FixedKeys), or a revision written by an instance of a version without
// SET keys until this one puts them back (withSETKeys).
func (l *LoadedKeys) SETSigner() (kid string, key *rsa.PrivateKey, err error) {
	if l.setKey == nil {
		return "", nil, &domain.Error{Code: domain.EUnavailable, Message: "no SET signing key is loaded, retry", RetryAfterMs: 1000}
	}
	return l.setKID, l.setKey, nil
}

// Keyring holds the keyset an instance uses and follows its changes: every
// instance watches TOKENS_KEYS and swaps to a new revision as soon as it is
// written, so a key staged, promoted or revoked on one instance reaches all
// of them. A retired key leaves the keys in use at its expiry, by a timer
// on each instance, not at the next write. Reading the keys is one atomic
// load: the refresh path takes no lock.
type Keyring struct {
	kv    jetstream.KeyValue // nil: fixed keys that never change
	life  Lifetimes
	now   func() time.Time
	after func(time.Duration, func()) timer // time.AfterFunc, or a fake clock's in tests
	log   *slog.Logger

	loaded atomic.Pointer[LoadedKeys]

	mu        sync.Mutex // orders adoptions, so listeners see revisions in order
	listeners []func(*LoadedKeys) error
	expiry    timer // fires at the next expiry of a key in use; guarded by mu

	reloadMu   sync.Mutex
	reloadedAt time.Time
	reloadErr  error
}

// timer is a *time.Timer as expire needs it.
type timer interface{ Stop() bool }

func afterFunc(d time.Duration, f func()) timer { return time.AfterFunc(d, f) }

// reloadEvery bounds the reloads that tokens under unknown key ids can
// cause: anyone may present such a token.
const reloadEvery = time.Second

// changeAttempts bounds the compare-and-set retries of one change.
const changeAttempts = 5

// FixedKeys returns a keyring that always holds codec and never reloads.
func FixedKeys(codec *domain.TokenCodec) *Keyring {
	k := &Keyring{now: time.Now, after: afterFunc, log: slog.New(slog.DiscardHandler)}
	// The codec does not show its secrets to derive a nonce key from.
	nonceKey := make([]byte, 32)
	rand.Read(nonceKey)
	k.loaded.Store(&LoadedKeys{Codec: codec, nonceKey: nonceKey, nonceKeys: [][]byte{nonceKey}})
	return k
}

// OpenKeyring loads the deployment's keyset from TOKENS_KEYS (creating the
// bucket and the keys if this is the first instance to start) and follows
// its changes until the NATS connection closes.
func OpenKeyring(ctx context.Context, js jetstream.JetStream, replicas int, life Lifetimes, log *slog.Logger) (*Keyring, error) {
	kv, err := openKeysBucket(ctx, js, replicas)
	if err != nil {
		return nil, err
	}
	ks, rev, err := loadOrCreate(ctx, kv)
	if err != nil {
		return nil, err
	}
	k := &Keyring{kv: kv, life: life, now: time.Now, after: afterFunc, log: log}
	if _, err := k.adopt(rev, ks); err != nil {
		return nil, fmt.Errorf("kv %s: %w", Bucket, err)
	}
	if err := k.watch(); err != nil {
		return nil, fmt.Errorf("kv %s: watch: %w", Bucket, err)
	}
	return k, nil
}

// Loaded returns the keys in use.
func (k *Keyring) Loaded() *LoadedKeys { return k.loaded.Load() }

// Codec returns the token codec in use.
func (k *Keyring) Codec() *domain.TokenCodec { return k.loaded.Load().Codec }

// OnChange calls f with the keys in use now and then with every later
// revision, and with the keys left in use when a retired key expires, in
// order. f's errors are logged; they cannot undo a revision
// that other instances use already.
func (k *Keyring) OnChange(f func(*LoadedKeys) error) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.listeners = append(k.listeners, f)
	return f(k.loaded.Load())
}

// adopt makes revision rev of the keyset the one in use, unless a newer one
// already is. It returns the keys built from stored either way.
func (k *Keyring) adopt(rev uint64, stored Keyset) (*LoadedKeys, error) {
	if err := stored.validate(); err != nil {
		return nil, err
	}
	l, err := loadedAt(rev, stored, k.now())
	if err != nil {
		return nil, err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if cur := k.loaded.Load(); cur != nil && cur.Revision >= rev {
		return l, nil
	}
	k.use(l)
	k.log.Info("keyset loaded", "revision", rev, "keys", l.Keys.summary())
	return l, nil
}

// loadedAt builds the keys of revision rev in effect at now.
func loadedAt(rev uint64, stored Keyset, now time.Time) (*LoadedKeys, error) {
	ks, next := stored.InEffect(now)
	codec, err := ks.Codec()
	if err != nil {
		return nil, err
	}
	l := &LoadedKeys{Revision: rev, Keys: ks, Codec: codec, stored: stored, nextExpiry: next, sealKeys: map[string][]byte{}}
	for _, k := range ks.MAC {
		if l.sealKeys[k.ID], err = sealKey(k.Secret); err != nil {
			return nil, fmt.Errorf("mac key %s: %w", k.ID, err)
		}
		nonceKey, err := nonceKeyOf(k.Secret)
		if err != nil {
			return nil, fmt.Errorf("mac key %s: %w", k.ID, err)
		}
		if k.State == KeyCurrent && l.sealKID == "" {
			l.sealKID, l.nonceKey = k.ID, nonceKey
			l.nonceKeys = slices.Insert(l.nonceKeys, 0, nonceKey)
		} else {
			l.nonceKeys = append(l.nonceKeys, nonceKey)
		}
	}
	if cur, err := ks.CurrentSET(); err == nil {
		if l.setKey, err = cur.Private(); err != nil {
			return nil, fmt.Errorf("set key %s: %w", cur.ID, err)
		}
		l.setKID = cur.ID
	}
	return l, nil
}

// use makes l the keys in use and waits for their next expiry; k.mu is held.
func (k *Keyring) use(l *LoadedKeys) {
	// Listeners (the access-token signer) first: once Loaded reports the
	// revision, as the status endpoint does, everything uses it.
	for _, f := range k.listeners {
		if err := f(l); err != nil {
			k.log.Error("keyset revision not applied everywhere", "revision", l.Revision, "err", err)
		}
	}
	k.loaded.Store(l)
	k.armExpiry(l.nextExpiry)
}

// armExpiry makes expire run at next, and no earlier timer run; k.mu is held.
func (k *Keyring) armExpiry(next time.Time) {
	if k.expiry != nil {
		k.expiry.Stop()
		k.expiry = nil
	}
	if !next.IsZero() {
		k.expiry = k.after(next.Sub(k.now()), k.expire)
	}
}

// expire drops the retired keys that expired from the keys in use. Every
// instance does so at the expiry itself, writing nothing: a write from each
// instance's timer would move the revision under an operator's
// conditional promote. The bucket sheds them at the next change.
func (k *Keyring) expire() {
	k.mu.Lock()
	defer k.mu.Unlock()
	cur := k.loaded.Load()
	l, err := loadedAt(cur.Revision, cur.stored, k.now())
	if err != nil { // cannot happen: expiry drops retired keys only
		k.log.Error("keys in effect unusable, keeping the keys in use", "revision", cur.Revision, "err", err)
		return
	}
	if len(l.Keys.MAC) == len(cur.Keys.MAC) && len(l.Keys.Signing) == len(cur.Keys.Signing) && len(l.Keys.SET) == len(cur.Keys.SET) {
		k.armExpiry(l.nextExpiry) // early: the clock was set back
		return
	}
	k.use(l)
	k.log.Info("retired keys expired", "revision", l.Revision, "keys", l.Keys.summary())
}

// watch adopts every revision written to the keyset entry, whoever wrote it.
func (k *Keyring) watch() error {
	ctx, cancel := context.WithCancel(context.Background())
	w, err := k.kv.Watch(ctx, keysetKey)
	if err != nil {
		cancel()
		return err
	}
	go func() {
		// The updates end when the connection closes.
		defer cancel()
		for e := range w.Updates() {
			if e == nil || e.Operation() != jetstream.KeyValuePut {
				continue
			}
			held := k.loaded.Load()
			ks, err := decodeKeyset(e.Value())
			if err == nil {
				_, err = k.adopt(e.Revision(), ks)
			}
			if err != nil {
				k.log.Error("keyset revision unusable, keeping the keys in use", "revision", e.Revision(), "err", err)
				continue
			}
			if len(ks.SET) == 0 {
				k.restoreSETKeys(e.Revision(), held)
			}
		}
	}()
	return nil
}

// restoreSETKeys puts SET keys back into revision rev, which has none: an
// instance of a version without them changed the keyset (a rolling
// upgrade). Every instance of this version that sees rev tries, on
// condition that rev is still the stored revision: one succeeds.
func (k *Keyring) restoreSETKeys(rev uint64, held *LoadedKeys) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l, err := k.changeFrom(ctx, rev, held, func(ks Keyset, _ time.Time) (Keyset, error) { return ks, nil })
	switch {
	case domain.ErrorCode(err) == domain.EInvalidRequest:
		return // the keyset changed since: another instance put them back, or the next revision will be seen here too
	case err != nil:
		k.log.Warn("keyset written without SET keys, by an earlier version: could not add them", "revision", rev, "err", err)
	default:
		k.log.Warn("keyset written without SET keys, by an earlier version: added them", "revision", rev, "written", l.Revision,
			"keys", l.Keys.summary())
	}
}

// withSETKeys returns ks, stored at revision rev, with SET keys. An
// instance of the version before SET keys drops them when it changes the
// keyset (it does not know set_keys). If held, the keys this instance held,
// are those of the revision that instance changed, rev-1 (TOKENS_KEYS has a
// single entry, so every write moves the revision by one), the SET keys are
// put back as they were. Otherwise a new SET key is added, as on loading a
// keyset of that version; receivers then no longer verify SETs signed with
// the lost keys. Keys of another revision are never put back: one of them
// may have been revoked since.
func withSETKeys(ks Keyset, rev uint64, held *LoadedKeys, now time.Time) Keyset {
	if len(ks.SET) > 0 {
		return ks
	}
	if held != nil && held.Revision+1 == rev && len(held.stored.SET) > 0 {
		ks.SET = slices.Clone(held.stored.SET)
		return ks
	}
	return ks.withSETKey(now)
}

// Parse verifies a refresh token with the keys in use and returns the codec
// that did, for minting its child with the same keys. A token under a key id
// this instance does not hold makes it reload the keyset once (at most once
// per reloadEvery) before refusing: another instance may have written keys
// this one has not seen yet.
func (k *Keyring) Parse(ctx context.Context, token string) (domain.Token, *domain.TokenCodec, error) {
	codec := k.Codec()
	t, err := codec.Parse(token)
	if err == nil || !codec.NamesUnknownKey(token) {
		return t, codec, err
	}
	newer, rerr := k.reload(ctx, codec)
	switch {
	case rerr != nil:
		return domain.Token{}, codec, rerr
	case newer == nil:
		return t, codec, err
	}
	t, err = newer.Parse(token)
	return t, newer, err
}

// ChildOf derives parent's child again (TokenCodec.ChildOf) with codec; if
// that fails, the child may have been minted under a key this instance has
// not seen yet, so the keyset is reloaded once, as in Parse, and tried again.
func (k *Keyring) ChildOf(ctx context.Context, codec *domain.TokenCodec, parent domain.Token, wantHash string) domain.Token {
	if child, ok := codec.ChildOf(parent, wantHash); ok {
		return child
	}
	if newer, _ := k.reload(ctx, codec); newer != nil {
		child, _ := newer.ChildOf(parent, wantHash)
		return child
	}
	return domain.Token{}
}

// reload reads the keyset from the bucket unless that was done less than
// reloadEvery ago. It returns the codec in use if it is newer than seen, nil
// if not; the error is the failed read's, reported to every caller until
// the next attempt.
func (k *Keyring) reload(ctx context.Context, seen *domain.TokenCodec) (*domain.TokenCodec, error) {
	if k.kv == nil {
		return nil, nil
	}
	k.reloadMu.Lock()
	defer k.reloadMu.Unlock()
	if c := k.Codec(); c != seen {
		return c, nil // a reload or the watch got here first
	}
	now := k.now()
	if now.Sub(k.reloadedAt) < reloadEvery {
		return nil, k.reloadErr
	}
	k.reloadedAt, k.reloadErr = now, nil
	entry, err := k.kv.Get(ctx, keysetKey)
	if err != nil {
		k.reloadErr = &domain.Error{Code: domain.EUnavailable, Message: "keys could not be read, retry", RetryAfterMs: reloadEvery.Milliseconds()}
		k.log.Warn("keyset reload failed", "err", err)
		return nil, k.reloadErr
	}
	ks, err := decodeKeyset(entry.Value())
	if err == nil {
		_, err = k.adopt(entry.Revision(), ks)
	}
	if err != nil {
		k.log.Error("keyset revision unusable, keeping the keys in use", "revision", entry.Revision(), "err", err)
	}
	if c := k.Codec(); c != seen {
		return c, nil
	}
	return nil, nil
}

// Stage adds a next key of each kind that has none (see Keyset.Stage) and
// returns the keyset as written. With ifRevision set, it changes nothing
// unless the keyset is still at that revision.
func (k *Keyring) Stage(ctx context.Context, ifRevision uint64) (*LoadedKeys, error) {
	return k.change(ctx, ifRevision, func(ks Keyset, now time.Time) (Keyset, error) {
		return ks.Stage(now, k.life), nil
	})
}

// Promote makes the next keys current and retires the current ones (see
// Keyset.Promote); ifRevision as in Stage. Promote the revision every
// instance has loaded, so every instance already verifies what the new keys
// make.
func (k *Keyring) Promote(ctx context.Context, ifRevision uint64) (*LoadedKeys, error) {
	return k.change(ctx, ifRevision, func(ks Keyset, now time.Time) (Keyset, error) {
		return ks.Promote(now, k.life)
	})
}

// Revoke removes the key kid from the keyset, whatever its state, at once;
// a revoked current key is replaced in the same write (Keyset.Revoke).
// ifRevision as in Stage. Every instance stops verifying the key as soon
// as it loads the revision.
func (k *Keyring) Revoke(ctx context.Context, kid string, ifRevision uint64) (*LoadedKeys, Revocation, error) {
	var r Revocation
	l, err := k.change(ctx, ifRevision, func(ks Keyset, now time.Time) (Keyset, error) {
		next, rr, err := ks.Revoke(kid, now, k.life)
		r = rr
		return next, err
	})
	if err != nil {
		return nil, Revocation{}, err
	}
	return l, r, nil
}

// change applies f to the stored keyset with a compare-and-set on its
// revision, retrying when another writer got in between (unless the caller
// named the revision it expects), and adopts the result at once.
func (k *Keyring) change(ctx context.Context, ifRevision uint64, f func(Keyset, time.Time) (Keyset, error)) (*LoadedKeys, error) {
	return k.changeFrom(ctx, ifRevision, nil, f)
}

// changeFrom is change with held, the keys this instance held before the
// stored revision (nil: the keys in use): a stored keyset without SET keys
// gets them in the same write, whatever f does (withSETKeys).
func (k *Keyring) changeFrom(ctx context.Context, ifRevision uint64, held *LoadedKeys, f func(Keyset, time.Time) (Keyset, error)) (*LoadedKeys, error) {
	if k.kv == nil {
		return nil, errors.New("keys are fixed: there is no key bucket")
	}
	for range changeAttempts {
		entry, err := k.kv.Get(ctx, keysetKey)
		if err != nil {
			return nil, keysUnavailable("read the keyset", err)
		}
		if ifRevision != 0 && entry.Revision() != ifRevision {
			return nil, changedSince(ifRevision, entry.Revision())
		}
		ks, err := decodeKeyset(entry.Value())
		if err != nil {
			return nil, fmt.Errorf("kv %s: keyset is unreadable: %w", Bucket, err)
		}
		from := held
		if from == nil {
			from = k.loaded.Load()
		}
		now := k.now()
		next, err := f(withSETKeys(ks, entry.Revision(), from, now), now)
		if err != nil {
			return nil, err
		}
		raw, err := json.Marshal(next)
		if err != nil {
			return nil, err
		}
		if bytes.Equal(raw, entry.Value()) {
			return k.adopt(entry.Revision(), next)
		}
		rev, err := k.kv.Update(ctx, keysetKey, raw, entry.Revision())
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			if ifRevision != 0 {
				return nil, changedSince(ifRevision, 0)
			}
			continue
		}
		if err != nil {
			return nil, keysUnavailable("write the keyset", err)
		}
		return k.adopt(rev, next)
	}
	return nil, &domain.Error{Code: domain.EUnavailable, Message: "the keyset kept changing underneath, retry", RetryAfterMs: 1000}
}

func changedSince(want, now uint64) error {
	if now == 0 {
		return domain.Errorf(domain.EInvalidRequest, "the keyset changed after revision %d; look again (tokenctl keys list)", want)
	}
	return domain.Errorf(domain.EInvalidRequest, "the keyset is at revision %d, not %d; look again (tokenctl keys list)", now, want)
}

func keysUnavailable(what string, err error) error {
	return fmt.Errorf("%w: %w", &domain.Error{Code: domain.EUnavailable, Message: "could not " + what + ", retry", RetryAfterMs: 1000}, err)
}
