package client_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokend/tokend/client"
	"github.com/tokend/tokend/events/eventstest"
)

// kvStore returns a KVStore in a new bucket of an in-process JetStream
// server, keeping history so that tests can read every revision.
func kvStore(t *testing.T, url string) (*client.KVStore, jetstream.KeyValue) {
	t.Helper()
	js, err := jetstream.New(eventstest.MustConnect(t, url))
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx(t), jetstream.KeyValueConfig{Bucket: "SESSIONS", History: 64})
	if err != nil {
		t.Fatal(err)
	}
	return client.NewKVStore(kv), kv
}

// TestStoreCompareAndSwap: both stores accept a write only against the
// revision it was loaded at.
func TestStoreCompareAndSwap(t *testing.T) {
	kv, _ := kvStore(t, eventstest.MustJetStream(t).ClientURL())
	for name, store := range map[string]client.Store{"memory": client.NewMemoryStore(), "kv": kv} {
		t.Run(name, func(t *testing.T) {
			c := ctx(t)
			if _, _, err := store.Load(c, "s1"); !errors.Is(err, client.ErrNoSession) {
				t.Fatalf("Load of nothing: %v", err)
			}
			t1 := client.StoredToken{RefreshToken: "rt-1", FamilyID: "fam", ClientID: "web", ExpiresAt: time.Unix(1800000000, 0).UTC()}
			rev1, err := store.Save(c, "s1", t1, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := store.Save(c, "s1", t1, 0); !errors.Is(err, client.ErrConflict) {
				t.Fatalf("second create: %v", err)
			}
			got, rev, err := store.Load(c, "s1")
			if err != nil || rev != rev1 || got != t1 {
				t.Fatalf("Load = %v, %d, %v", got, rev, err)
			}
			t2 := t1
			t2.RefreshToken = "rt-2"
			rev2, err := store.Save(c, "s1", t2, rev1)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := store.Save(c, "s1", t1, rev1); !errors.Is(err, client.ErrConflict) {
				t.Fatalf("stale update: %v", err)
			}
			if err := store.Delete(c, "s1", rev1); !errors.Is(err, client.ErrConflict) {
				t.Fatalf("stale delete: %v", err)
			}
			if err := store.Delete(c, "s1", rev2); err != nil {
				t.Fatal(err)
			}
			if _, _, err := store.Load(c, "s1"); !errors.Is(err, client.ErrNoSession) {
				t.Fatalf("Load after delete: %v", err)
			}
			if err := store.Delete(c, "s1", rev2); err != nil {
				t.Fatalf("deleting nothing: %v", err)
			}
			if _, err := store.Save(c, "s1", t1, 0); err != nil {
				t.Fatalf("create after delete: %v", err)
			}
		})
	}
}

// TestKVStoreDeletePurgesHistory: ending a session leaves no older token
// behind in the bucket's history.
func TestKVStoreDeletePurgesHistory(t *testing.T) {
	store, kv := kvStore(t, eventstest.MustJetStream(t).ClientURL())
	c := ctx(t)
	rev, err := store.Save(c, "s1", client.StoredToken{RefreshToken: "rt-1"}, 0)
	if err == nil {
		rev, err = store.Save(c, "s1", client.StoredToken{RefreshToken: "rt-2"}, rev)
	}
	if err == nil {
		err = store.Delete(c, "s1", rev)
	}
	if err != nil {
		t.Fatal(err)
	}
	hist, err := kv.History(c, "s1")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range hist {
		if strings.Contains(string(e.Value()), "rt-") {
			t.Fatalf("revision %d still holds a token", e.Revision())
		}
	}
}

// TestKVStoreUnavailableIsTransient: a store that cannot be reached is a
// transient failure, never the end of a session.
func TestKVStoreUnavailableIsTransient(t *testing.T) {
	ns := eventstest.MustJetStream(t)
	store, _ := kvStore(t, ns.ClientURL())
	ns.Shutdown()
	ns.WaitForShutdown()
	c, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	_, _, err := store.Load(c, "s1")
	if !client.Transient(err) || client.Terminal(err) || !errors.Is(err, client.ErrStoreUnavailable) {
		t.Fatalf("Load with the server down: %v", err)
	}
}
