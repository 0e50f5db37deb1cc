package revoking

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokend/tokend/events/eventstest"
	"github.com/tokend/tokend/pii"
)

// plainMarker is the bucket key a subject's marker had without SubjectName:
// a plain hash of the subject, which anyone can compute from a guess.
func plainMarker(subject string) string {
	sum := sha256.Sum256([]byte(subject))
	return "s_" + hex.EncodeToString(sum[:16])
}

// TestSubjectMarkerNamedByPseudonym: with personal data protection, a
// subject's marker blocks issues of the subject in clear on every
// instance, and its bucket key is derived from the pseudonym, not from
// the subject.
func TestSubjectMarkerNamedByPseudonym(t *testing.T) {
	url := eventstest.MustJetStream(t).ClientURL()
	k, err := pii.NewKeys([]byte("0123456789abcdef0123456789abcdef-revoking"))
	if err != nil {
		t.Fatal(err)
	}
	open := func() *Revoking {
		t.Helper()
		js, _ := jetstream.New(eventstest.MustConnect(t, url))
		r, err := Open(t.Context(), js, 1)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(r.Stop)
		r.SubjectName = k.Pseudonym
		return r
	}
	a, b := open(), open()

	end, err := a.Begin(t.Context(), "alice@example.com", "")
	if err != nil {
		t.Fatal(err)
	}
	if !a.Blocks("alice@example.com", "web-app") || a.Blocks("bob@example.com", "web-app") {
		t.Fatal("the marker does not block alice alone")
	}
	eventstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if !b.Blocks("alice@example.com", "web-app") {
			return fmt.Errorf("the other instance does not see the marker")
		}
		return nil
	})

	js, _ := jetstream.New(eventstest.MustConnect(t, url))
	kv, err := js.KeyValue(t.Context(), Bucket)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := kv.Keys(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if want := plainMarker(k.Pseudonym("alice@example.com")); !slices.Equal(keys, []string{want}) {
		t.Fatalf("bucket keys %v, want %s (the pseudonym's); a plain hash of alice is %s", keys, want, plainMarker("alice@example.com"))
	}

	end()
	eventstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if a.Blocks("alice@example.com", "web-app") || b.Blocks("alice@example.com", "web-app") {
			return fmt.Errorf("the marker still blocks after its end")
		}
		return nil
	})
}
