package signals

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events/eventstest"
)

func TestWebhookSignedAsStandardWebhooks(t *testing.T) {
	d := newDeployment(t)
	key := make([]byte, 32)
	rand.Read(key)
	secret := "whsec_" + base64.StdEncoding.EncodeToString(key)
	in := d.start("a", nil)
	rc := newReceiver(t)
	st, err := in.store.Create(context.Background(), NewStream{CreatedBy: "ops", WebhookSecret: secret, Request: StreamRequest{
		Delivery: &Delivery{Method: DeliveryWebhook, EndpointURL: rc.srv.URL + "/hook"}}})
	if err != nil {
		t.Fatal(err)
	}

	txn := d.revoked("any-app") // an operator's webhook sees every event
	got := rc.await(t, 1)[0]
	wh, err := standardwebhooks.NewWebhook(secret)
	if err != nil {
		t.Fatal(err)
	}
	if err := wh.Verify(got.body, got.header); err != nil {
		t.Fatalf("signature: %v", err)
	}
	if err := wh.Verify(append(got.body[:len(got.body):len(got.body)], ' '), got.header); err == nil {
		t.Fatal("a changed body verifies")
	}
	var ev struct {
		Type      string    `json:"type"`
		Timestamp time.Time `json:"timestamp"`
		Data      struct {
			ID       string          `json:"id"`
			Iss      string          `json:"iss"`
			StreamID string          `json:"stream_id"`
			Txn      string          `json:"txn"`
			TOE      int64           `json:"toe"`
			SubID    Subject         `json:"sub_id"`
			Event    json.RawMessage `json:"event"`
		} `json:"data"`
	}
	if err := json.Unmarshal(got.body, &ev); err != nil {
		t.Fatal(err)
	}
	jti := JTI(st.ID, txn, TypeSessionRevoked)
	if ev.Type != TypeSessionRevoked || ev.Data.ID != jti || got.header.Get("webhook-id") != jti || ev.Data.Txn != txn ||
		ev.Data.Iss != issuer || ev.Data.StreamID != st.ID || ev.Data.TOE != ev.Timestamp.Unix() || ev.Data.SubID.Session == nil {
		t.Errorf("body %s", got.body)
	}
	var revoked SessionRevoked
	if err := json.Unmarshal(ev.Data.Event, &revoked); err != nil || revoked.TokendReason != domain.ReasonRevoked {
		t.Errorf("event %s: %v", ev.Data.Event, err)
	}
	if ct := got.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
}

// A webhook retries any answer but 2xx, with the same webhook-id.
func TestWebhookRetriesAnyRefusal(t *testing.T) {
	d := newDeployment(t)
	in := d.start("a", nil)
	rc := newReceiver(t)
	rc.setAnswer(func(n int, _ request) (int, http.Header, string) {
		if n == 0 {
			return http.StatusBadRequest, nil, `{"error":"schema"}`
		}
		return http.StatusNoContent, nil, ""
	})
	st, err := in.store.Create(context.Background(), NewStream{CreatedBy: "ops", WebhookSecret: whsec(1), Request: StreamRequest{
		Delivery: &Delivery{Method: DeliveryWebhook, EndpointURL: rc.srv.URL}}})
	if err != nil {
		t.Fatal(err)
	}
	txn := d.revoked("web-app")
	reqs := rc.await(t, 2)
	jti := JTI(st.ID, txn, TypeSessionRevoked)
	if reqs[0].header.Get("webhook-id") != jti || reqs[1].header.Get("webhook-id") != jti || reqs[1].status != http.StatusNoContent {
		t.Errorf("webhook-id %q then %q (%d), want %s twice", reqs[0].header.Get("webhook-id"), reqs[1].header.Get("webhook-id"), reqs[1].status, jti)
	}
	eventstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error { return in.metrics.expect(st.ID, 1, 0, 1) })
}

// During a secret rotation's grace every request carries a signature under
// each secret, newest first: a SIEM holding either verifies it.
func TestWebhookSignedUnderEverySecretOfARotation(t *testing.T) {
	d := newDeployment(t)
	in := d.start("a", nil)
	rc := newReceiver(t)
	old, next := whsec(1), whsec(2)
	st, err := in.store.Create(context.Background(), NewStream{CreatedBy: "ops", WebhookSecret: old, Request: StreamRequest{
		Delivery: &Delivery{Method: DeliveryWebhook, EndpointURL: rc.srv.URL}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := in.store.RotateWebhookSecret(context.Background(), st.ID, next, time.Hour); err != nil {
		t.Fatal(err)
	}
	// The engine may learn of the rotation after it sent the event: the
	// receiver refuses until a request is signed under both, and the
	// retry picks the rotation up.
	rc.setAnswer(func(_ int, r request) (int, http.Header, string) {
		if len(strings.Fields(r.header.Get("webhook-signature"))) != 2 {
			return http.StatusServiceUnavailable, nil, ""
		}
		return http.StatusNoContent, nil, ""
	})
	d.revoked("web-app")
	rc.awaitAccepted(t, 1)
	reqs := rc.requests()
	got := reqs[len(reqs)-1]
	signatures := strings.Fields(got.header.Get("webhook-signature"))
	for i, secret := range []string{next, old} {
		wh, err := standardwebhooks.NewWebhook(secret)
		if err != nil {
			t.Fatal(err)
		}
		if err := wh.Verify(got.body, got.header); err != nil {
			t.Errorf("secret %d: %v", i, err)
		}
		// Newest first: each signature verifies alone under its own secret.
		alone := got.header.Clone()
		alone.Set("webhook-signature", signatures[i])
		if err := wh.Verify(got.body, alone); err != nil {
			t.Errorf("signature %d under secret %d: %v", i, i, err)
		}
	}
	stranger, _ := standardwebhooks.NewWebhook(whsec(3))
	if err := stranger.Verify(got.body, got.header); err == nil {
		t.Error("verifies under a secret it was not signed with")
	}
}

// A webhook named for some clients gets their sessions' events and the
// deployment's, and never another client's.
func TestWebhookSeesOnlyItsClients(t *testing.T) {
	d := newDeployment(t)
	in := d.start("a", nil)
	rc := newReceiver(t)
	st, err := in.store.Create(context.Background(), NewStream{CreatedBy: "ops", WebhookSecret: whsec(1), Clients: []string{"web-app"},
		Request: StreamRequest{Delivery: &Delivery{Method: DeliveryWebhook, EndpointURL: rc.srv.URL}}})
	if err != nil {
		t.Fatal(err)
	}
	d.revoked("billing")
	mine := d.revoked("web-app")
	// In order: once web-app's event is in, billing's was passed over.
	if got := rc.awaitAccepted(t, 1); len(got) != 1 || got[0] != JTI(st.ID, mine, TypeSessionRevoked) {
		t.Errorf("accepted %v, want only web-app's %s", got, JTI(st.ID, mine, TypeSessionRevoked))
	}
}
