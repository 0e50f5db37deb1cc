package api

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"github.com/tokend/tokend/events"
	"github.com/tokend/tokend/events/eventstest"
	"github.com/tokend/tokend/signals"
)

// withStreams gives an instance the SSF stream store, sealing with its
// keyring and announcing to its outbox, as tokend wires it.
func withStreams(t *testing.T, url string) func(*Service) {
	return func(s *Service) {
		js, _ := jetstream.New(eventstest.MustConnect(t, url))
		ring := s.Tokens.Keyring()
		st, err := signals.Open(context.Background(), js, signals.Options{Replicas: 1, Keys: ring.Loaded(), Outbox: s.Outbox})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(st.Stop)
		s.Streams = st
	}
}

// ssfRequest sends body to an SSF admin subject; code is the error code
// of a refusal, "" on success, when raw is the reply.
func ssfRequest(t *testing.T, nc *nats.Conn, subject, body string) (raw []byte, code string) {
	t.Helper()
	m, err := nc.Request("tokens."+subject, []byte(body), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return m.Data, m.Header.Get(micro.ErrorHeader)
}

func mustSSF[T any](t *testing.T, nc *nats.Conn, subject, body string) (T, []byte) {
	t.Helper()
	raw, code := ssfRequest(t, nc, subject, body)
	if code != "" {
		t.Fatalf("%s %s: %s", subject, body, raw)
	}
	var out T
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatal(err)
	}
	return out, raw
}

