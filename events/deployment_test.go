package events

import (
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokend/tokend/domain"
)

func TestDeploymentEventsRoundTrip(t *testing.T) {
	at := time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		ev      DeploymentEvent
		subject string
	}{
		{SubjectRevokedEvent("user-42", "user_disabled", 3, 1240, at), "tokens.ops.subject_revoked"},
		{ClientRevokedEvent("web-app", "revoked", 0, 7, at), "tokens.ops.client_revoked"},
		{KeyRevokedEvent("k-1", "signing", "leaked", "alice", 12, at), "tokens.ops.key_revoked"},
		{VerificationEvent("0123456789abcdef0123456789abcdef", "st", at), "tokens.ssf.0123456789abcdef0123456789abcdef"},
		{StreamUpdatedEvent("0123456789abcdef0123456789abcdef", "paused", "maintenance", 4, at), "tokens.ssf.0123456789abcdef0123456789abcdef"},
	} {
		if got := testSubjects.Deployment(tc.ev); got != tc.subject {
			t.Errorf("%s is stored on %s, want %s", tc.ev.Type, got, tc.subject)
		}
		data, err := json.Marshal(tc.ev)
		if err != nil {
			t.Fatal(err)
		}
		key := testSubjects.OpsKindOf(tc.subject) + testSubjects.StreamOf(tc.subject)
		got, err := DecodeDeployment(data, key)
		if err != nil {
			t.Fatalf("%s: %v", data, err)
		}
		if !reflect.DeepEqual(got, tc.ev) {
			t.Errorf("round trip:\n got %+v\nwant %+v", got, tc.ev)
		}
	}
}

func TestDeploymentEventIDs(t *testing.T) {
	at := time.Now()
	a := SubjectRevokedEvent("user-1", "r", 3, 10, at)
	// The retry of a revoke whose reply was lost ends at the same position
	// and revokes nothing more: the same event, dropped as a duplicate.
	if b := SubjectRevokedEvent("user-1", "r", 0, 10, at.Add(time.Second)); b.ID != a.ID {
		t.Error("a retried revoke at the same position has another id")
	}
	for _, other := range []DeploymentEvent{
		SubjectRevokedEvent("user-2", "r", 3, 10, at), SubjectRevokedEvent("user-1", "r2", 3, 10, at),
		SubjectRevokedEvent("user-1", "r", 3, 11, at), ClientRevokedEvent("user-1", "r", 3, 10, at),
	} {
		if other.ID == a.ID {
			t.Errorf("%+v has the id of %+v", other, a)
		}
	}
	if KeyRevokedEvent("k", "mac", "r", "by", 1, at).ID == KeyRevokedEvent("k", "mac", "r", "by", 2, at).ID {
		t.Error("two revocations (two keyset revisions) share an id")
	}
	if StreamUpdatedEvent("s", "paused", "", 1, at).ID == StreamUpdatedEvent("s", "enabled", "", 2, at).ID {
		t.Error("two status changes share an id")
	}
	if VerificationEvent("s", "", at).ID == VerificationEvent("s", "", at).ID {
		t.Error("two verification requests share an id")
	}
	for _, id := range []string{a.ID, KeyRevokedEvent("k", "mac", "r", "by", 1, at).ID} {
		if !domain.ValidID(id) || len(id) != 22 {
			t.Errorf("id %q is not in the alphabet of event ids", id)
		}
	}
}

