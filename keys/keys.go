// Package keys holds a deployment's refresh-token MAC keys, access-token
// signing keys and Security Event Token signing keys in the KV bucket
// TOKENS_KEYS: their rotation (stage, promote, retire) and the keyring every
// instance follows.
package keys

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokend/tokend/domain"
)

// Bucket is the KV bucket of the deployment's keys, named by the contract.
const Bucket = "TOKENS_KEYS"

// keysetKey is the one entry of TOKENS_KEYS; a single entry makes "first
// instance creates, the others load" one atomic create, and every change one
// compare-and-set.
const keysetKey = "keyset"

// KeyState is where a key stands in its rotation.
type KeyState string

const (
	// KeyNext is staged: it verifies refresh tokens and is published in the
	// JWKS, but nothing is minted or signed with it yet, so every instance
	// and every resource server can learn it before it is used.
	KeyNext KeyState = "next"
	// KeyCurrent mints refresh tokens or signs access tokens or SETs; one
	// per kind.
	KeyCurrent KeyState = "current"
	// KeyRetired only verifies, until its ExpiresAt.
	KeyRetired KeyState = "retired"
)

// Kinds of key, as Infos and Revocation name them.
const (
	KindMAC     = "mac"     // refresh-token MAC keys
	KindSigning = "signing" // access-token signing keys
	KindSET     = "set"     // Security Event Token (SSF) signing keys
)

// kinds are the kinds of key in the order they are listed.
var kinds = []string{KindMAC, KindSigning, KindSET}

// SETKeyBits is the size of a new SET signing key. The CAEP
// interoperability profile 1.0 ("Event Signatures") requires RS256 with
// keys of at least 2048 bits; larger keys would only slow every signature.
const SETKeyBits = 2048

// Keyset is every key a deployment holds: one current key of each kind, at
// most one next key of each kind, and the retired keys that still verify.
//
// Stored, each list starts with its current key, then the next one, then the
// retired ones. Keysets written before keys had states are a plain list
// whose first key is current; they are read as such (the rest retired), and
// instances of that version read a keyset of this one correctly too.
//
// Keysets written before SET keys existed have none: the first instance
// that loads one adds a current SET key (see loadOrCreate). Instances of
// that version ignore set_keys (json.Unmarshal skips unknown fields), but
// drop it when they change the keyset; the keyring puts it back (see
// withSETKeys).
type Keyset struct {
	MAC     []MACKey     `json:"mac_keys"`
	Signing []SigningKey `json:"signing_keys"`
	SET     []SETKey     `json:"set_keys,omitempty"`
}

// KeyInfo is what may be shown of a key: everything but its secret.
type KeyInfo struct {
	ID        string    `json:"kid"`
	State     KeyState  `json:"state"`
	CreatedAt time.Time `json:"created_at"`
	// PromotedAt is when the key became current: from then until RetiredAt
	// it made every token of its kind. Zero for staged keys and keys
	// promoted before it was recorded.
	PromotedAt time.Time `json:"promoted_at,omitzero"`
	// RetiredAt and ExpiresAt are set on retired keys: at ExpiresAt the key
	// stops verifying and leaves the JWKS on every instance (InEffect), and
	// the next change drops it from the bucket.
	RetiredAt time.Time `json:"retired_at,omitzero"`
	ExpiresAt time.Time `json:"expires_at,omitzero"`
}

// MACKey is a refresh-token MAC key.
type MACKey struct {
	KeyInfo
	Secret []byte `json:"secret"`
}

// SigningKey is an Ed25519 access-token signing key, stored as its seed.
type SigningKey struct {
	KeyInfo
	Seed []byte `json:"seed"`
}

// SETKey is an RSA key that signs Security Event Tokens (RS256), stored as
// its PKCS #8 DER encoding.
type SETKey struct {
	KeyInfo
	PKCS8 []byte `json:"pkcs8"`
}

func (k *MACKey) info() *KeyInfo     { return &k.KeyInfo }
func (k *SigningKey) info() *KeyInfo { return &k.KeyInfo }
func (k *SETKey) info() *KeyInfo     { return &k.KeyInfo }

// Private returns the Ed25519 private key.
func (k SigningKey) Private() ed25519.PrivateKey { return ed25519.NewKeyFromSeed(k.Seed) }

