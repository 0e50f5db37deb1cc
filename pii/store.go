package pii

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/expirable"
	"github.com/nats-io/nats.go/jetstream"
)

// Bucket holds one wrapped data key per subject, for every instance.
const Bucket = "TOKENS_SUBJECT_KEYS"

// bucketSubject is the prefix of the subjects of Bucket's stream (the
// names nats.go gives a KV bucket's stream).
const bucketSubject = "$KV." + Bucket + "."

// DefaultCacheTTL is Config.CacheTTL's default.
const DefaultCacheTTL = 10 * time.Minute

// ErrNoKey reports a subject (or a key ref) without a data key: never
// created, or erased. What was sealed under an erased key is unreadable.
var ErrNoKey = errors.New("pii: no data key (erased or never created)")

// Config sizes a Store.
type Config struct {
	// Replicas of the bucket: those of the event stream.
	Replicas int
	// CacheSize bounds the data keys kept in memory.
	CacheSize int
	// CacheTTL bounds how long a data key stays in memory: an instance
	// that missed an erasure's marker (cut off from the server longer
	// than MarkerTTL) forgets the key after it all the same. Zero means
	// DefaultCacheTTL.
	CacheTTL time.Duration
	// MarkerTTL is how long an erasure's purge marker stays in the bucket:
	// every instance's watch must see it in that time to drop the key it
	// caches. The marker holds no secret, only the pseudonym (which every
	// event of the subject carries too). At least a second.
	MarkerTTL time.Duration
}

// Store keeps the subjects' data keys: in the bucket, wrapped by the KEK,
// and in a bounded cache on each instance.
type Store struct {
	keys      *Keys
	kv        jetstream.KeyValue
	stream    jetstream.Stream
	markerTTL time.Duration
	watcher   jetstream.KeyWatcher

	// mu orders cache additions with the watch's removals: a key read from
	// the bucket while an erasure was seen is not cached (see epoch).
	mu    sync.Mutex
	cache *expirable.LRU[string, DataKey] // by bucket key
	// epoch counts the deletes and purges seen; a read that started in an
	// older epoch may hold a key erased since, so it is not cached.
	epoch uint64
}

// OpenStore creates or opens the bucket and watches it until Stop.
//
// The bucket's stream is created here rather than by CreateKeyValue, to
// allow deleting messages (nats.go's buckets deny it, and a stream never
// allows it again once denied): an erasure overwrites the data key's
// message on disk (SecureDeleteMsg), where a KV purge alone only marks it
// deleted and leaves its bytes in the block file until compaction.
func OpenStore(ctx context.Context, js jetstream.JetStream, keys *Keys, cfg Config) (*Store, error) {
	if cfg.MarkerTTL < time.Second {
		return nil, fmt.Errorf("pii: MarkerTTL %v: at least a second", cfg.MarkerTTL)
	}
	stream, err := js.CreateOrUpdateStream(ctx, streamConfig(Bucket, "tokend data keys of the subjects' personal data, wrapped", cfg.Replicas))
	if err != nil {
		return nil, fmt.Errorf("kv %s: %w", Bucket, err)
	}
	kv, err := js.KeyValue(ctx, Bucket)
	if err != nil {
		return nil, fmt.Errorf("kv %s: %w", Bucket, err)
	}
	cache := expirable.NewLRU[string, DataKey](max(cfg.CacheSize, 1), nil, cmp.Or(cfg.CacheTTL, DefaultCacheTTL))
	s := &Store{keys: keys, kv: kv, stream: stream, markerTTL: cfg.MarkerTTL, cache: cache}
	// Only changes matter (the cache starts empty), and only their kind:
	// the wrapped keys need not travel to every watcher.
	s.watcher, err = kv.WatchAll(context.WithoutCancel(ctx), jetstream.UpdatesOnly(), jetstream.MetaOnly())
	if err != nil {
		return nil, fmt.Errorf("kv %s: watch: %w", Bucket, err)
	}
	go s.follow()
	return s, nil
}

