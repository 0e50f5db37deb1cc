package events

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"maps"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/pii"
)

// testDeploymentKey stands for the file of --pii-key-file.
const testDeploymentKey = "0123456789abcdef0123456789abcdef-events-test"

// protected is a TOKENS stream with the subjects' key bucket beside it,
// as a deployment with --pii-key-file has them.
type protected struct {
	t      *testing.T
	fx     *fixture
	nc     *nats.Conn
	js     jetstream.JetStream
	stream jetstream.Stream
	keys   *pii.Store
	// store seals what it appends and opens what it loads; clear is a
	// store of the same stream without protection.
	store, clear *Store
}

func newProtected(t *testing.T) *protected {
	t.Helper()
	nc, js, stream := MustJetStream(t)
	p := &protected{t: t, fx: newFixture(t), nc: nc, js: js, stream: stream, keys: openKeyStore(t, js)}
	p.store = NewStore(nc, js, stream, testSubjects)
	p.store.Protector = NewProtector(p.keys, nil)
	p.clear = NewStore(nc, js, stream, testSubjects)
	return p
}

// openKeyStore opens the subjects' data keys on js under the test
// deployment key, as an instance started with --pii-key-file does.
func openKeyStore(t *testing.T, js jetstream.JetStream) *pii.Store {
	t.Helper()
	k, err := pii.NewKeys([]byte(testDeploymentKey))
	if err != nil {
		t.Fatal(err)
	}
	s, err := pii.OpenStore(t.Context(), js, k, pii.Config{Replicas: 1, CacheSize: 16, MarkerTTL: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	return s
}

// handle runs cmd on the family through w, as the command service does.
func (p *protected) handle(w *Writer, family string, cmd any) Decision {
	p.t.Helper()
	d, err := w.Handle(p.t.Context(), family, func(f domain.Family) ([]domain.Event, error) {
		return p.fx.decider.Decide(f, cmd)
	})
	if err != nil && len(d.Events) == 0 {
		p.t.Fatalf("%T: %v", cmd, err)
	}
	p.fx.now = p.fx.now.Add(time.Second)
	return d
}

func (p *protected) issue(w *Writer, family, subject string, c domain.Context) Decision {
	p.t.Helper()
	return p.handle(w, family, domain.Issue{Token: p.fx.mint(family, 1), Subject: subject, ClientID: "web-app", Context: c})
}

// raw is the stored message at seq.
func (p *protected) raw(seq uint64) []byte {
	p.t.Helper()
	m, err := p.stream.GetMsg(p.t.Context(), seq)
	if err != nil {
		p.t.Fatal(err)
	}
	return m.Data
}

// stored is the event at seq as stored: sealed, if it was.
func (p *protected) stored(family string, seq uint64) Envelope {
	p.t.Helper()
	env, err := Decode(p.raw(seq), family)
	if err != nil {
		p.t.Fatal(err)
	}
	return env
}

// revealed is the family's last event as the writer of store reads it.
func (p *protected) revealed(store *Store, family string) Envelope {
	p.t.Helper()
	env, _, err := store.last(p.t.Context(), family, false)
	if err != nil {
		p.t.Fatal(err)
	}
	return env
}

// wantErased checks that the event at seq was stored erased: the
// pseudonym, a sealed part without key or ciphertext, no context.
func (p *protected) wantErased(family string, seq uint64, pseudonym string, personal ...string) {
	p.t.Helper()
	raw := p.raw(seq)
	env := p.stored(family, seq)
	if env.Subject != pseudonym || !isErasedPart(env.PII) || env.Context != nil {
		p.t.Fatalf("event %s after the erasure is stored as %s", env.Type, raw)
	}
	for _, s := range personal {
		if bytes.Contains(raw, []byte(s)) {
			p.t.Fatalf("event %s after the erasure holds %q: %s", env.Type, s, raw)
		}
	}
}

// isErasedPart reports whether s is the sealed part of an event written
// after its subject was erased: a version, nothing sealed, no key.
func isErasedPart(stored string) bool {
	s, err := pii.ParseSealed(stored)
	return err == nil && s.V == pii.SealedVersion && s.K == "" && s.N == nil && s.C == nil
}

// wantNoKey checks that the subject has no data key.
func (p *protected) wantNoKey(pseudonym string) {
	p.t.Helper()
	if _, err := p.keys.DataKey(p.t.Context(), pseudonym, false); !errors.Is(err, pii.ErrNoKey) {
		p.t.Fatalf("the erased subject's key: %v, want ErrNoKey (created again)", err)
	}
}

var (
	aliceCtx  = domain.Context{"ip": "203.0.113.9", "user_agent": "Mozilla/5.0 (alice-test)"}
	aliceCtx2 = domain.Context{"ip": "198.51.100.44", "user_agent": "curl/8.1 (alice-test)"}
	alicePII  = []string{"alice@example.com", "203.0.113.9", "Mozilla/5.0", "198.51.100.44", "curl/8.1"}
)

// TestProtectorSealsPersonalFields: with protection, a family's events are
// stored under the subject's pseudonym with subject and context sealed,
// and read back in clear.
func TestProtectorSealsPersonalFields(t *testing.T) {
	p := newProtected(t)
	w := NewWriter(p.store, 16)
	pseudonym := p.store.Protector.Pseudonym("alice@example.com")

	// when: a family is issued and rotated
	issued := p.issue(w, "fam-a", "alice@example.com", aliceCtx)
	rotated := p.handle(w, "fam-a", domain.Refresh{Presented: p.fx.mint("fam-a", 1), ClientID: "web-app",
		Child: p.fx.mint("fam-a", 2), Context: aliceCtx2})

	// then: no personal byte is stored, the subject is its pseudonym
	var refs []string
	for _, seq := range []uint64{issued.Seq, rotated.Seq} {
		raw := p.raw(seq)
		for _, s := range alicePII {
			if bytes.Contains(raw, []byte(s)) {
				t.Fatalf("a stored event holds %q: %s", s, raw)
			}
		}
		env := p.stored("fam-a", seq)
		if env.Subject != pseudonym || env.Context != nil || env.PII == "" || sealedPart(t, env.PII).K == "" || len(sealedPart(t, env.PII).C) == 0 {
			t.Fatalf("stored event %s", raw)
		}
		refs = append(refs, sealedPart(t, env.PII).K)
	}
	if refs[0] != refs[1] {
		t.Fatalf("one subject's events sealed under %v", refs)
	}
	// and: reading reveals them, to a store with the same deployment key
	f, seq, err := p.store.Load(t.Context(), "fam-a")
	if err != nil || f.Subject != "alice@example.com" || seq != rotated.Seq {
		t.Fatalf("load: %+v at %d, %v", f, seq, err)
	}
	if env := p.revealed(p.store, "fam-a"); env.Subject != "alice@example.com" || !maps.Equal(env.Context, aliceCtx2) || env.Erased {
		t.Fatalf("revealed %+v", env)
	}
	// A cold writer on a store of its own reads the family in clear too.
	other := NewStore(p.nc, p.js, p.stream, testSubjects)
	other.Protector = NewProtector(openKeyStore(t, p.js), nil)
	if f, _, err := other.Load(t.Context(), "fam-a"); err != nil || f.Subject != "alice@example.com" {
		t.Fatalf("another instance loads %+v, %v", f, err)
	}
}

// TestErasedSubjectStaysErased: once the subject's key is erased, the
// family reads as erased, and its next events are stored erased without
// creating the key again, whether the writer had the family cached
// (with the clear subject) or not.
func TestErasedSubjectStaysErased(t *testing.T) {
	p := newProtected(t)
	pseudonym := p.store.Protector.Pseudonym("alice@example.com")
	warm := NewWriter(p.store, 16)
	// given: two families of alice, both in warm's cache
	p.issue(warm, "fam-cold", "alice@example.com", aliceCtx)
	p.issue(warm, "fam-warm", "alice@example.com", aliceCtx)
	// and: alice's key erased
	if err := p.keys.Erase(t.Context(), pseudonym); err != nil {
		t.Fatal(err)
	}

	// then: a writer that did not cache the family reads it erased
	cold := NewWriter(p.store, 16)
	l, err := cold.load(t.Context(), "fam-cold", false)
	if err != nil || l.family.Subject != pseudonym || !l.family.SubjectErased {
		t.Fatalf("cold load after the erasure: %+v, %v", l.family, err)
	}
	if env := p.revealed(p.store, "fam-cold"); !env.Erased || env.Subject != pseudonym || env.Context != nil {
		t.Fatalf("revealed after the erasure: %+v", env)
	}
	// when: it revokes the family, then a token of it is presented
	revoked := p.handle(cold, "fam-cold", domain.Revoke{Reason: domain.ReasonSubjectErased, Context: aliceCtx2})
	rejected := p.handle(cold, "fam-cold", domain.Refresh{Presented: p.fx.mint("fam-cold", 1), ClientID: "web-app",
		Child: p.fx.mint("fam-cold", 2), Context: aliceCtx2})
	if len(revoked.Events) != 1 || len(rejected.Events) != 1 || rejected.Events[0].Type != domain.RefreshRejected {
		t.Fatalf("events %+v then %+v", revoked.Events, rejected.Events)
	}
	// then: both are stored erased, and the key stays gone
	p.wantErased("fam-cold", revoked.Seq, pseudonym, alicePII...)
	p.wantErased("fam-cold", rejected.Seq, pseudonym, alicePII...)
	p.wantNoKey(pseudonym)

	// when: the warm writer, which cached the clear subject before the
	// erasure, revokes its family and then sees its token again
	revoked = p.handle(warm, "fam-warm", domain.Revoke{Reason: domain.ReasonSubjectErased, Context: aliceCtx2})
	rejected = p.handle(warm, "fam-warm", domain.Refresh{Presented: p.fx.mint("fam-warm", 1), ClientID: "web-app",
		Child: p.fx.mint("fam-warm", 2), Context: aliceCtx2})
	// then: the same
	p.wantErased("fam-warm", revoked.Seq, pseudonym, alicePII...)
	p.wantErased("fam-warm", rejected.Seq, pseudonym, alicePII...)
	p.wantNoKey(pseudonym)
	if l, _ := warm.cache.Get("fam-warm"); l.family.Subject != pseudonym || !l.family.SubjectErased {
		t.Fatalf("the warm writer still caches %q (origin %d)", l.family.Subject, l.origin)
	}
}

// TestLegacyFamilyComesUnderProtection: a family written in clear, before
// protection was on, stays readable; its next event creates the subject's
// key and is sealed, under the key the subject's new families get too.
func TestLegacyFamilyComesUnderProtection(t *testing.T) {
	p := newProtected(t)
	pseudonym := p.store.Protector.Pseudonym("alice@example.com")
	// given: a family issued by a store without protection
	legacy := p.issue(NewWriter(p.clear, 16), "fam-old", "alice@example.com", aliceCtx)
	if env := p.stored("fam-old", legacy.Seq); env.Subject != "alice@example.com" || env.PII != "" {
		t.Fatalf("the legacy event is stored as %s", p.raw(legacy.Seq))
	}

	// then: a protected store reads it
	w := NewWriter(p.store, 16)
	if f, _, err := p.store.Load(t.Context(), "fam-old"); err != nil || f.Subject != "alice@example.com" {
		t.Fatalf("load of a legacy family: %+v, %v", f, err)
	}
	if env := p.revealed(p.store, "fam-old"); env.Subject != "alice@example.com" || !maps.Equal(env.Context, aliceCtx) || env.Erased {
		t.Fatalf("legacy event revealed as %+v", env)
	}
	if _, err := p.keys.DataKey(t.Context(), pseudonym, false); !errors.Is(err, pii.ErrNoKey) {
		t.Fatalf("reading a legacy family made a key: %v", err)
	}

	// when: the protected writer rotates it
	rotated := p.handle(w, "fam-old", domain.Refresh{Presented: p.fx.mint("fam-old", 1), ClientID: "web-app",
		Child: p.fx.mint("fam-old", 2), Context: aliceCtx2})
	// then: the rotation is sealed under a key made for alice
	env := p.stored("fam-old", rotated.Seq)
	key, err := p.keys.DataKey(t.Context(), pseudonym, false)
	if err != nil || env.Subject != pseudonym || env.PII == "" || pii.FullRef(env.Subject, sealedPart(t, env.PII).K) != key.Ref {
		t.Fatalf("rotation of a legacy family stored as %s (alice's key %q, %v)", p.raw(rotated.Seq), key.Ref, err)
	}
	if env := p.revealed(p.store, "fam-old"); env.Subject != "alice@example.com" || !maps.Equal(env.Context, aliceCtx2) {
		t.Fatalf("revealed %+v", env)
	}

	// when: a family of alice is issued under protection
	fresh := p.issue(w, "fam-new", "alice@example.com", aliceCtx)
	// then: it shares the key
	if env := p.stored("fam-new", fresh.Seq); env.PII == "" || pii.FullRef(env.Subject, sealedPart(t, env.PII).K) != key.Ref {
		t.Fatalf("alice's new family sealed as %s, want under %s", p.raw(fresh.Seq), key.Ref)
	}
}

// TestSealedPartBoundToItsEvent: a sealed part copied into another event
// does not open there.
func TestSealedPartBoundToItsEvent(t *testing.T) {
	p := newProtected(t)
	w := NewWriter(p.store, 16)
	issued := p.issue(w, "fam-a", "alice@example.com", aliceCtx)
	revoked := p.handle(w, "fam-a", domain.Revoke{Reason: "user_disabled"})
	first := p.stored("fam-a", issued.Seq)
	moved := p.stored("fam-a", revoked.Seq)
	if err := p.store.Protector.Reveal(t.Context(), &moved); err != nil {
		t.Fatalf("the event's own sealed part: %v", err)
	}

	// when: the revocation carries the issue's sealed part
	moved = p.stored("fam-a", revoked.Seq)
	moved.PII = first.PII
	// then: it does not open, by the protector nor by a load
	if err := p.store.Protector.Reveal(t.Context(), &moved); !errors.Is(err, pii.ErrOpen) {
		t.Fatalf("a sealed part moved into another event: %v, want pii.ErrOpen", err)
	}
	data, err := Encode(moved)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.js.Publish(t.Context(), testSubjects.Family("fam-a"), data); err != nil {
		t.Fatal(err)
	}
	if _, _, err := p.store.Load(t.Context(), "fam-a"); !errors.Is(err, pii.ErrOpen) {
		t.Fatalf("load of an event with a moved sealed part: %v, want pii.ErrOpen", err)
	}
}

// TestSealedEventWithoutProtector: an instance without the deployment key
// cannot tell whose a sealed family is, and refuses to load it.
func TestSealedEventWithoutProtector(t *testing.T) {
	p := newProtected(t)
	p.issue(NewWriter(p.store, 16), "fam-a", "alice@example.com", aliceCtx)
	if _, _, err := p.clear.Load(t.Context(), "fam-a"); !errors.Is(err, ErrSealedWithoutKey) {
		t.Fatalf("load of a sealed event without protection: %v, want ErrSealedWithoutKey", err)
	}
	_, err := NewWriter(p.clear, 16).Handle(t.Context(), "fam-a", func(f domain.Family) ([]domain.Event, error) {
		t.Fatal("decided on a family it cannot read")
		return nil, nil
	})
	if !errors.Is(err, ErrSealedWithoutKey) {
		t.Fatalf("a command on a sealed family without protection: %v", err)
	}
}

// TestSubjectRevokedSealed: subject.revoked names the subject by its
// pseudonym, also in its id, with the subject sealed under its key.
func TestSubjectRevokedSealed(t *testing.T) {
	p := newProtected(t)
	pseudonym := p.store.Protector.Pseudonym("alice@example.com")
	issued := p.issue(NewWriter(p.store, 16), "fam-a", "alice@example.com", aliceCtx)
	at := p.fx.now
	read := func(seq uint64) (DeploymentEvent, []byte) {
		t.Helper()
		m, err := p.stream.GetMsg(t.Context(), seq)
		if err != nil {
			t.Fatal(err)
		}
		ev, err := DecodeDeployment(m.Data, testSubjects.OpsKindOf(m.Subject))
		if err != nil {
			t.Fatal(err)
		}
		if m.Header.Get(jetstream.MsgIDHeader) != ev.ID {
			t.Fatalf("stored with message id %q, event id %q", m.Header.Get(jetstream.MsgIDHeader), ev.ID)
		}
		return ev, m.Data
	}

	// when: alice's families are revoked
	seq, err := p.store.AppendDeployment(t.Context(), SubjectRevokedEvent("alice@example.com", "user_disabled", 1, issued.Seq, at))
	if err != nil {
		t.Fatal(err)
	}
	// then: the event names her pseudonym only, and its id comes from it
	ev, raw := read(seq)
	if bytes.Contains(raw, []byte("alice@example.com")) || ev.Subject != pseudonym || ev.PII == "" || sealedPart(t, ev.PII).K == "" {
		t.Fatalf("stored %s", raw)
	}
	if want := SubjectRevokedEvent(pseudonym, "user_disabled", 1, issued.Seq, at).ID; ev.ID != want ||
		ev.ID == SubjectRevokedEvent("alice@example.com", "user_disabled", 1, issued.Seq, at).ID {
		t.Fatalf("id %s, want the pseudonym's %s", ev.ID, want)
	}
	if erased, err := p.store.Protector.RevealDeployment(t.Context(), &ev); err != nil || erased || ev.Subject != "alice@example.com" {
		t.Fatalf("revealed %q, erased %v, %v", ev.Subject, erased, err)
	}

	// when: her key is erased
	if err := p.keys.Erase(t.Context(), pseudonym); err != nil {
		t.Fatal(err)
	}
	// then: the event reads erased
	ev, _ = read(seq)
	if erased, err := p.store.Protector.RevealDeployment(t.Context(), &ev); err != nil || !erased || ev.Subject != pseudonym {
		t.Fatalf("after the erasure: %q, erased %v, %v", ev.Subject, erased, err)
	}
	// and: a revoke of the erased subject records her pseudonym alone,
	// without making her a key again
	seq, err = p.store.AppendDeployment(t.Context(), SubjectRevokedEvent("alice@example.com", "again", 0, issued.Seq, at))
	if err != nil {
		t.Fatal(err)
	}
	ev, raw = read(seq)
	if ev.Subject != pseudonym || !isErasedPart(ev.PII) || bytes.Contains(raw, []byte("alice@example.com")) {
		t.Fatalf("revoke of an erased subject stored as %s", raw)
	}
	p.wantNoKey(pseudonym)
	if erased, err := p.store.Protector.RevealDeployment(t.Context(), &ev); err != nil || !erased {
		t.Fatalf("revoke of an erased subject: erased %v, %v", erased, err)
	}
}

// The subject.erased event holds the pseudonym only, whatever the store.
func TestSubjectErasedEventHoldsNoPersonalData(t *testing.T) {
	p := newProtected(t)
	pseudonym := p.store.Protector.Pseudonym("alice@example.com")
	seq, err := p.store.AppendDeployment(context.Background(), SubjectErasedEvent(pseudonym, "DSR-1", "dpo", 2, p.fx.now))
	if err != nil {
		t.Fatal(err)
	}
	m, err := p.stream.GetMsg(t.Context(), seq)
	if err != nil {
		t.Fatal(err)
	}
	var stored map[string]any
	if err := json.Unmarshal(m.Data, &stored); err != nil {
		t.Fatal(err)
	}
	if m.Subject != "tokens.ops.subject_erased" || stored["subject"] != pseudonym || stored["pii"] != nil ||
		bytes.Contains(m.Data, []byte("alice")) {
		t.Fatalf("stored on %s: %s", m.Subject, m.Data)
	}
}

// sealedPart parses a stored sealed part.
func sealedPart(t *testing.T, stored string) pii.Sealed {
	t.Helper()
	s, err := pii.ParseSealed(stored)
	if err != nil {
		t.Fatalf("sealed part %s: %v", stored, err)
	}
	return s
}
