package pii

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokend/tokend/events/eventstest"
)

const markerTTL = time.Second

// testServer is one JetStream server that instances share.
type testServer struct {
	t        *testing.T
	url      string
	storeDir string
}

func newTestServer(t *testing.T) testServer {
	ns := eventstest.MustJetStream(t)
	return testServer{t: t, url: ns.ClientURL(), storeDir: ns.StoreDir()}
}

// open opens a store on its own connection, as an instance would.
func (ts testServer) open() *Store {
	t := ts.t
	t.Helper()
	js, err := jetstream.New(eventstest.MustConnect(t, ts.url))
	if err != nil {
		t.Fatal(err)
	}
	s, err := OpenStore(t.Context(), js, testKeys(t, deploymentKey), Config{Replicas: 1, CacheSize: 16, MarkerTTL: markerTTL})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	return s
}

// pseudonym is a subject's pseudonym under the test deployment key.
func pseudonym(t *testing.T, subject string) string {
	return testKeys(t, deploymentKey).Pseudonym(subject)
}

// sameKey reports whether a and b seal and open for each other.
func sameKey(a, b DataKey) error {
	s, err := Seal(a, "ev", "fam", []byte("x"))
	if err != nil {
		return err
	}
	_, err = Open(b, "ev", "fam", s)
	return err
}

// oneKeyForAll calls get(0..n-1) at once and fails unless every call
// got the same key; it returns them.
func oneKeyForAll(t *testing.T, n int, get func(i int) (DataKey, error)) []DataKey {
	t.Helper()
	keys := make([]DataKey, n)
	var wg sync.WaitGroup
	for i := range keys {
		wg.Go(func() {
			k, err := get(i)
			if err != nil {
				t.Error(err)
			}
			keys[i] = k
		})
	}
	wg.Wait()
	for i, k := range keys[1:] {
		if k.Ref != keys[0].Ref {
			t.Fatalf("caller %d got key %s, caller 0 %s", i+1, k.Ref, keys[0].Ref)
		}
		if err := sameKey(keys[0], k); err != nil {
			t.Fatalf("caller %d: %v", i+1, err)
		}
	}
	return keys
}

// TestConcurrentCreateOneKey: instances creating a subject's key at once
// all get the one key that was stored.
func TestConcurrentCreateOneKey(t *testing.T) {
	ts := newTestServer(t)
	stores := []*Store{ts.open(), ts.open()}
	const perStore = 8
	keys := oneKeyForAll(t, 2*perStore, func(i int) (DataKey, error) {
		return stores[i%2].DataKey(t.Context(), pseudonym(t, "alice"), true)
	})
	// Not only cached: read back from the bucket by a fresh store too.
	k, err := ts.open().KeyFor(t.Context(), keys[0].Ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := sameKey(keys[0], k); err != nil {
		t.Fatal(err)
	}
	if _, err := stores[0].DataKey(t.Context(), pseudonym(t, "bob"), false); !errors.Is(err, ErrNoKey) {
		t.Fatalf("subject without key, create=false: %v; want ErrNoKey", err)
	}
	// A ref comes from a stored event: one no key can have is no key.
	for _, ref := range []string{"", "x", "a*b.1", "a b.1", ">.1"} {
		if _, err := stores[0].KeyFor(t.Context(), ref); !errors.Is(err, ErrNoKey) {
			t.Errorf("ref %q: %v; want ErrNoKey", ref, err)
		}
	}
}

// TestEraseSeenByOtherInstance: an erasure on one instance makes another,
// which had the key cached, report it gone.
func TestEraseSeenByOtherInstance(t *testing.T) {
	ts := newTestServer(t)
	a, b := ts.open(), ts.open()
	k, err := a.DataKey(t.Context(), pseudonym(t, "alice"), true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.DataKey(t.Context(), pseudonym(t, "alice"), false); err != nil { // now cached on b
		t.Fatal(err)
	}
	if err := a.Erase(t.Context(), pseudonym(t, "alice")); err != nil {
		t.Fatal(err)
	}
	if _, err := a.DataKey(t.Context(), pseudonym(t, "alice"), false); !errors.Is(err, ErrNoKey) {
		t.Fatalf("on the erasing instance: %v; want ErrNoKey at once", err)
	}
	eventstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if _, err := b.DataKey(t.Context(), pseudonym(t, "alice"), false); !errors.Is(err, ErrNoKey) {
			return fmt.Errorf("other instance: %v; want ErrNoKey", err)
		}
		if _, err := b.KeyFor(t.Context(), k.Ref); !errors.Is(err, ErrNoKey) {
			return fmt.Errorf("other instance by ref: %v; want ErrNoKey", err)
		}
		return nil
	})
	// The subject seen again gets a new key; what the old one sealed stays
	// unreadable.
	k2, err := b.DataKey(t.Context(), pseudonym(t, "alice"), true)
	if err != nil {
		t.Fatal(err)
	}
	if k2.Ref == k.Ref || sameKey(k, k2) == nil {
		t.Fatalf("after erasure the subject got its old key back (%s)", k2.Ref)
	}
	if _, err := a.KeyFor(t.Context(), k.Ref); !errors.Is(err, ErrNoKey) {
		t.Fatalf("erased ref after a new key: %v; want ErrNoKey", err)
	}
}

