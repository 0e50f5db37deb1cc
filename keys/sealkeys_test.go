package keys

import (
	"bytes"
	"context"
	"crypto/hkdf"
	"crypto/sha256"
	"testing"
	"time"

	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events/eventstest"
)

// The keys that seal secrets kept outside TOKENS_KEYS (SSF delivery
// secrets) derive from the MAC keys and rotate with them.

func TestSealKeyDerivesFromTheCurrentMACKey(t *testing.T) {
	_, js := eventstest.MustJS(t)
	ctx := context.Background()
	a, b := mustKeyring(t, js), mustKeyring(t, js)

	kid, key, err := a.Loaded().SealKey()
	if err != nil {
		t.Fatal(err)
	}
	cur := a.Loaded().Keys.MAC[0]
	want, _ := hkdf.Key(sha256.New, cur.Secret, nil, "tokend ssf secret v1", 32)
	if cur.State != KeyCurrent || kid != cur.ID || !bytes.Equal(key, want) || bytes.Equal(key, cur.Secret[:32]) {
		t.Fatalf("seal key %s: not HKDF-SHA256 of the current MAC key %s", kid, cur.ID)
	}
	// Every instance derives the same key: any of them opens what another sealed.
	if kidB, keyB, _ := b.Loaded().SealKey(); kidB != kid || !bytes.Equal(keyB, key) {
		t.Fatal("two instances of one keyset seal with different keys")
	}

	// A promotion moves sealing to the new key; the old one still opens
	// while it is retired, and not once it is revoked.
	if _, err := a.Stage(ctx, 0); err != nil {
		t.Fatal(err)
	}
	staged := a.Loaded()
	next := staged.Keys.MAC[1].ID
	if k, _, _ := staged.SealKey(); k != kid {
		t.Fatal("a staged key seals before its promotion")
	}
	if _, ok := staged.OpenKey(next); !ok {
		t.Fatal("a staged key does not open")
	}
	promoted, err := a.Promote(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	newKID, newKey, _ := promoted.SealKey()
	if newKID != next || bytes.Equal(newKey, key) || promoted.KeysetRevision() != promoted.Revision {
		t.Fatalf("after the promotion sealing uses %s", newKID)
	}
	if old, ok := promoted.OpenKey(kid); !ok || !bytes.Equal(old, key) {
		t.Fatal("the retired key no longer opens what it sealed")
	}
	revoked, _, err := a.Revoke(ctx, kid, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := revoked.OpenKey(kid); ok {
		t.Fatal("a revoked key still opens")
	}
	if _, ok := revoked.OpenKey("no-such-key"); ok {
		t.Fatal("an unknown key opens")
	}
}

func TestSealKeyOfAnExpiredKeyIsGone(t *testing.T) {
	t0 := time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)
	ks := NewKeyset(t0).Stage(t0, testLife)
	old := ks.MAC[0].ID
	ks, err := ks.Promote(t0, testLife)
	if err != nil {
		t.Fatal(err)
	}
	before, err := loadedAt(1, ks, t0.Add(testLife.mac()-time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := before.OpenKey(old); !ok {
		t.Fatal("the retired key does not open before its expiry")
	}
	after, err := loadedAt(1, ks, t0.Add(testLife.mac()))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := after.OpenKey(old); ok {
		t.Fatal("an expired key still opens")
	}
}

func TestFixedKeysSealNothing(t *testing.T) {
	codec, err := NewKeyset(time.Now()).Codec()
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := FixedKeys(codec).Loaded().SealKey(); domain.ErrorCode(err) != domain.EUnavailable {
		t.Fatalf("fixed keys: %v", err)
	}
}
