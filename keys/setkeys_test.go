package keys

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"log/slog"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events/eventstest"
)

// SET keys: the third kind, RSA keys that sign Security Event Tokens.

// previousFormat is a keyset as the version before SET keys wrote it: keys
// with states, no set_keys.
const previousFormat = `{"mac_keys":[` +
	`{"kid":"mac-a","state":"current","created_at":"2026-01-01T00:00:00Z","promoted_at":"2026-01-01T00:00:00Z",` +
	`"secret":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="},` +
	`{"kid":"mac-b","state":"retired","created_at":"2025-01-01T00:00:00Z","promoted_at":"2025-01-01T00:00:00Z",` +
	`"retired_at":"2026-01-01T00:00:00Z","expires_at":"2026-01-31T00:05:00Z","secret":"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="}],` +
	`"signing_keys":[{"kid":"sig-a","state":"current","created_at":"2026-01-01T00:00:00Z","promoted_at":"2026-01-01T00:00:00Z",` +
	`"seed":"AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI="}]}`

// previousKeyset is the keyset type of the version before SET keys: its
// MAC and signing key types are this version's.
type previousKeyset struct {
	MAC     []MACKey     `json:"mac_keys"`
	Signing []SigningKey `json:"signing_keys"`
}

func TestKeysetOfThePreviousVersionGetsASETKey(t *testing.T) {
	t0 := time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)
	ks, err := decodeKeyset([]byte(previousFormat))
	if err != nil {
		t.Fatal(err)
	}
	if len(ks.SET) != 0 {
		t.Fatalf("SET keys from nowhere: %s", ks.summary())
	}
	if _, err := ks.CurrentSET(); err == nil {
		t.Fatal("a current SET key without SET keys")
	}
	up := ks.withSETKey(t0)
	if err := up.validate(); err != nil {
		t.Fatal(err)
	}
	cur, err := up.CurrentSET()
	if err != nil || len(up.SET) != 1 || !cur.PromotedAt.Equal(t0) {
		t.Fatalf("after the upgrade: %s: %v", up.summary(), err)
	}
	if !reflect.DeepEqual(up.MAC, ks.MAC) || !reflect.DeepEqual(up.Signing, ks.Signing) {
		t.Fatal("the upgrade changed the MAC or signing keys")
	}
	if again := up.withSETKey(t0.Add(time.Hour)); len(again.SET) != 1 || again.SET[0].ID != cur.ID {
		t.Fatalf("a second upgrade: %s", again.summary())
	}
	key, err := cur.Private()
	if err != nil || key.N.BitLen() != 2048 {
		t.Fatalf("the SET key: %v", err)
	}
}

// TestPreviousVersionReadsThisFormat: an instance of the previous version
// (json.Unmarshal into its Keyset) reads a keyset with SET keys, staged
// and retired ones included: it skips set_keys and finds the MAC and
// signing keys as written, and its validate (this one's, on a keyset
// without SET keys) accepts them. Checked against the previous version's
// own code too: see docs/operations.md, "SET keys and upgrading".
func TestPreviousVersionReadsThisFormat(t *testing.T) {
	t0 := time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)
	promoted, err := NewKeyset(t0).Stage(t0, testLife).Promote(t0.Add(time.Hour), testLife)
	if err != nil {
		t.Fatal(err)
	}
	ks := promoted.Stage(t0.Add(2*time.Hour), testLife) // current, next and retired of each kind
	raw, err := json.Marshal(ks)
	if err != nil || !strings.Contains(string(raw), `"set_keys":[`) {
		t.Fatalf("%s: %v", raw, err)
	}
	var previous previousKeyset
	if err := json.Unmarshal(raw, &previous); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(previous.MAC, ks.MAC) || !reflect.DeepEqual(previous.Signing, ks.Signing) {
		t.Fatal("the previous version reads other MAC or signing keys")
	}
	if err := (Keyset{MAC: previous.MAC, Signing: previous.Signing}).validate(); err != nil {
		t.Fatalf("the previous version refuses the keyset: %v", err)
	}
}

func TestKeysetRefusesBrokenSETKeys(t *testing.T) {
	t0 := time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)
	staged := NewKeyset(t0).Stage(t0, testLife)
	pkcs8 := func(key any) []byte {
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		return der
	}
	short, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	for name, change := range map[string]func(*Keyset){
		"a 1024-bit key":         func(ks *Keyset) { ks.SET[0].PKCS8 = pkcs8(short) },
		"an Ed25519 key":         func(ks *Keyset) { ks.SET[1].PKCS8 = pkcs8(edKey) },
		"not PKCS #8":            func(ks *Keyset) { ks.SET[0].PKCS8 = []byte("not a key") },
		"two current":            func(ks *Keyset) { ks.SET[1].State = KeyCurrent },
		"no current":             func(ks *Keyset) { ks.SET = ks.SET[1:] },
		"a key without a state":  func(ks *Keyset) { ks.SET[0].State = "" },
		"a kid repeated in kind": func(ks *Keyset) { ks.SET[1].ID = ks.SET[0].ID },
	} {
		ks := staged
		ks.SET = append([]SETKey(nil), staged.SET...)
		change(&ks)
		raw, _ := json.Marshal(ks)
		if _, err := decodeKeyset(raw); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := (SETKey{PKCS8: pkcs8(short)}).Private(); err == nil || !strings.Contains(err.Error(), "1024 bits") {
		t.Fatalf("a 1024-bit key: %v", err)
	}
	raw, _ := json.Marshal(staged)
	if _, err := decodeKeyset(raw); err != nil {
		t.Fatalf("a good keyset: %v", err)
	}
}