// streamConfig is what CreateKeyValue would make of a bucket with History
// 1, except that messages may be deleted, and carry a TTL (the purge
// markers', the period keys').
func streamConfig(bucket, description string, replicas int) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:              "KV_" + bucket,
		Description:       description,
		Subjects:          []string{"$KV." + bucket + ".>"},
		MaxMsgsPerSubject: 1,
		MaxBytes:          -1,
		MaxMsgSize:        -1,
		MaxMsgs:           -1,
		MaxConsumers:      -1,
		Storage:           jetstream.FileStorage,
		Replicas:          max(replicas, 1),
		AllowRollup:       true,
		Duplicates:        2 * time.Minute,
		AllowDirect:       true,
		Discard:           jetstream.DiscardNew,
		AllowMsgTTL:       true,
	}
}

// follow drops a cached key the moment any instance deletes or purges it.
func (s *Store) follow() {
	for e := range s.watcher.Updates() {
		if e == nil || e.Operation() == jetstream.KeyValuePut {
			continue
		}
		s.mu.Lock()
		s.epoch++
		s.cache.Remove(e.Key())
		s.mu.Unlock()
	}
}

// Stop stops watching the bucket.
func (s *Store) Stop() { s.watcher.Stop() }

// Pseudonym returns the subject's pseudonym (Keys.Pseudonym).
func (s *Store) Pseudonym(subject string) string { return s.keys.Pseudonym(subject) }

// DataKey returns the data key of the subject whose pseudonym is given
// (Pseudonym). If it has none, create makes one (of two instances
// creating it at once, both get the one written first); otherwise it
// reports ErrNoKey.
func (s *Store) DataKey(ctx context.Context, pseudonym string, create bool) (DataKey, error) {
	key := bucketKey(pseudonym)
	if !validBucketKey(key) {
		return DataKey{}, fmt.Errorf("pii: %q is not a pseudonym", pseudonym)
	}
	// Three rounds: a create that lost the race reads the winner's key,
	// unless that was erased meanwhile; more means something is wrong.
	for range 3 {
		k, err := s.get(ctx, key)
		if !errors.Is(err, ErrNoKey) || !create {
			return k, err
		}
		if k, err := s.create(ctx, key); !errors.Is(err, jetstream.ErrKeyExists) {
			return k, err
		}
	}
	return DataKey{}, fmt.Errorf("kv %s: the subject's key keeps changing", Bucket)
}

// ShortRef is what of a subject key's ref (DataKey.Ref) an event needs to
// name it: the revision alone, the rest being the subject's pseudonym,
// which the event holds anyway. FullRef gives the ref back.
func ShortRef(ref string) string {
	_, rev, _ := strings.Cut(ref, ".")
	return rev
}

// FullRef is the ref of the key ShortRef shortened to short, of the
// subject with that pseudonym.
func FullRef(pseudonym, short string) string { return bucketKey(pseudonym) + "." + short }

// KeyFor returns the data key named by ref (DataKey.Ref, Sealed.K), or
// ErrNoKey if it was erased: what it sealed is then unreadable.
func (s *Store) KeyFor(ctx context.Context, ref string) (DataKey, error) {
	key, _, ok := strings.Cut(ref, ".")
	if !ok || !validBucketKey(key) {
		return DataKey{}, ErrNoKey
	}
	k, err := s.get(ctx, key)
	if err != nil {
		return DataKey{}, err
	}
	if k.Ref != ref { // the subject's key now is a newer one
		return DataKey{}, ErrNoKey
	}
	return k, nil
}

// get returns the data key under key, from the cache or the bucket.
func (s *Store) get(ctx context.Context, key string) (DataKey, error) {
	s.mu.Lock()
	k, ok := s.cache.Get(key)
	epoch := s.epoch
	s.mu.Unlock()
	if ok {
		return k, nil
	}
	e, err := s.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return DataKey{}, ErrNoKey
	}
	if err != nil {
		return DataKey{}, fmt.Errorf("kv %s: %w", Bucket, err)
	}
	if k, err = s.unwrap(key, e.Revision(), e.Value()); err != nil {
		return DataKey{}, err
	}
	s.remember(key, k, epoch)
	return k, nil
}

