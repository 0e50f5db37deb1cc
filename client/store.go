package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// StoredToken is what a session keeps between refreshes: the family's
// current refresh token and what it takes to present it. Its String,
// GoString and LogValue leave the token out.
type StoredToken struct {
	RefreshToken string    `json:"refresh_token"`
	FamilyID     string    `json:"family_id"`
	ClientID     string    `json:"client_id"`
	ExpiresAt    time.Time `json:"expires_at"` // refresh_token_expires_at; zero if unknown
}

func (t StoredToken) String() string {
	return fmt.Sprintf("StoredToken{family %s, client %s, expires %s}", t.FamilyID, t.ClientID, t.ExpiresAt.Format(time.RFC3339))
}

// GoString keeps %#v from printing the token.
func (t StoredToken) GoString() string { return t.String() }

// LogValue keeps slog from printing the token.
func (t StoredToken) LogValue() slog.Value {
	return slog.GroupValue(slog.String("family_id", t.FamilyID), slog.String("client_id", t.ClientID),
		slog.Time("expires_at", t.ExpiresAt))
}

// Store keeps each session's current refresh token with a revision, so
// that replicas sharing a session never lose a rotation: every write is a
// compare-and-swap against the revision the writer loaded, so each stored
// token is the child of the one it replaced.
type Store interface {
	// Load returns the session's token and its revision, or ErrNoSession.
	Load(ctx context.Context, sessionID string) (StoredToken, uint64, error)
	// Save stores t if the session's revision is still rev (0: only if it
	// has no token) and returns the new revision; ErrConflict otherwise.
	Save(ctx context.Context, sessionID string, t StoredToken, rev uint64) (uint64, error)
	// Delete removes the session's token if its revision is still rev;
	// ErrConflict otherwise. Deleting a session that has none is no error.
	Delete(ctx context.Context, sessionID string, rev uint64) error
}

// MemoryStore is a Store for one process. The zero value is ready to use.
type MemoryStore struct {
	mu       sync.Mutex
	rev      uint64
	sessions map[string]memoryEntry
}

type memoryEntry struct {
	t   StoredToken
	rev uint64
}

// NewMemoryStore returns an empty MemoryStore.
func NewMemoryStore() *MemoryStore { return &MemoryStore{} }

// Load implements Store.
func (m *MemoryStore) Load(_ context.Context, sessionID string) (StoredToken, uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.sessions[sessionID]
	if !ok {
		return StoredToken{}, 0, ErrNoSession
	}
	return e.t, e.rev, nil
}

// Save implements Store.
func (m *MemoryStore) Save(_ context.Context, sessionID string, t StoredToken, rev uint64) (uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.sessions[sessionID].rev != rev {
		return 0, ErrConflict
	}
	if m.sessions == nil {
		m.sessions = map[string]memoryEntry{}
	}
	m.rev++
	m.sessions[sessionID] = memoryEntry{t: t, rev: m.rev}
	return m.rev, nil
}

// Delete implements Store.
func (m *MemoryStore) Delete(_ context.Context, sessionID string, rev uint64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.sessions[sessionID]
	if !ok {
		return nil
	}
	if e.rev != rev {
		return ErrConflict
	}
	delete(m.sessions, sessionID)
	return nil
}

// KVStore is a Store in a JetStream key-value bucket, shared by every
// replica of a service: the key is the session id (so it must be a valid
// KV key: letters, digits and -_=/.), the value the StoredToken as JSON,
// the revision the KV revision.
//
// The bucket holds live refresh tokens: protect it like a session store.
// Only the service's own NATS user may read or write it (deny everyone
// else $KV.<bucket>.> and the bucket's stream API), and on a shared NATS
// keep it in the service's account. Create it with History 1, so rotated
// tokens do not linger as old revisions, and with TTL (MaxAge) at most
// tokend's --refresh-idle-ttl, so abandoned sessions disappear with their
// families. The Source never logs a token.
type KVStore struct {
	kv jetstream.KeyValue
}

// NewKVStore returns a Store in kv.
func NewKVStore(kv jetstream.KeyValue) *KVStore { return &KVStore{kv: kv} }

// Load implements Store.
func (s *KVStore) Load(ctx context.Context, sessionID string) (StoredToken, uint64, error) {
	e, err := s.kv.Get(ctx, sessionID)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return StoredToken{}, 0, ErrNoSession
	}
	if err != nil {
		return StoredToken{}, 0, storeError(err)
	}
	var t StoredToken
	if err := json.Unmarshal(e.Value(), &t); err != nil {
		// Do not quote the value: it holds a token.
		return StoredToken{}, 0, fmt.Errorf("client: session store: malformed entry (revision %d)", e.Revision())
	}
	return t, e.Revision(), nil
}

// Save implements Store.
func (s *KVStore) Save(ctx context.Context, sessionID string, t StoredToken, rev uint64) (uint64, error) {
	data, err := json.Marshal(t)
	if err != nil {
		return 0, err
	}
	var newRev uint64
	if rev == 0 {
		newRev, err = s.kv.Create(ctx, sessionID, data)
	} else {
		newRev, err = s.kv.Update(ctx, sessionID, data, rev)
	}
	if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return 0, ErrConflict
	}
	if err != nil {
		return 0, storeError(err)
	}
	return newRev, nil
}

// Delete implements Store. It purges the key, so no earlier revision (an
// older token) stays behind.
func (s *KVStore) Delete(ctx context.Context, sessionID string, rev uint64) error {
	err := s.kv.Purge(ctx, sessionID, jetstream.LastRevision(rev))
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		if _, _, err := s.Load(ctx, sessionID); errors.Is(err, ErrNoSession) {
			return nil
		}
		return ErrConflict
	}
	if err != nil {
		return storeError(err)
	}
	return nil
}

// storeError marks a failure of the store as transient, keeping the cause
// for errors.Is (jetstream.ErrInvalidKey, nats.ErrTimeout, …).
func storeError(err error) error {
	if errors.Is(err, jetstream.ErrInvalidKey) {
		return fmt.Errorf("client: session store: %w", err)
	}
	return fmt.Errorf("%w: %w", ErrStoreUnavailable, err)
}
