package signals

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events"
	"github.com/tokend/tokend/events/eventstest"
	"github.com/tokend/tokend/pii"
)

// TestMapSubjectErased: an erasure becomes an account purged about the
// pseudonym, which only receivers of every event see.
func TestMapSubjectErased(t *testing.T) {
	m := Mapper{Issuer: issuer}
	ev := events.SubjectErasedEvent("p:Zm9vYmFyYmF6cXV4cXV1eA", "DSR-2026-17", "dpo", 2, at)
	data, _ := json.Marshal(ev)
	// subject.erased holds nothing sealed: no protector is needed to map it
	sigs, err := m.Message(t.Context(), events.Subjects{Prefix: "tokens"}, "tokens.ops.subject_erased", data)
	if err != nil || len(sigs) != 1 {
		t.Fatalf("%d signals, %v", len(sigs), err)
	}
	sig := sigs[0]
	want := AccountPurged{ReasonAdmin: en("Personal data erased at the data subject's request: DSR-2026-17"),
		EventTimestamp: at.Unix(), RevokedFamilies: 2}
	if sig.Type != TypeAccountPurged || !sig.Subject.Equal(Opaque(ev.Subject)) || sig.Txn != ev.ID || !sig.Time.Equal(at) ||
		!reflect.DeepEqual(sig.Event, want) {
		t.Fatalf("%+v", sig)
	}
	if sig.Visibility != (Visibility{}) {
		t.Fatalf("visibility %+v: only receivers of every event may see an erasure", sig.Visibility)
	}
	own := domain.Client{ID: "web-app", Type: domain.ClientConfidential, Receiver: domain.ReceiverOwn}
	all := domain.Client{ID: "siem", Type: domain.ClientConfidential, Receiver: domain.ReceiverAll}
	if Visible(own, sig) || !Visible(all, sig) {
		t.Fatal("an erasure is visible to a receiver of its own events, or hidden from one of all")
	}
}

// TestMapErasedSubjectOpaque: once a subject is erased, signals name the
// user by its pseudonym (opaque), never as an iss_sub of it.
func TestMapErasedSubjectOpaque(t *testing.T) {
	m := Mapper{Issuer: issuer}
	env := envelope(domain.FamilyRevoked, domain.ReasonSubjectErased)
	env.Subject, env.Erased = "p:Zm9vYmFyYmF6cXV4cXV1eA", true
	sigs := m.Family(env)
	if len(sigs) != 1 || !sigs[0].Subject.User.Equal(Opaque(env.Subject)) {
		t.Fatalf("signals of an erased family: %+v", sigs)
	}
	sigs = m.Deployment(events.SubjectRevokedEvent(env.Subject, domain.ReasonSubjectErased, 1, 9, at), true)
	if len(sigs) != 1 || !sigs[0].Subject.User.Equal(Opaque(env.Subject)) {
		t.Fatalf("signals of an erased subject's revocation: %+v", sigs)
	}
}

// sealedStream is a TOKENS stream whose events are sealed, as with
// --pii-key-file.
type sealedStream struct {
	t        *testing.T
	url      string
	js       jetstream.JetStream
	stream   jetstream.Stream
	subjects events.Subjects
	keys     *pii.Store
	store    *events.Store
}

const testDeploymentKey = "0123456789abcdef0123456789abcdef-signals-test"

func newSealedStream(t *testing.T) *sealedStream {
	t.Helper()
	url := eventstest.MustJetStream(t).ClientURL()
	nc := eventstest.MustConnect(t, url)
	js, _ := jetstream.New(nc)
	s := &sealedStream{t: t, url: url, js: js, subjects: events.Subjects{Prefix: "tokens"}}
	var err error
	if s.stream, err = events.Setup(t.Context(), js, s.subjects, events.StreamLimits{Replicas: 1}); err != nil {
		t.Fatal(err)
	}
	s.keys = s.openKeys(nc)
	s.store = events.NewStore(nc, js, s.stream, s.subjects)
	s.store.Protector = events.NewProtector(s.keys, nil)
	return s
}

// openKeys opens the subjects' data keys on nc, cache empty.
func (s *sealedStream) openKeys(nc *nats.Conn) *pii.Store {
	s.t.Helper()
	k, err := pii.NewKeys([]byte(testDeploymentKey))
	if err != nil {
		s.t.Fatal(err)
	}
	js, _ := jetstream.New(nc)
	keys, err := pii.OpenStore(s.t.Context(), js, k, pii.Config{Replicas: 1, CacheSize: 16, MarkerTTL: time.Second})
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(keys.Stop)
	return keys
}

// last is the last message stored on subject.
func (s *sealedStream) last(subject string) *jetstream.RawStreamMsg {
	s.t.Helper()
	m, err := s.stream.GetLastMsgForSubject(s.t.Context(), subject)
	if err != nil {
		s.t.Fatal(err)
	}
	return m
}