// create makes and stores a data key under key, or reports
// jetstream.ErrKeyExists if another one was stored first.
func (s *Store) create(ctx context.Context, key string) (DataKey, error) {
	s.mu.Lock()
	epoch := s.epoch
	s.mu.Unlock()
	secret, wrapped, err := s.keys.newWrappedKey(pseudonymPrefix + key)
	if err != nil {
		return DataKey{}, err
	}
	rev, err := s.kv.Create(ctx, key, wrapped)
	if errors.Is(err, jetstream.ErrKeyExists) {
		return DataKey{}, err
	}
	if err != nil {
		return DataKey{}, fmt.Errorf("kv %s: %w", Bucket, err)
	}
	k, err := dataKey(key, rev, secret)
	if err != nil {
		return DataKey{}, err
	}
	s.remember(key, k, epoch)
	return k, nil
}

// remember caches k unless a delete or purge was seen since epoch.
func (s *Store) remember(key string, k DataKey, epoch uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.epoch == epoch {
		s.cache.Add(key, k)
	}
}

// unwrap opens a wrapped data key read from the bucket.
func (s *Store) unwrap(key string, rev uint64, wrapped []byte) (DataKey, error) {
	secret, err := s.keys.unwrapKey(wrapped, pseudonymPrefix+key)
	if err != nil {
		// Most likely another deployment key than the one that wrapped it.
		return DataKey{}, fmt.Errorf("kv %s: entry %s cannot be unwrapped: is this the deployment key it was written with?", Bucket, key)
	}
	return dataKey(key, rev, secret)
}

func dataKey(key string, rev uint64, secret []byte) (DataKey, error) {
	aead, err := newAEAD(secret)
	if err != nil {
		return DataKey{}, err
	}
	return DataKey{Ref: key + "." + strconv.FormatUint(rev, 10), aead: aead}, nil
}

// Erase destroys the data key of the subject with that pseudonym on every instance; erasing a
// subject without a key does nothing. Its message in the bucket's stream
// is overwritten on disk first (a KV purge alone would leave its bytes in
// the block file), then a purge marker tells every instance's watch to
// drop the key; the server removes the marker after MarkerTTL. A crash in
// between leaves it retryable: the next Erase finds no key message and
// writes the marker.
//
// A key created for the subject between the two steps would be removed by
// the marker without being overwritten: the caller keeps the subject from
// being used while it erases it.
func (s *Store) Erase(ctx context.Context, pseudonym string) error {
	key := bucketKey(pseudonym)
	if !validBucketKey(key) {
		return fmt.Errorf("pii: %q is not a pseudonym", pseudonym)
	}
	for {
		msg, err := s.stream.GetLastMsgForSubject(ctx, bucketSubject+key)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			break
		}
		if err != nil {
			return fmt.Errorf("kv %s: %w", Bucket, err)
		}
		if msg.Header.Get("KV-Operation") != "" { // an earlier erasure's marker
			break
		}
		if err := secureDelete(ctx, s.stream, msg.Sequence); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
			return fmt.Errorf("kv %s: %w", Bucket, err)
		}
	}
	if err := s.kv.Purge(ctx, key, jetstream.PurgeTTL(s.markerTTL)); err != nil {
		return fmt.Errorf("kv %s: %w", Bucket, err)
	}
	// This instance forgets the key now, not when its watch catches up.
	s.mu.Lock()
	s.epoch++
	s.cache.Remove(key)
	s.mu.Unlock()
	return nil
}

// secureDelete overwrites message seq on disk (SecureDeleteMsg), or
// reports jetstream.ErrMsgNotFound if it is gone already. When another
// instance deleted it meanwhile the server answers with a deletion failure
// ("sequence not found" or "no message found"), which nats.go passes on as
// text only: whether the message is still there tells.
func secureDelete(ctx context.Context, stream jetstream.Stream, seq uint64) error {
	err := stream.SecureDeleteMsg(ctx, seq)
	if err == nil {
		return nil
	}
	if _, getErr := stream.GetMsg(ctx, seq); errors.Is(getErr, jetstream.ErrMsgNotFound) {
		return jetstream.ErrMsgNotFound
	}
	return err
}

// validBucketKey reports whether key could be a bucket key: a ref read
// from an event is input, and the KV API refuses keys it does not allow.
func validBucketKey(key string) bool {
	if key == "" {
		return false
	}
	for _, c := range key {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}