// Private returns the RSA private key, or an error if the stored key is not
// an RSA key of at least SETKeyBits bits.
func (k SETKey) Private() (*rsa.PrivateKey, error) {
	parsed, err := x509.ParsePKCS8PrivateKey(k.PKCS8)
	if err != nil {
		return nil, err
	}
	key, ok := parsed.(*rsa.PrivateKey)
	switch {
	case !ok:
		return nil, fmt.Errorf("a %T, not an RSA key", parsed)
	case key.N.BitLen() < SETKeyBits:
		return nil, fmt.Errorf("an RSA key of %d bits, fewer than %d", key.N.BitLen(), SETKeyBits)
	}
	return key, nil
}

// Lifetimes say how long a retired key must keep verifying: as long as the
// longest-lived token made under it, plus Skew for clocks that disagree and
// instances that learn of a promotion a moment late.
type Lifetimes struct {
	Refresh time.Duration // a family's absolute TTL: the most a refresh token can outlive its MAC key's retirement
	Access  time.Duration // the access-token TTL
	SET     time.Duration // the most a SET may take from its signing to its receiver; 0: DefaultSETLifetime
	Skew    time.Duration // 0: DefaultClockSkew
}

// DefaultClockSkew is the margin added to a retired key's lifetime.
const DefaultClockSkew = 5 * time.Minute

// DefaultSETLifetime is how long a retired SET key stays published. A
// receiver verifies a SET when it arrives (RFC 8417 section 2), and tokend
// signs a SET when it delivers it; but a push may be retried, with the same
// signed SET, through a receiver's outage, and a poll receiver may fetch a
// SET handed out before a rotation (RFC 8935, RFC 8936). A week covers an
// outage over a long weekend and its backlog; a SET still undelivered then
// must be signed again. It costs one RSA public key in the JWKS for a week
// after each rotation. (Not the stream's --retention: that is months, or for
// ever, and nothing signed waits that long.)
const DefaultSETLifetime = 7 * 24 * time.Hour

func (l Lifetimes) skew() time.Duration {
	if l.Skew == 0 {
		return DefaultClockSkew
	}
	return l.Skew
}

func (l Lifetimes) mac() time.Duration     { return l.Refresh + l.skew() }
func (l Lifetimes) signing() time.Duration { return l.Access + l.skew() }

func (l Lifetimes) set() time.Duration {
	if l.SET == 0 {
		return DefaultSETLifetime + l.skew()
	}
	return l.SET + l.skew()
}

// ErrNothingStaged answers a promotion without a staged key.
var ErrNothingStaged = domain.Errorf(domain.EInvalidRequest, "no key is staged: stage keys first")

// ErrUnknownKey answers a revocation of a key the keyset does not hold.
var ErrUnknownKey = domain.Errorf(domain.ENotFound, "no key has this kid: look again (tokenctl keys list)")

// NewKeyset generates a fresh current key of each kind.
func NewKeyset(now time.Time) Keyset {
	return Keyset{MAC: []MACKey{newMACKey(now, KeyCurrent)}, Signing: []SigningKey{newSigningKey(now, KeyCurrent)},
		SET: []SETKey{newSETKey(now, KeyCurrent)}}
}

func newMACKey(now time.Time, state KeyState) MACKey {
	return MACKey{newKeyInfo(now, state), randomBytes(32)}
}

func newSigningKey(now time.Time, state KeyState) SigningKey {
	return SigningKey{newKeyInfo(now, state), randomBytes(ed25519.SeedSize)}
}

// newSETKey generates an RSA key: tens of milliseconds, once per rotation.
func newSETKey(now time.Time, state KeyState) SETKey {
	key, err := rsa.GenerateKey(rand.Reader, SETKeyBits)
	if err != nil {
		panic(err) // crypto/rand never fails (Go 1.24), nor does generation with it
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		panic(err) // cannot happen for a valid RSA key
	}
	return SETKey{newKeyInfo(now, state), der}
}

// withSETKey returns ks with a new current SET key if it has none: a keyset
// written before SET keys existed.
func (ks Keyset) withSETKey(now time.Time) Keyset {
	if len(ks.SET) > 0 {
		return ks
	}
	ks.SET = []SETKey{newSETKey(now, KeyCurrent)}
	return ks
}