// TestWithSETKeys: a keyset an instance of the previous version wrote gets
// back the SET keys of the revision it changed, when this instance held
// that revision; else a new SET key.
func TestWithSETKeys(t *testing.T) {
	t0 := time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)
	held := &LoadedKeys{Revision: 7, stored: NewKeyset(t0).Stage(t0, testLife)}
	dropped := held.stored.Stage(t0, testLife)
	dropped.SET = nil

	if got := withSETKeys(dropped, 8, held, t0); !reflect.DeepEqual(got.SET, held.stored.SET) || !reflect.DeepEqual(got.MAC, dropped.MAC) {
		t.Fatalf("revision 8, written from the held 7: %s", got.summary())
	}
	for name, c := range map[string]struct {
		rev  uint64
		held *LoadedKeys
	}{
		"written from a revision not held": {9, held},
		"nothing held":                     {8, nil},
	} {
		got := withSETKeys(dropped, c.rev, c.held, t0)
		if err := got.validate(); err != nil || len(got.SET) != 1 || got.SET[0].ID == held.stored.SET[0].ID {
			t.Fatalf("%s: %s: %v", name, got.summary(), err)
		}
	}
	if got := withSETKeys(held.stored, 9, nil, t0); !reflect.DeepEqual(got, held.stored) {
		t.Fatal("a keyset with SET keys was changed")
	}
}

// TestKeyringAddsOneSETKeyToThePreviousFormat: instances of this version
// starting together on a keyset of the previous version add one SET key
// between them, in one write, and all sign with it.
func TestKeyringAddsOneSETKeyToThePreviousFormat(t *testing.T) {
	_, js := eventstest.MustJS(t)
	ctx := context.Background()
	kv, err := openKeysBucket(ctx, js, 1)
	if err != nil {
		t.Fatal(err)
	}
	created, err := kv.Create(ctx, keysetKey, []byte(previousFormat))
	if err != nil {
		t.Fatal(err)
	}
	rings := make(chan *Keyring, 4)
	for range cap(rings) {
		go func() {
			k, err := OpenKeyring(ctx, js, 1, testLife, slog.New(slog.DiscardHandler))
			if err != nil {
				t.Error(err)
			}
			rings <- k
		}()
	}
	var kids []string
	for range cap(rings) {
		k := <-rings
		if k == nil {
			t.FailNow()
		}
		kid, _, err := k.Loaded().SETSigner()
		if err != nil {
			t.Fatal(err)
		}
		kids = append(kids, kid)
	}
	entry, err := kv.Get(ctx, keysetKey)
	if err != nil {
		t.Fatal(err)
	}
	stored, err := decodeKeyset(entry.Value())
	if err != nil {
		t.Fatal(err)
	}
	if entry.Revision() != created+1 || len(stored.SET) != 1 {
		t.Fatalf("revision %d (created at %d): %s", entry.Revision(), created, stored.summary())
	}
	for _, kid := range kids {
		if kid != stored.SET[0].ID {
			t.Fatalf("instances sign SETs with %v, the keyset holds %s", kids, stored.SET[0].ID)
		}
	}
	if got := byState(stored, KindMAC); one(t, got[KeyCurrent]) != "mac-a" || one(t, got[KeyRetired]) != "mac-b" ||
		one(t, byState(stored, KindSigning)[KeyCurrent]) != "sig-a" {
		t.Fatalf("the upgrade changed other keys: %s", stored.summary())
	}
}