// TestConcurrentErasures: instances erasing one subject at once all
// succeed (the server refuses to delete a message another one deleted
// first; that is not a failure of the erasure).
func TestConcurrentErasures(t *testing.T) {
	ts := newTestServer(t)
	a, b := ts.open(), ts.open()
	for range 3 {
		for _, subject := range []string{"bob", "alice", "carol"} {
			if _, err := a.DataKey(t.Context(), subject, true); err != nil {
				t.Fatal(err)
			}
		}
		var wg sync.WaitGroup
		for _, s := range []*Store{a, b, a, b} {
			wg.Go(func() {
				if err := s.Erase(t.Context(), "alice"); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
		if _, err := b.DataKey(t.Context(), "alice", false); !errors.Is(err, ErrNoKey) {
			t.Fatalf("after the erasures: %v; want ErrNoKey", err)
		}
	}
}

// TestKeyReadBeforeErasureNotCached: a key an instance read from the
// bucket just before another erased it is not cached once the instance saw
// the erasure (it would be served for as long as it stays cached).
func TestKeyReadBeforeErasureNotCached(t *testing.T) {
	ts := newTestServer(t)
	a, b := ts.open(), ts.open()
	k, err := a.DataKey(t.Context(), pseudonym(t, "alice"), true)
	if err != nil {
		t.Fatal(err)
	}
	b.mu.Lock()
	readStarted := b.epoch // b reads the key from the bucket now...
	b.mu.Unlock()
	if err := a.Erase(t.Context(), pseudonym(t, "alice")); err != nil {
		t.Fatal(err)
	}
	eventstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		b.mu.Lock()
		defer b.mu.Unlock()
		if b.epoch == readStarted {
			return errors.New("b's watch has not seen the erasure")
		}
		return nil
	})
	b.remember(bucketKey(b.Pseudonym("alice")), k, readStarted) // ...and gets it only now
	if got, err := b.DataKey(t.Context(), pseudonym(t, "alice"), false); !errors.Is(err, ErrNoKey) {
		t.Fatalf("after the erasure: key %s, %v; want ErrNoKey", got.Ref, err)
	}
}

// TestEraseLeavesNothingOnDisk: after an erasure no file of the server's
// store holds the wrapped key, and once the marker expired the bucket's
// stream holds no message on the subject's key at all.
func TestEraseLeavesNothingOnDisk(t *testing.T) {
	ts := newTestServer(t)
	s := ts.open()
	// Keys stored before and after alice's keep her message inside the
	// block, where a removal only marks it deleted.
	for _, subject := range []string{"bob", "alice", "carol"} {
		if _, err := s.DataKey(t.Context(), s.Pseudonym(subject), true); err != nil {
			t.Fatal(err)
		}
	}
	key := bucketKey(s.Pseudonym("alice"))
	e, err := s.kv.Get(t.Context(), key)
	if err != nil {
		t.Fatal(err)
	}
	wrapped := e.Value()
	// The check below could not fail if the key never reached the disk.
	eventstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if filesHolding(t, ts.storeDir, wrapped) == 0 {
			return errors.New("the wrapped key is in no file of the store yet")
		}
		return nil
	})

	for range 2 { // idempotent
		if err := s.Erase(t.Context(), pseudonym(t, "alice")); err != nil {
			t.Fatal(err)
		}
	}
	// At once: the server overwrites the message before it answers.
	if n := filesHolding(t, ts.storeDir, wrapped); n > 0 {
		t.Fatalf("%d files of the store still hold the wrapped key", n)
	}
	subject := bucketSubject + key
	msg, err := s.stream.GetLastMsgForSubject(t.Context(), subject)
	if err != nil {
		t.Fatal(err)
	}
	if op := msg.Header.Get("KV-Operation"); op != "PURGE" || len(msg.Data) != 0 {
		t.Fatalf("after erasure the key's message is %q with %d bytes; want the purge marker", op, len(msg.Data))
	}
	eventstest.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		_, err := s.stream.GetLastMsgForSubject(t.Context(), subject)
		if !errors.Is(err, jetstream.ErrMsgNotFound) {
			return fmt.Errorf("message on %s: %v; want none once the marker expired", subject, err)
		}
		return nil
	})
	info, err := s.stream.Info(t.Context(), jetstream.WithSubjectFilter(subject))
	if err != nil {
		t.Fatal(err)
	}
	if n := info.State.Subjects[subject]; n != 0 {
		t.Fatalf("stream info: %d messages on %s", n, subject)
	}
	// Erasing a subject that never had a key is fine too.
	if err := s.Erase(t.Context(), pseudonym(t, "dave")); err != nil {
		t.Fatal(err)
	}
}

// filesHolding counts the files under dir that contain b.
func filesHolding(t *testing.T, dir string, b []byte) int {
	t.Helper()
	n := 0
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(path)
		if errors.Is(err, fs.ErrNotExist) { // replaced while walking
			return nil
		}
		if bytes.Contains(data, b) {
			n++
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}
