package api

import (
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	dto "github.com/prometheus/client_model/go"

	"github.com/tokend/tokend/events"
	"github.com/tokend/tokend/events/eventstest"
)

// failingOutbox refuses every deployment event, as a stream that is full
// or unreachable for a moment would.
type failingOutbox struct{}

func (failingOutbox) AppendDeployment(context.Context, events.DeploymentEvent) (uint64, error) {
	return 0, errors.New("stream full")
}

func outboxFailed(t *testing.T, s *Service, typ string) float64 {
	t.Helper()
	var m dto.Metric
	if err := s.Metrics.outboxFailed.WithLabelValues(typ).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// TestKeyRevocationRecordsKeyRevoked: a key revocation stores key.revoked
// (kid, kind, reason, who) for the SSF transmitter.
func TestKeyRevocationRecordsKeyRevoked(t *testing.T) {
	url := eventstest.MustJetStream(t).ClientURL()
	s := startLoggingInstance(t, url, &lockedBuffer{})
	nc := eventstest.MustConnect(t, url)
	staged, _ := adminRequest(t, nc, SubjectKeysStage, `{}`)
	kid := stateOf(staged, "mac", "next")
	m, err := nc.Request("tokens."+SubjectKeysRevoke, []byte(`{"kid":"`+kid+`","reason":"host lost","by":"alice"}`), 10*time.Second)
	if err != nil || m.Header.Get(micro.ErrorCodeHeader) != "" {
		t.Fatalf("revoke: %s, %v", m.Data, err)
	}
	var r KeysRevoked
	if err := json.Unmarshal(m.Data, &r); err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(nc)
	stream, err := js.Stream(t.Context(), events.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := stream.GetLastMsgForSubject(t.Context(), events.Subjects{Prefix: "tokens"}.Ops("key_revoked"))
	if err != nil {
		t.Fatalf("no key.revoked in the stream: %v", err)
	}
	ev, err := events.DecodeDeployment(msg.Data, "key_revoked")
	if err != nil {
		t.Fatal(err)
	}
	want := events.KeyRevokedEvent(kid, "mac", "host lost", "alice", r.Revision, ev.Time)
	if !reflect.DeepEqual(ev, want) {
		t.Fatalf("stored %+v, want %+v", ev, want)
	}
	if outboxFailed(t, s, events.KeyRevoked) != 0 {
		t.Fatal("a stored event counted as failed")
	}
}

// TestKeyRevocationSurvivesAFailedOutbox: when key.revoked cannot be
// stored, the revocation still stands and is answered as such; the failure
// is logged at error and counted.
func TestKeyRevocationSurvivesAFailedOutbox(t *testing.T) {
	url := eventstest.MustJetStream(t).ClientURL()
	logs := &lockedBuffer{}
	s := startLoggingInstance(t, url, logs, func(s *Service) { s.Outbox = failingOutbox{} })
	nc := eventstest.MustConnect(t, url)
	staged, _ := adminRequest(t, nc, SubjectKeysStage, `{}`)
	kid := stateOf(staged, "signing", "next")
	m, err := nc.Request("tokens."+SubjectKeysRevoke, []byte(`{"kid":"`+kid+`","reason":"leaked","by":"alice"}`), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var r KeysRevoked
	if m.Header.Get(micro.ErrorCodeHeader) != "" || json.Unmarshal(m.Data, &r) != nil || r.Revoked.Kid != kid {
		t.Fatalf("the revocation failed with its event: %s", m.Data)
	}
	if got := outboxFailed(t, s, events.KeyRevoked); got != 1 {
		t.Fatalf("tokend_deployment_events_failed_total{type=key.revoked} = %v, want 1", got)
	}
	if !strings.Contains(logs.String(), `level=ERROR msg="deployment event not stored`) || !strings.Contains(logs.String(), "type=key.revoked") {
		t.Fatalf("the failure is not logged at error:\n%s", logs)
	}
}