func newKeyInfo(now time.Time, state KeyState) KeyInfo {
	i := KeyInfo{ID: randomID(8), State: state, CreatedAt: now.UTC()}
	if state == KeyCurrent {
		i.PromotedAt = i.CreatedAt
	}
	return i
}

// Stage returns the keyset with a next key of each kind that has none yet,
// and without the retired keys that expired. Staging twice stages nothing
// more, so an interrupted rotation can simply be run again.
func (ks Keyset) Stage(now time.Time, life Lifetimes) Keyset {
	out := ks.settled(now, life)
	if !hasState(out.MAC, KeyNext) {
		out.MAC = append(out.MAC, newMACKey(now, KeyNext))
	}
	if !hasState(out.Signing, KeyNext) {
		out.Signing = append(out.Signing, newSigningKey(now, KeyNext))
	}
	if !hasState(out.SET, KeyNext) {
		out.SET = append(out.SET, newSETKey(now, KeyNext))
	}
	return out.ordered()
}

// Promote returns the keyset with each next key current and each current
// key it replaces retired, expiring after the lifetime of what it made. It
// returns ErrNothingStaged if no kind has a next key.
func (ks Keyset) Promote(now time.Time, life Lifetimes) (Keyset, error) {
	out := ks.settled(now, life)
	mac := promote(out.MAC, now, life.mac())
	signing := promote(out.Signing, now, life.signing())
	set := promote(out.SET, now, life.set())
	if !mac && !signing && !set {
		return Keyset{}, ErrNothingStaged
	}
	return out.ordered(), nil
}

// settled returns a copy without the retired keys past their expiry. A
// retired key without one (read from the old format) gets the expiry it
// would have had if it had retired now: later than its real one, never
// earlier.
func (ks Keyset) settled(now time.Time, life Lifetimes) Keyset {
	return Keyset{MAC: settle(ks.MAC, now, life.mac()), Signing: settle(ks.Signing, now, life.signing()),
		SET: settle(ks.SET, now, life.set())}
}