// appended stores env as a new family's first event and returns the
// stored message.
func (s *sealedStream) appended(env events.Envelope) *jetstream.RawStreamMsg {
	s.t.Helper()
	if _, err := s.store.Append(s.t.Context(), env.FamilyID, 0, []events.Envelope{env}); err != nil {
		s.t.Fatal(err)
	}
	return s.last(s.subjects.Family(env.FamilyID))
}

// TestMapSealedMessages: a sealed event maps to signals about the subject
// in clear, through the protector; without one it is unusable.
func TestMapSealedMessages(t *testing.T) {
	s := newSealedStream(t)
	ctx := t.Context()
	env := envelope(domain.FamilyRevoked, domain.ReasonRevoked)
	fam := s.appended(env)
	if strings.Contains(string(fam.Data), "user-42") {
		t.Fatalf("not sealed: %s", fam.Data)
	}
	if _, err := s.store.AppendDeployment(ctx, events.SubjectRevokedEvent("user-42", "user_disabled", 1, 1, at)); err != nil {
		t.Fatal(err)
	}
	ops := s.last("tokens.ops.subject_revoked")

	m := Mapper{Issuer: issuer, Protector: s.store.Protector}
	user := IssSub(issuer, "user-42")
	sigs, err := m.Message(ctx, s.subjects, fam.Subject, fam.Data)
	if err != nil || len(sigs) != 1 || !sigs[0].Subject.Equal(sessionOf("user-42", env.FamilyID, env.ClientID)) {
		t.Fatalf("a sealed family event: %+v, %v", sigs, err)
	}
	sigs, err = m.Message(ctx, s.subjects, ops.Subject, ops.Data)
	if err != nil || len(sigs) != 1 || !sigs[0].Subject.User.Equal(user) {
		t.Fatalf("a sealed subject.revoked: %+v, %v", sigs, err)
	}
	for _, msg := range []*jetstream.RawStreamMsg{fam, ops} {
		_, err := Mapper{Issuer: issuer}.Message(ctx, s.subjects, msg.Subject, msg.Data)
		if !errors.Is(err, events.ErrSealedWithoutKey) || !unusable(err) {
			t.Fatalf("%s without protection: %v (unusable %v)", msg.Subject, err, unusable(err))
		}
	}

	// Once erased, the subject is its pseudonym, opaque.
	pseudonym := s.store.Protector.Pseudonym("user-42")
	if err := s.keys.Erase(ctx, pseudonym); err != nil {
		t.Fatal(err)
	}
	sigs, err = m.Message(ctx, s.subjects, fam.Subject, fam.Data)
	if err != nil || len(sigs) != 1 || !sigs[0].Subject.User.Equal(Opaque(pseudonym)) {
		t.Fatalf("a sealed family event after the erasure: %+v, %v", sigs, err)
	}
	sigs, err = m.Message(ctx, s.subjects, ops.Subject, ops.Data)
	if err != nil || len(sigs) != 1 || !sigs[0].Subject.User.Equal(Opaque(pseudonym)) {
		t.Fatalf("a sealed subject.revoked after the erasure: %+v, %v", sigs, err)
	}
}

// TestRevealFailureTransientOrUnusable: a sealed event that cannot be
// opened now (the key bucket out of reach) waits for a retry; one that
// can never be opened (altered) is skipped.
func TestRevealFailureTransientOrUnusable(t *testing.T) {
	s := newSealedStream(t)
	ctx := t.Context()
	env := envelope(domain.FamilyRevoked, domain.ReasonRevoked)
	fam := s.appended(env)

	// An instance that has not cached the key, cut off from the bucket.
	nc := eventstest.MustConnect(t, s.url)
	cutOff := Mapper{Issuer: issuer, Protector: events.NewProtector(s.openKeys(nc), nil)}
	nc.Close()
	sigs, err := cutOff.Message(ctx, s.subjects, fam.Subject, fam.Data)
	if err == nil || unusable(err) {
		t.Fatalf("key bucket unreachable: %+v, %v (unusable %v), want an error to retry", sigs, err, unusable(err))
	}

	// An altered sealed part never opens.
	stored, err := events.Decode(fam.Data, env.FamilyID)
	if err != nil {
		t.Fatal(err)
	}
	sealed, err := pii.ParseSealed(stored.PII)
	if err != nil {
		t.Fatal(err)
	}
	sealed.C[0] ^= 1
	stored.PII = sealed.Text()
	altered, err := events.Encode(stored)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Mapper{Issuer: issuer, Protector: s.store.Protector}.Message(ctx, s.subjects, fam.Subject, altered)
	if !errors.Is(err, pii.ErrOpen) || !unusable(err) {
		t.Fatalf("an altered sealed part: %v (unusable %v), want pii.ErrOpen, unusable", err, unusable(err))
	}
}
