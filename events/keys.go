package events

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokend/tokend/domain"
)

// keysetKey is the one entry of TOKENS_KEYS; a single entry makes "first
// instance creates, the others load" one atomic create.
const keysetKey = "keyset"

// Keyset is every key a deployment holds. The first key of each list is the
// current one; the rest are retired and kept for verification.
type Keyset struct {
	MAC     []MACKey     `json:"mac_keys"`
	Signing []SigningKey `json:"signing_keys"`
}

// MACKey is a refresh-token MAC key.
type MACKey struct {
	ID        string    `json:"kid"`
	Secret    []byte    `json:"secret"`
	CreatedAt time.Time `json:"created_at"`
}

// SigningKey is an Ed25519 access-token signing key, stored as its seed.
type SigningKey struct {
	ID        string    `json:"kid"`
	Seed      []byte    `json:"seed"`
	CreatedAt time.Time `json:"created_at"`
}

// Private returns the Ed25519 private key.
func (k SigningKey) Private() ed25519.PrivateKey { return ed25519.NewKeyFromSeed(k.Seed) }

// Codec returns a token codec minting with the current MAC key.
func (ks Keyset) Codec() (*domain.TokenCodec, error) {
	if len(ks.MAC) == 0 {
		return nil, errors.New("keyset has no MAC key")
	}
	keys := make([]domain.MACKey, len(ks.MAC))
	for i, k := range ks.MAC {
		keys[i] = domain.MACKey{ID: k.ID, Secret: k.Secret}
	}
	return domain.NewTokenCodec(keys[0], keys[1:]...)
}

// NewKeyset generates a fresh MAC key and signing key.
func NewKeyset(now time.Time) Keyset {
	return Keyset{
		MAC:     []MACKey{{ID: randomID(8), Secret: randomBytes(32), CreatedAt: now.UTC()}},
		Signing: []SigningKey{{ID: randomID(8), Seed: randomBytes(ed25519.SeedSize), CreatedAt: now.UTC()}},
	}
}

// LoadOrCreateKeys returns the deployment's keyset from TOKENS_KEYS, creating
// the bucket and the keys if this is the first instance to start.
func LoadOrCreateKeys(ctx context.Context, js jetstream.JetStream, replicas int) (Keyset, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      KeysBucket,
		Description: "tokend signing and MAC keys: the one secret of a deployment",
		History:     8,
		Storage:     jetstream.FileStorage,
		Replicas:    replicas,
	})
	if err != nil {
		return Keyset{}, fmt.Errorf("kv %s: %w", KeysBucket, err)
	}
	for range 3 {
		entry, err := kv.Get(ctx, keysetKey)
		if err == nil {
			var ks Keyset
			if err := json.Unmarshal(entry.Value(), &ks); err != nil || len(ks.MAC) == 0 || len(ks.Signing) == 0 {
				return Keyset{}, fmt.Errorf("kv %s: keyset is unreadable", KeysBucket)
			}
			return ks, nil
		}
		if !errors.Is(err, jetstream.ErrKeyNotFound) {
			return Keyset{}, fmt.Errorf("kv %s: %w", KeysBucket, err)
		}
		raw, _ := json.Marshal(NewKeyset(time.Now()))
		// Create fails if another instance won the race; the next Get loads its keys.
		if _, err := kv.Create(ctx, keysetKey, raw); err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
			return Keyset{}, fmt.Errorf("kv %s: %w", KeysBucket, err)
		}
	}
	return Keyset{}, fmt.Errorf("kv %s: keyset neither loadable nor creatable", KeysBucket)
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func randomID(n int) string { return domain.NewID(randomBytes(n)) }