// InEffect returns the keys that verify at now: ks without the retired keys
// past their expiry, whether or not a change has dropped them from the
// bucket yet. next is the earliest expiry still ahead, zero if none: when
// the keys in effect change next without a write. Retired keys of the old
// format, without an expiry, stay until a change gives them one.
func (ks Keyset) InEffect(now time.Time) (_ Keyset, next time.Time) {
	mac, nextMAC := inEffect(ks.MAC, now)
	signing, nextSigning := inEffect(ks.Signing, now)
	set, nextSET := inEffect(ks.SET, now)
	for _, t := range []time.Time{nextMAC, nextSigning, nextSET} {
		if !t.IsZero() && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	return Keyset{MAC: mac, Signing: signing, SET: set}, next
}

func inEffect[K any, P stated[K]](keys []K, now time.Time) (out []K, next time.Time) {
	out = make([]K, 0, len(keys))
	for _, k := range keys {
		if i := P(&k).info(); i.State == KeyRetired && !i.ExpiresAt.IsZero() {
			if !now.Before(i.ExpiresAt) {
				continue
			}
			if next.IsZero() || i.ExpiresAt.Before(next) {
				next = i.ExpiresAt
			}
		}
		out = append(out, k)
	}
	return out, next
}

// Revocation says what revoking a key changed.
type Revocation struct {
	Kind    string  // KindMAC, KindSigning or KindSET
	Revoked KeyInfo // the key removed, as it was
	// Current is set when the revoked key was current: the key current in
	// its place, the staged one promoted (Generated false) or a new one.
	Current   *KeyInfo
	Generated bool
}

// Revoke returns the keyset without the key kid, whatever its state, and
// without the retired keys that expired. A revoked current key is replaced
// in the same keyset, by the staged key of its kind if there is one (every
// instance and resource server that loaded the stage knows it already),
// else by a new key: a deployment never goes without a current key. It
// returns ErrUnknownKey if no key has that id.
func (ks Keyset) Revoke(kid string, now time.Time, life Lifetimes) (Keyset, Revocation, error) {
	mac, signing, set := indexOf(ks.MAC, kid), indexOf(ks.Signing, kid), indexOf(ks.SET, kid)
	out := Keyset{MAC: slices.Clone(ks.MAC), Signing: slices.Clone(ks.Signing), SET: slices.Clone(ks.SET)}
	var r Revocation
	switch {
	case (mac >= 0 && signing >= 0) || (mac >= 0 && set >= 0) || (signing >= 0 && set >= 0):
		return Keyset{}, Revocation{}, domain.Errorf(domain.EInvalidRequest, "kid %s names keys of more than one kind: revoke by hand", kid)
	case mac >= 0:
		out.MAC, r = revoke(ks.MAC, mac, now, func() MACKey { return newMACKey(now, KeyCurrent) })
		r.Kind = KindMAC
	case signing >= 0:
		out.Signing, r = revoke(ks.Signing, signing, now, func() SigningKey { return newSigningKey(now, KeyCurrent) })
		r.Kind = KindSigning
	case set >= 0:
		out.SET, r = revoke(ks.SET, set, now, func() SETKey { return newSETKey(now, KeyCurrent) })
		r.Kind = KindSET
	default:
		return Keyset{}, Revocation{}, ErrUnknownKey
	}
	return out.settled(now, life).ordered(), r, nil
}

// revoke returns keys without keys[n], with a current key in its place if
// it was the current one: the next key, else one made by fresh.
func revoke[K any, P stated[K]](keys []K, n int, now time.Time, fresh func() K) ([]K, Revocation) {
	r := Revocation{Revoked: *P(&keys[n]).info()}
	rest := slices.Delete(slices.Clone(keys), n, n+1)
	if r.Revoked.State != KeyCurrent {
		return rest, r
	}
	next := slices.IndexFunc(rest, func(k K) bool { return P(&k).info().State == KeyNext })
	if next < 0 {
		rest, next, r.Generated = append(rest, fresh()), len(rest), true
	}
	i := P(&rest[next]).info()
	i.State, i.PromotedAt = KeyCurrent, now.UTC()
	current := *i
	r.Current = &current
	return rest, r
}

type stated[K any] interface {
	*K
	info() *KeyInfo
}

func indexOf[K any, P stated[K]](keys []K, kid string) int {
	return slices.IndexFunc(keys, func(k K) bool { return P(&k).info().ID == kid })
}

func hasState[K any, P stated[K]](keys []K, s KeyState) bool {
	return slices.ContainsFunc(keys, func(k K) bool { return P(&k).info().State == s })
}

func settle[K any, P stated[K]](keys []K, now time.Time, lifetime time.Duration) []K {
	out := make([]K, 0, len(keys)+1)
	for _, k := range keys {
		i := P(&k).info()
		if i.State == KeyRetired {
			if i.ExpiresAt.IsZero() {
				i.RetiredAt, i.ExpiresAt = now.UTC(), now.Add(lifetime).UTC()
			}
			if !now.Before(i.ExpiresAt) {
				continue
			}
		}
		out = append(out, k)
	}
	return out
}

// promote moves next to current and current to retired, in place; it
// reports whether there was a next key.
func promote[K any, P stated[K]](keys []K, now time.Time, lifetime time.Duration) bool {
	if !hasState[K, P](keys, KeyNext) {
		return false
	}
	for n := range keys {
		switch i := P(&keys[n]).info(); i.State {
		case KeyCurrent:
			i.State, i.RetiredAt, i.ExpiresAt = KeyRetired, now.UTC(), now.Add(lifetime).UTC()
		case KeyNext:
			i.State, i.PromotedAt = KeyCurrent, now.UTC()
		}
	}
	return true
}

// ordered sorts each list current, next, retired (newest retired first).
func (ks Keyset) ordered() Keyset {
	return Keyset{MAC: sortKeys(ks.MAC), Signing: sortKeys(ks.Signing), SET: sortKeys(ks.SET)}
}

func sortKeys[K any, P stated[K]](keys []K) []K {
	rank := map[KeyState]int{KeyCurrent: 0, KeyNext: 1, KeyRetired: 2}
	out := slices.Clone(keys)
	slices.SortStableFunc(out, func(a, b K) int {
		ia, ib := P(&a).info(), P(&b).info()
		if ia.State != ib.State {
			return rank[ia.State] - rank[ib.State]
		}
		return ib.RetiredAt.Compare(ia.RetiredAt)
	})
	return out
}

// Infos returns what may be shown of every key, by kind (KindMAC,
// KindSigning, KindSET).
func (ks Keyset) Infos() map[string][]KeyInfo {
	out := map[string][]KeyInfo{}
	for _, k := range ks.MAC {
		out[KindMAC] = append(out[KindMAC], k.KeyInfo)
	}
	for _, k := range ks.Signing {
		out[KindSigning] = append(out[KindSigning], k.KeyInfo)
	}
	for _, k := range ks.SET {
		out[KindSET] = append(out[KindSET], k.KeyInfo)
	}
	return out
}

// Kinds returns the kinds of key in the order key listings show them: MAC,
// signing, SET.
func Kinds() []string { return slices.Clone(kinds) }

// summary lists the key ids by kind and state, for the log.
func (ks Keyset) summary() string {
	var b strings.Builder
	for _, kind := range kinds {
		for _, i := range ks.Infos()[kind] {
			if b.Len() > 0 {
				b.WriteByte(' ')
			}
			fmt.Fprintf(&b, "%s:%s:%s", kind, i.State, i.ID)
		}
	}
	return b.String()
}

// Codec returns a token codec minting with the current MAC key and
// verifying with every key held, next and retired included.
func (ks Keyset) Codec() (*domain.TokenCodec, error) {
	var current domain.MACKey
	var others []domain.MACKey
	for _, k := range ks.MAC {
		key := domain.MACKey{ID: k.ID, Secret: k.Secret}
		if k.State == KeyRetired {
			key.RetiredAt = k.RetiredAt
		}
		if k.State == KeyCurrent && current.ID == "" {
			current = key
		} else {
			others = append(others, key)
		}
	}
	if current.ID == "" {
		return nil, errors.New("keyset has no current MAC key")
	}
	return domain.NewTokenCodec(current, others...)
}

// CurrentSigning returns the signing key access tokens are signed with.
func (ks Keyset) CurrentSigning() (SigningKey, error) {
	for _, k := range ks.Signing {
		if k.State == KeyCurrent {
			return k, nil
		}
	}
	return SigningKey{}, errors.New("keyset has no current signing key")
}

// CurrentSET returns the key SETs are signed with.
func (ks Keyset) CurrentSET() (SETKey, error) {
	for _, k := range ks.SET {
		if k.State == KeyCurrent {
			return k, nil
		}
	}
	return SETKey{}, errors.New("keyset has no current SET key")
}

// decodeKeyset reads a stored keyset, of this format or the previous one.
func decodeKeyset(data []byte) (Keyset, error) {
	var ks Keyset
	if err := json.Unmarshal(data, &ks); err != nil {
		return Keyset{}, err
	}
	if err := fromPlainList(ks.MAC); err != nil {
		return Keyset{}, fmt.Errorf("mac keys: %w", err)
	}
	if err := fromPlainList(ks.Signing); err != nil {
		return Keyset{}, fmt.Errorf("signing keys: %w", err)
	}
	return ks, ks.validate()
}

// fromPlainList gives the keys of the previous format, which had no states,
// theirs: the first is current, the others retired.
func fromPlainList[K any, P stated[K]](keys []K) error {
	plain := 0
	for n := range keys {
		if P(&keys[n]).info().State == "" {
			plain++
		}
	}
	switch {
	case plain == 0:
		return nil
	case plain < len(keys):
		return errors.New("some keys have a state and some do not")
	}
	for n := range keys {
		P(&keys[n]).info().State = KeyRetired
	}
	if len(keys) > 0 {
		P(&keys[0]).info().State = KeyCurrent
	}
	return nil
}

// validate checks what every instance relies on: one current and at most
// one next key per kind, unique valid ids, usable key material. A keyset
// without SET keys is one written before they existed, valid until it gets
// them (withSETKey).
func (ks Keyset) validate() error {
	seen := map[string]bool{}
	check := func(kind string, i KeyInfo, usable bool) error {
		if !domain.ValidID(i.ID) || seen[kind+i.ID] {
			return fmt.Errorf("%s key id %q is invalid or repeated", kind, i.ID)
		}
		seen[kind+i.ID] = true
		if !usable {
			return fmt.Errorf("%s key %s has unusable key material", kind, i.ID)
		}
		switch i.State {
		case KeyNext, KeyCurrent, KeyRetired:
		default:
			return fmt.Errorf("%s key %s has unknown state %q", kind, i.ID, i.State)
		}
		return nil
	}
	for _, k := range ks.MAC {
		if err := check("mac", k.KeyInfo, len(k.Secret) >= 32); err != nil {
			return err
		}
	}
	for _, k := range ks.Signing {
		if err := check("signing", k.KeyInfo, len(k.Seed) == ed25519.SeedSize); err != nil {
			return err
		}
	}
	for _, k := range ks.SET {
		if err := check("set", k.KeyInfo, true); err != nil {
			return err
		}
		if _, err := k.Private(); err != nil {
			return fmt.Errorf("set key %s has unusable key material: %w", k.ID, err)
		}
	}
	for kind, infos := range ks.Infos() {
		count := map[KeyState]int{}
		for _, i := range infos {
			count[i.State]++
		}
		if count[KeyCurrent] != 1 || count[KeyNext] > 1 {
			return fmt.Errorf("%s keys: %d current and %d next, want 1 and at most 1", kind, count[KeyCurrent], count[KeyNext])
		}
	}
	if len(ks.MAC) == 0 || len(ks.Signing) == 0 {
		return errors.New("keyset lacks a kind of key")
	}
	return nil
}

// openKeysBucket creates TOKENS_KEYS or adopts its configuration. It keeps
// one revision: a key dropped from the keyset must not live on in the
// bucket's history.
func openKeysBucket(ctx context.Context, js jetstream.JetStream, replicas int) (jetstream.KeyValue, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      Bucket,
		Description: "tokend signing and MAC keys: the one secret of a deployment",
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("kv %s: %w", Bucket, err)
	}
	return kv, nil
}