// TestKeyringPutsBackSETKeysThePreviousVersionDropped: during a rolling
// upgrade an instance of the previous version stages keys, writing the
// keyset without the SET keys it does not know. The instances of this
// version adopt its change and put the SET keys back as they were, in one
// write: receivers see no change of SET key.
func TestKeyringPutsBackSETKeysThePreviousVersionDropped(t *testing.T) {
	_, js := eventstest.MustJS(t)
	ctx := context.Background()
	a, b := mustKeyring(t, js), mustKeyring(t, js)
	kid, _, err := a.Loaded().SETSigner()
	if err != nil {
		t.Fatal(err)
	}
	kv, _ := js.KeyValue(ctx, Bucket)
	entry, err := kv.Get(ctx, keysetKey)
	if err != nil {
		t.Fatal(err)
	}
	ks, err := decodeKeyset(entry.Value())
	if err != nil {
		t.Fatal(err)
	}
	stagedByPrevious := ks.Stage(time.Now(), testLife)
	raw, _ := json.Marshal(previousKeyset{MAC: stagedByPrevious.MAC, Signing: stagedByPrevious.Signing})
	rev, err := kv.Update(ctx, keysetKey, raw, entry.Revision())
	if err != nil {
		t.Fatal(err)
	}
	nextMAC := one(t, byState(stagedByPrevious, KindMAC)[KeyNext])

	var stored Keyset
	eventstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		e, err := kv.Get(ctx, keysetKey)
		if err != nil {
			return err
		}
		if stored, err = decodeKeyset(e.Value()); err != nil || len(stored.SET) == 0 {
			return fmt.Errorf("revision %d: %s: %v", e.Revision(), stored.summary(), err)
		}
		if e.Revision() != rev+1 {
			return fmt.Errorf("revision %d, want %d: one write puts the SET keys back", e.Revision(), rev+1)
		}
		return nil
	})
	if !reflect.DeepEqual(stored.SET, ks.SET) || one(t, byState(stored, KindMAC)[KeyNext]) != nextMAC {
		t.Fatalf("after the previous version's stage: %s, want the SET keys of %s", stored.summary(), ks.summary())
	}
	for name, k := range map[string]*Keyring{"a": a, "b": b} {
		waitRevision(t, k, rev+1)
		if got, _, err := k.Loaded().SETSigner(); err != nil || got != kid {
			t.Fatalf("%s signs SETs with %q, want %s: %v", name, got, kid, err)
		}
		if tok := k.Codec().Mint("f", 1, [32]byte{}); !strings.Contains(k.Loaded().Keys.summary(), "mac:next:"+nextMAC) || tok.KeyID == nextMAC {
			t.Fatalf("%s did not adopt the stage: %s", name, k.Loaded().Keys.summary())
		}
	}
}

// TestSETSigner: every instance signs SETs with the current SET key of the
// keyset it has loaded, through rotations and revocations.
func TestSETSigner(t *testing.T) {
	_, js := eventstest.MustJS(t)
	ctx := context.Background()
	a, b := mustKeyring(t, js), mustKeyring(t, js)
	signer := func(k *Keyring) (string, *rsa.PrivateKey) {
		t.Helper()
		kid, key, err := k.Loaded().SETSigner()
		if err != nil {
			t.Fatal(err)
		}
		return kid, key
	}
	// What the signer signs verifies with the public key of the same kid.
	kid, key := signer(a)
	digest := sha256.Sum256([]byte("header.claims"))
	sig, err := key.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	cur, err := a.Loaded().Keys.CurrentSET()
	if err != nil || cur.ID != kid {
		t.Fatalf("signs with %s, the current SET key is %s: %v", kid, cur.ID, err)
	}
	public, err := cur.Private()
	if err != nil || rsa.VerifyPKCS1v15(&public.PublicKey, crypto.SHA256, digest[:], sig) != nil {
		t.Fatalf("the signature does not verify with the key of kid %s: %v", kid, err)
	}
	if other, _ := signer(b); other != kid {
		t.Fatalf("the instances sign with %s and %s", kid, other)
	}

	staged, err := a.Stage(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	nextSET := one(t, byState(staged.Keys, KindSET)[KeyNext])
	waitRevision(t, b, staged.Revision)
	if got, _ := signer(b); got != kid {
		t.Fatalf("signs with the staged key %s", got)
	}
	promoted, err := a.Promote(ctx, staged.Revision)
	if err != nil {
		t.Fatal(err)
	}
	waitRevision(t, b, promoted.Revision)
	for name, k := range map[string]*Keyring{"a": a, "b": b} {
		if got, _ := signer(k); got != nextSET {
			t.Fatalf("%s signs with %s after the promotion, want %s", name, got, nextSET)
		}
	}

	revoked, r, err := a.Revoke(ctx, nextSET, 0)
	if err != nil {
		t.Fatal(err)
	}
	if r.Kind != KindSET || r.Current == nil || !r.Generated {
		t.Fatalf("revocation %+v", r)
	}
	waitRevision(t, b, revoked.Revision)
	for name, k := range map[string]*Keyring{"a": a, "b": b} {
		if got, _ := signer(k); got != r.Current.ID {
			t.Fatalf("%s signs with %s after the revocation, want the new key %s", name, got, r.Current.ID)
		}
		if strings.Contains(k.Loaded().Keys.summary(), nextSET) {
			t.Fatalf("%s still holds the revoked key: %s", name, k.Loaded().Keys.summary())
		}
	}

	codec, _ := domain.NewTokenCodec(domain.MACKey{ID: "m", Secret: make([]byte, 32)})
	if _, _, err := FixedKeys(codec).Loaded().SETSigner(); domain.ErrorCode(err) != domain.EUnavailable {
		t.Fatalf("fixed keys: %v", err)
	}
}