// lastSSFEvent is the last deployment event stored for stream id.
func lastSSFEvent(t *testing.T, nc *nats.Conn, id string) events.DeploymentEvent {
	t.Helper()
	js, _ := jetstream.New(nc)
	stream, err := js.Stream(t.Context(), events.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := stream.GetLastMsgForSubject(t.Context(), events.Subjects{Prefix: "tokens"}.SSF(id))
	if err != nil {
		t.Fatalf("no event for stream %s: %v", id, err)
	}
	ev, err := events.DecodeDeployment(msg.Data, id)
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

func TestSSFAdminStreams(t *testing.T) {
	url := eventstest.MustJetStream(t).ClientURL()
	s := startLoggingInstance(t, url, io.Discard, withStreams(t, url))
	nc := eventstest.MustConnect(t, url)
	ctx := context.Background()
	push := &signals.Delivery{Method: signals.DeliveryPush, EndpointURL: "https://rp.example/ssf", AuthorizationHeader: "Bearer s3cret"}
	st, err := s.Streams.Create(ctx, signals.NewStream{Receiver: "rp-1", Request: signals.StreamRequest{Delivery: push}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Streams.RemoveSubject(ctx, st.ID, signals.IssSub("https://tokend.example", "user-42")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Streams.Create(ctx, signals.NewStream{Receiver: "rp-2"}); err != nil {
		t.Fatal(err)
	}
	id := `{"stream_id":"` + st.ID + `"`

	list, raw := mustSSF[SSFStreamList](t, nc, SubjectSSFStreamsList, `{}`)
	if len(list.Streams) != 2 || list.Streams[0].StreamID != st.ID || list.Streams[0].Receiver != "rp-1" || !list.Streams[0].AuthorizationHeader ||
		list.Streams[0].ExcludedSubjectsCount != 1 || list.Streams[0].ExcludedSubjects != nil || list.Streams[1].Receiver != "rp-2" {
		t.Fatalf("list %s", raw)
	}
	shown, raw := mustSSF[SSFStreamView](t, nc, SubjectSSFStreamsGet, id+`}`)
	if shown.Status != "enabled" || shown.DeliveryMethod != signals.DeliveryPush || shown.EndpointURL != push.EndpointURL ||
		len(shown.ExcludedSubjects) != 1 || len(shown.EventsDelivered) == 0 {
		t.Fatalf("get %s", raw)
	}
	for _, r := range [][]byte{raw, mustRaw(t, nc, SubjectSSFStreamsList, `{}`)} {
		if bytes.Contains(r, []byte("s3cret")) || bytes.Contains(r, []byte("ciphertext")) || bytes.Contains(r, []byte("nonce")) {
			t.Fatalf("a reply shows the delivery secret: %s", r)
		}
	}

	// Pause and disable need a reason, for the receiver; each change is
	// announced to it on its stream.
	if _, code := ssfRequest(t, nc, SubjectSSFStreamsPause, id+`,"by":"alice"}`); code != "invalid_request" {
		t.Fatalf("a pause without a reason: %s", code)
	}
	if _, code := ssfRequest(t, nc, SubjectSSFStreamsPause, id+`,"reason":"maintenance"}`); code != "invalid_request" {
		t.Fatalf("a pause by nobody: %s", code)
	}
	for _, step := range []struct{ subject, body, status, reason string }{
		{SubjectSSFStreamsPause, id + `,"reason":"receiver overloaded","by":"alice"}`, "paused", "receiver overloaded"},
		{SubjectSSFStreamsResume, id + `,"by":"alice"}`, "enabled", ""},
		{SubjectSSFStreamsDisable, id + `,"reason":"contract ended","by":"alice"}`, "disabled", "contract ended"},
	} {
		v, raw := mustSSF[SSFStreamView](t, nc, step.subject, step.body)
		if v.Status != step.status || v.Reason != step.reason {
			t.Fatalf("%s: %s", step.subject, raw)
		}
		ev := lastSSFEvent(t, nc, st.ID)
		if ev.Type != events.SSFStreamUpdated || ev.Status != step.status || ev.Reason != step.reason {
			t.Fatalf("%s announced %+v", step.subject, ev)
		}
	}
	if _, code := ssfRequest(t, nc, SubjectSSFStreamsResume, id+`,"reason":"x","by":"alice"}`); code != "invalid_request" {
		t.Fatalf("a resume with a reason: %s", code)
	}

	verified, _ := mustSSF[SSFVerifyReply](t, nc, SubjectSSFStreamsVerify, id+`,"state":"check-1"}`)
	if ev := lastSSFEvent(t, nc, st.ID); ev.Type != events.SSFVerification || ev.State != "check-1" || ev.ID != verified.EventID || verified.Seq == 0 {
		t.Fatalf("verify stored %+v, replied %+v", ev, verified)
	}

	deleted, _ := mustSSF[SSFDeleteReply](t, nc, SubjectSSFStreamsDelete, id+`,"by":"alice"}`)
	if !deleted.Deleted {
		t.Fatal("not deleted")
	}
	for subject, body := range map[string]string{SubjectSSFStreamsGet: id + `}`, SubjectSSFStreamsVerify: id + `}`,
		SubjectSSFStreamsResume: id + `,"by":"alice"}`, SubjectSSFStreamsDelete: id + `,"by":"alice"}`} {
		if _, code := ssfRequest(t, nc, subject, body); code != "not_found" {
			t.Errorf("%s of a deleted stream: %s", subject, code)
		}
	}
	if _, code := ssfRequest(t, nc, SubjectSSFStreamsGet, `{"stream_id":"../x"}`); code != "not_found" {
		t.Errorf("a malformed id: %s", code)
	}
}

func mustRaw(t *testing.T, nc *nats.Conn, subject, body string) []byte {
	t.Helper()
	raw, code := ssfRequest(t, nc, subject, body)
	if code != "" {
		t.Fatalf("%s: %s", subject, raw)
	}
	return raw
}

func webhookSecret(b byte) string {
	return signals.WebhookSecretPrefix + base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{b}, 32))
}

func TestSSFAdminWebhooks(t *testing.T) {
	url := eventstest.MustJetStream(t).ClientURL()
	s := startLoggingInstance(t, url, io.Discard, withStreams(t, url))
	nc := eventstest.MustConnect(t, url)
	ctx := context.Background()
	receivers, err := s.Streams.Create(ctx, signals.NewStream{Receiver: "rp-1"})
	if err != nil {
		t.Fatal(err)
	}

	add := func(body string) (SSFStreamView, []byte, string) {
		raw, code := ssfRequest(t, nc, SubjectSSFWebhooksAdd, body)
		var v SSFStreamView
		if code == "" {
			if err := json.Unmarshal(raw, &v); err != nil {
				t.Fatal(err)
			}
		}
		return v, raw, code
	}
	wh, raw, code := add(`{"endpoint_url":"https://siem.example/hook","events":["family.revoked","key-revoked","` + signals.TypeSessionRevoked + `"],` +
		`"clients":["web-app"],"secret":"` + webhookSecret(1) + `","description":"SIEM","by":"alice"}`)
	if code != "" || wh.DeliveryMethod != signals.DeliveryWebhook || wh.Receiver != "" || wh.CreatedBy != "alice" || wh.Status != "enabled" ||
		!slices.Equal(wh.EventsRequested, []string{signals.TypeSessionRevoked, signals.TypeKeyRevoked}) || !slices.Equal(wh.Clients, []string{"web-app"}) ||
		len(wh.WebhookSecrets) != 1 || wh.WebhookSecrets[0].ExpiresAt != "" || wh.Description != "SIEM" {
		t.Fatalf("added %s", raw)
	}
	if bytes.Contains(raw, []byte(webhookSecret(1)[len("whsec_"):])) {
		t.Fatalf("the reply shows the secret: %s", raw)
	}
	stored, _ := s.Streams.Get(ctx, wh.StreamID)
	if sec, err := s.Streams.DeliverySecrets(stored); err != nil || !slices.Equal(sec.Webhook, []string{webhookSecret(1)}) {
		t.Fatalf("the secret stored: %v", err)
	}

	for name, body := range map[string]string{
		"no secret":        `{"endpoint_url":"https://siem.example/hook","by":"alice"}`,
		"a bad secret":     `{"endpoint_url":"https://siem.example/hook","secret":"hunter2","by":"alice"}`,
		"an unknown event": `{"endpoint_url":"https://siem.example/hook","events":["token.issued"],"secret":"` + webhookSecret(1) + `","by":"alice"}`,
		"plain http":       `{"endpoint_url":"http://siem.example/hook","secret":"` + webhookSecret(1) + `","by":"alice"}`,
		"nobody":           `{"endpoint_url":"https://siem.example/hook","secret":"` + webhookSecret(1) + `"}`,
		"unknown fields":   `{"endpoint_url":"https://siem.example/hook","secret":"` + webhookSecret(1) + `","by":"alice","receiver":"rp-1"}`,
	} {
		if _, raw, code := add(body); code != "invalid_request" || bytes.Contains(raw, []byte("hunter2")) {
			t.Errorf("%s: %s %s", name, code, raw)
		}
	}

	list, raw := mustSSF[SSFStreamList](t, nc, SubjectSSFWebhooksList, `{}`)
	if len(list.Streams) != 1 || list.Streams[0].StreamID != wh.StreamID {
		t.Fatalf("webhooks list %s", raw)
	}

	rotated, raw := mustSSF[SSFStreamView](t, nc, SubjectSSFWebhooksRotateSecret,
		`{"stream_id":"`+wh.StreamID+`","secret":"`+webhookSecret(2)+`","grace":"1h","by":"alice"}`)
	if len(rotated.WebhookSecrets) != 2 || rotated.WebhookSecrets[0].ExpiresAt != "" || rotated.WebhookSecrets[1].ExpiresAt == "" ||
		rotated.WebhookSecrets[1].SecretRef != wh.WebhookSecrets[0].SecretRef {
		t.Fatalf("rotated %s", raw)
	}
	stored, _ = s.Streams.Get(ctx, wh.StreamID)
	if sec, err := s.Streams.DeliverySecrets(stored); err != nil || !slices.Equal(sec.Webhook, []string{webhookSecret(2), webhookSecret(1)}) {
		t.Fatalf("after the rotation: %v", err)
	}
	if _, code := ssfRequest(t, nc, SubjectSSFWebhooksRotateSecret, `{"stream_id":"`+receivers.ID+`","secret":"`+webhookSecret(3)+`","by":"alice"}`); code != "invalid_request" {
		t.Fatalf("rotating a receiver's stream: %s", code)
	}

	if _, code := ssfRequest(t, nc, SubjectSSFWebhooksRemove, `{"stream_id":"`+receivers.ID+`","by":"alice"}`); code != "invalid_request" {
		t.Fatalf("removing a receiver's stream as a webhook: %s", code)
	}
	mustSSF[SSFDeleteReply](t, nc, SubjectSSFWebhooksRemove, `{"stream_id":"`+wh.StreamID+`","by":"alice"}`)
	if _, err := s.Streams.Get(ctx, wh.StreamID); err == nil {
		t.Fatal("the webhook is still there")
	}
}

// TestSSFAdminPauseNeedsItsAnnouncement: if the stream-updated event
// cannot be stored, the pause does not happen.
func TestSSFAdminPauseNeedsItsAnnouncement(t *testing.T) {
	url := eventstest.MustJetStream(t).ClientURL()
	s := startLoggingInstance(t, url, io.Discard, func(s *Service) { s.Outbox = failingOutbox{} }, withStreams(t, url))
	nc := eventstest.MustConnect(t, url)
	st, err := s.Streams.Create(context.Background(), signals.NewStream{Receiver: "rp-1"})
	if err != nil {
		t.Fatal(err)
	}
	if _, code := ssfRequest(t, nc, SubjectSSFStreamsPause, `{"stream_id":"`+st.ID+`","reason":"maintenance","by":"alice"}`); code != "temporarily_unavailable" {
		t.Fatalf("pause: %s", code)
	}
	if got, _ := s.Streams.Get(context.Background(), st.ID); got.Status != signals.StatusEnabled {
		t.Fatalf("paused unannounced: %+v", got)
	}
	if _, code := ssfRequest(t, nc, SubjectSSFStreamsVerify, `{"stream_id":"`+st.ID+`"}`); code != "temporarily_unavailable" {
		t.Fatalf("verify: %s", code)
	}
}