// LoadOrCreateKeys returns the deployment's keyset from TOKENS_KEYS, creating
// the bucket and the keys if this is the first instance to start.
func LoadOrCreateKeys(ctx context.Context, js jetstream.JetStream, replicas int) (Keyset, error) {
	kv, err := openKeysBucket(ctx, js, replicas)
	if err != nil {
		return Keyset{}, err
	}
	ks, _, err := loadOrCreate(ctx, kv)
	return ks, err
}

// loadOrCreate returns the stored keyset and its revision, creating it if
// there is none and adding a SET key if it has none.
func loadOrCreate(ctx context.Context, kv jetstream.KeyValue) (Keyset, uint64, error) {
	for range 3 {
		entry, err := kv.Get(ctx, keysetKey)
		if err == nil {
			ks, err := decodeKeyset(entry.Value())
			if err != nil {
				return Keyset{}, 0, fmt.Errorf("kv %s: keyset is unreadable: %w", Bucket, err)
			}
			if len(ks.SET) > 0 {
				return ks, entry.Revision(), nil
			}
			// Written by a version without SET keys: the first instance of
			// this one to load it adds one. Update fails if another
			// instance did first; the next Get loads its key.
			upgraded := ks.withSETKey(time.Now())
			raw, err := json.Marshal(upgraded)
			if err != nil {
				return Keyset{}, 0, err
			}
			rev, err := kv.Update(ctx, keysetKey, raw, entry.Revision())
			if err == nil {
				return upgraded, rev, nil
			}
			if !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
				return Keyset{}, 0, fmt.Errorf("kv %s: add a SET key: %w", Bucket, err)
			}
			continue
		}
		if !errors.Is(err, jetstream.ErrKeyNotFound) {
			return Keyset{}, 0, fmt.Errorf("kv %s: %w", Bucket, err)
		}
		raw, _ := json.Marshal(NewKeyset(time.Now()))
		// Create fails if another instance won the race; the next Get loads its keys.
		if _, err := kv.Create(ctx, keysetKey, raw); err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
			return Keyset{}, 0, fmt.Errorf("kv %s: %w", Bucket, err)
		}
	}
	return Keyset{}, 0, fmt.Errorf("kv %s: keyset neither loadable nor creatable", Bucket)
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func randomID(n int) string { return domain.NewID(randomBytes(n)) }