func TestDecodeDeploymentRefusesForeignMessages(t *testing.T) {
	stream := "0123456789abcdef0123456789abcdef"
	for _, tc := range []struct{ data, key string }{
		{``, "subject_revoked"},
		{`[]`, "subject_revoked"},
		{`{}`, "subject_revoked"},
		{`{"id":"x","type":"subject.revoked","time":"2026-01-01T00:00:00Z","reason":"r"}`, "subject_revoked"},
		{`{"id":"x","type":"subject.revoked","time":"2026-01-01T00:00:00Z","subject":"u"}`, "subject_revoked"},
		{`{"id":"x","type":"subject.revoked","subject":"u","reason":"r"}`, "subject_revoked"},
		{`{"id":"x","type":"subject.revoked","time":"2026-01-01T00:00:00Z","subject":"u","reason":"r"}`, "client_revoked"},
		{`{"id":"x","type":"client.revoked","time":"2026-01-01T00:00:00Z","reason":"r"}`, "client_revoked"},
		{`{"id":"x","type":"key.revoked","time":"2026-01-01T00:00:00Z","kid":"k","reason":"r"}`, "key_revoked"},
		{`{"id":"x","type":"token.issued","time":"2026-01-01T00:00:00Z","subject":"u","reason":"r"}`, "subject_revoked"},
		{`{"id":"x","type":"ssf.verification","time":"2026-01-01T00:00:00Z","stream_id":"` + stream + `"}`, "other"},
		{`{"id":"x","type":"ssf.verification","time":"2026-01-01T00:00:00Z","stream_id":"a.b"}`, "a.b"},
		{`{"id":"x","type":"ssf.stream_updated","time":"2026-01-01T00:00:00Z","stream_id":"` + stream + `"}`, stream},
	} {
		if _, err := DecodeDeployment([]byte(tc.data), tc.key); !errors.Is(err, ErrMalformedEvent) {
			t.Errorf("%s under %s: %v", tc.data, tc.key, err)
		}
	}
	// A family event is no deployment event, and the other way round.
	if _, err := DecodeDeployment([]byte(`{"id":"x","type":"token.issued","family_id":"f","generation":1,"data":{"family":{"status":"active"}}}`), "f"); !errors.Is(err, ErrMalformedEvent) {
		t.Errorf("a family event decoded as a deployment event: %v", err)
	}
	data, _ := json.Marshal(SubjectRevokedEvent("u", "r", 1, 1, time.Now()))
	if _, err := Decode(data, "subject_revoked"); !errors.Is(err, ErrMalformedEvent) {
		t.Errorf("a deployment event decoded as a family event: %v", err)
	}
}

// TestAppendDeployment: a deployment event is stored on its subject with
// its id as Nats-Msg-Id and a TTL, once however often it is appended, and
// it moves neither a family nor LastEventSeq.
func TestAppendDeployment(t *testing.T) {
	nc, js, stream := MustJetStream(t)
	store := NewStore(nc, js, stream, testSubjects)
	store.Retention = Retention{AfterExpiry: 90 * 24 * time.Hour}
	fx := newFixture(t)
	ctx := context.Background()

	evs, err := fx.decider.Decide(domain.Family{}, domain.Issue{Token: fx.mint("fam-1", 1), Subject: "user-1", ClientID: "web-app"})
	if err != nil {
		t.Fatal(err)
	}
	famSeq, err := store.Append(ctx, "fam-1", 0, []Envelope{Wrap(evs[0], domain.Evolve(domain.Family{}, evs[0]))})
	if err != nil {
		t.Fatal(err)
	}
	ev := SubjectRevokedEvent("user-1", "user_disabled", 1, famSeq, fx.now)
	seq, err := store.AppendDeployment(ctx, ev)
	if err != nil {
		t.Fatal(err)
	}
	again, err := store.AppendDeployment(ctx, SubjectRevokedEvent("user-1", "user_disabled", 0, famSeq, fx.now.Add(time.Second)))
	if err != nil || again != seq {
		t.Fatalf("appending the same event again: seq %d, %v; want the first one's, %d", again, err, seq)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 2 {
		t.Fatalf("the stream holds %d messages, want the family event and one deployment event", info.State.Msgs)
	}
	msg, err := stream.GetMsg(ctx, seq)
	if err != nil {
		t.Fatal(err)
	}
	if msg.Subject != "tokens.ops.subject_revoked" || msg.Header.Get(jetstream.MsgIDHeader) != ev.ID || msg.Header.Get(jetstream.MsgTTLHeader) != "7776000" {
		t.Fatalf("stored on %s with headers %v", msg.Subject, msg.Header)
	}
	got, err := DecodeDeployment(msg.Data, testSubjects.OpsKindOf(msg.Subject))
	if err != nil || got.RevokedFamilies != 1 || got.Subject != "user-1" {
		t.Fatalf("stored %s: %v", msg.Data, err)
	}
	if strings.Contains(string(msg.Data), "rt1.") {
		t.Fatal("a deployment event holds a token")
	}
	if last, err := LastEventSeq(ctx, stream, testSubjects); err != nil || last != famSeq {
		t.Fatalf("LastEventSeq = %d, %v; want the family event's %d", last, err, famSeq)
	}
	if f, fseq, err := store.Load(ctx, "fam-1"); err != nil || fseq != famSeq || f.Subject != "user-1" {
		t.Fatalf("the family reads %+v at %d: %v", f, fseq, err)
	}

	// Malformed events are refused before they reach the stream.
	if _, err := store.AppendDeployment(ctx, DeploymentEvent{ID: "x", Type: SubjectRevoked, Time: fx.now}); !errors.Is(err, ErrMalformedEvent) {
		t.Fatalf("an event without subject: %v", err)
	}
	if _, err := store.AppendDeployment(ctx, VerificationEvent("a.>", "", fx.now)); !errors.Is(err, ErrMalformedEvent) {
		t.Fatalf("a stream id that is no subject token: %v", err)
	}
}
