package keys

import (
	"bytes"
	"crypto/hkdf"
	"crypto/sha256"
	"testing"
	"time"

	"github.com/tokend/tokend/events/eventstest"
)

// The keys of DPoP server nonces derive from the MAC keys in effect, apart
// from the keys that seal secrets, so every instance accepts every
// instance's nonces and a rotation keeps the earlier ones valid.

func TestNonceKeysDeriveFromEveryMACKeyInEffect(t *testing.T) {
	t0 := time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)
	ks, err := NewKeyset(t0).Stage(t0, testLife).Promote(t0, testLife)
	if err != nil {
		t.Fatal(err)
	}
	ks = ks.Stage(t0, testLife) // retired, current and next MAC keys
	l, err := loadedAt(1, ks, t0)
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Keys.MAC) != 3 {
		t.Fatalf("%d MAC keys in effect, want 3", len(l.Keys.MAC))
	}
	current, all := l.NonceKeys()
	if len(all) != len(l.Keys.MAC) {
		t.Fatalf("%d nonce keys for %d MAC keys", len(all), len(l.Keys.MAC))
	}
	for _, k := range l.Keys.MAC {
		want, _ := hkdf.Key(sha256.New, k.Secret, nil, "tokend dpop nonce v1", 32)
		if !containsKey(all, want) {
			t.Errorf("no nonce key derived from MAC key %s (%s)", k.ID, k.State)
		}
		if k.State == KeyCurrent && !bytes.Equal(current, want) {
			t.Errorf("the current nonce key is not the current MAC key %s's", k.ID)
		}
		if seal, _ := l.OpenKey(k.ID); containsKey(all, seal) {
			t.Errorf("MAC key %s's nonce key is its seal key", k.ID)
		}
	}

	// Another load of the same keyset, as on another instance or after a
	// restart, derives the same keys.
	again, err := loadedAt(1, ks, t0)
	if err != nil {
		t.Fatal(err)
	}
	current2, all2 := again.NonceKeys()
	if !bytes.Equal(current, current2) || len(all2) != len(all) {
		t.Fatal("two loads of one keyset have different nonce keys")
	}
	for _, k := range all2 {
		if !containsKey(all, k) {
			t.Fatal("two loads of one keyset have different nonce keys")
		}
	}

	// Past its expiry the retired key no longer verifies nonces.
	later, err := loadedAt(1, ks, t0.Add(testLife.mac()))
	if err != nil {
		t.Fatal(err)
	}
	if _, all := later.NonceKeys(); len(all) != len(later.Keys.MAC) || len(all) != 2 {
		t.Fatalf("%d nonce keys after the retired key expired, want 2", len(all))
	}
}

func TestNonceKeysAreTheSameOnEveryInstance(t *testing.T) {
	_, js := eventstest.MustJS(t)
	a, b := mustKeyring(t, js), mustKeyring(t, js)
	ca, _ := a.Loaded().NonceKeys()
	cb, _ := b.Loaded().NonceKeys()
	if len(ca) != 32 || !bytes.Equal(ca, cb) {
		t.Fatal("two instances of one keyset mint nonces with different keys")
	}
}

func TestFixedKeysHaveANonceKey(t *testing.T) {
	codec, err := NewKeyset(time.Now()).Codec()
	if err != nil {
		t.Fatal(err)
	}
	current, all := FixedKeys(codec).Loaded().NonceKeys()
	if len(current) != 32 || len(all) != 1 || !bytes.Equal(all[0], current) {
		t.Fatalf("fixed keys: nonce key of %d bytes, %d in all", len(current), len(all))
	}
}

func containsKey(keys [][]byte, k []byte) bool {
	for _, c := range keys {
		if bytes.Equal(c, k) {
			return true
		}
	}
	return false
}
