package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events"
	"github.com/tokend/tokend/events/eventstest"
	"github.com/tokend/tokend/examples/ssfreceiver"
	"github.com/tokend/tokend/registry"
)

// inbox keeps the SETs a receiver took, refusing a verification event
// whose state is not the one it asked for (SSF 1.0 section 8.1.4.1).
type inbox struct {
	state string
	mu    sync.Mutex
	sets  []ssfreceiver.SET
}

func (in *inbox) take(_ context.Context, set ssfreceiver.SET) error {
	if state, ok := set.VerificationState(); ok && state != in.state {
		return &ssfreceiver.Error{Code: ssfreceiver.ErrInvalidState, Description: "not the state this receiver asked for"}
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	in.sets = append(in.sets, set)
	return nil
}

func (in *inbox) taken() []ssfreceiver.SET {
	in.mu.Lock()
	defer in.mu.Unlock()
	return slices.Clone(in.sets)
}

// await waits for the receiver to have taken a verification event: its
// stream delivers in order, so every event recorded before the
// verification was asked for was delivered or passed over by then.
func (in *inbox) await(t *testing.T, poll func() error) []ssfreceiver.SET {
	t.Helper()
	var got []ssfreceiver.SET
	eventstest.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
		if poll != nil {
			if err := poll(); err != nil {
				return err
			}
		}
		if got = in.taken(); !slices.ContainsFunc(got, func(s ssfreceiver.SET) bool { return s.Type == ssfreceiver.TypeVerification }) {
			return fmt.Errorf("%d SETs, no verification event yet", len(got))
		}
		return nil
	})
	return got
}

// setSubject is the part of a SET's sub_id this test reads (docs/protocol.md 17.3).
type setSubject struct {
	Format  string `json:"format"`
	ID      string `json:"id"`
	Session struct {
		ID string `json:"id"`
	} `json:"session"`
	Application struct {
		ID string `json:"id"`
	} `json:"application"`
}

func subjectOf(t *testing.T, set ssfreceiver.SET) setSubject {
	t.Helper()
	var s setSubject
	if err := json.Unmarshal(set.SubjectID, &s); err != nil {
		t.Fatalf("sub_id %s: %v", set.SubjectID, err)
	}
	return s
}

// TestSSFOutsideReceiver is issue 19's first proof point: a receiver that
// no one here wrote (examples/ssfreceiver: from the SSF and RFC texts, on
// another JOSE library, importing nothing of tokend) knows tokend by its
// issuer alone. It discovers the transmitter and the token endpoint, gets
// its token with client_credentials, manages its streams, and receives,
// verifies (signature against the JWKS, iss, aud, typ) and acknowledges
// the SETs of tokend's events, pushed and polled. A receiver of its own
// client's events gets none of another client's, and cannot see another
// receiver's stream. Only the receiver talks to tokend over HTTP; NATS
// only causes the events.
func TestSSFOutsideReceiver(t *testing.T) {
	e := mustOAuthEnv(t, func(c *Config) { c.ReuseInterval = 0 }) // any parent presented again is a replay
	e.registerReceivers(t)                                        // siem: every event
	partner := domain.Client{ID: "partner", Type: domain.ClientConfidential, AuthMethod: domain.AuthSecretBasic, Receiver: domain.ReceiverOwn,
		Scopes: []string{"openid", "api:read", "api:write"}, Audiences: []string{"https://api.example.com", "https://billing.example.com"}}
	if _, err := e.app.Clients().Put(t.Context(), partner, domain.HashClientSecret(e.secret), 0, registry.Actor{By: "test"}); err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Timeout: 30 * time.Second} // beyond a long poll's 15 s
	connect := func(client string) *ssfreceiver.Receiver {
		t.Helper()
		r, err := ssfreceiver.Connect(t.Context(), ssfreceiver.Config{Issuer: e.base, ClientID: client, ClientSecret: e.secret,
			Audience: client, HTTPClient: hc}) // tokend's aud is the receiver's client id (protocol 17.2)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	siem, own := connect("siem"), connect("partner")

	// Stream management, on a stream of its own.
	scratch, err := siem.CreateStream(t.Context(), ssfreceiver.StreamRequest{Description: "scratch"})
	if err != nil || scratch.Delivery == nil || scratch.Delivery.Method != ssfreceiver.DeliveryPoll {
		t.Fatalf("create: %+v %v", scratch, err)
	}
	if s, err := siem.UpdateStream(t.Context(), ssfreceiver.StreamRequest{StreamID: scratch.StreamID, Description: "renamed"}); err != nil || s.Description != "renamed" {
		t.Fatalf("update: %+v %v", s, err)
	}
	if s, err := siem.GetStream(t.Context(), scratch.StreamID); err != nil || s.Description != "renamed" || s.StreamID != scratch.StreamID {
		t.Fatalf("get: %+v %v", s, err)
	}
	if st, err := siem.SetStatus(t.Context(), ssfreceiver.Status{StreamID: scratch.StreamID, Status: "paused", Reason: "maintenance"}); err != nil || st.Status != "paused" {
		t.Fatalf("pause: %+v %v", st, err)
	}
	if st, err := siem.GetStatus(t.Context(), scratch.StreamID); err != nil || st.Status != "paused" || st.Reason != "maintenance" {
		t.Fatalf("status: %+v %v", st, err)
	}
	user := map[string]string{"format": "iss_sub", "iss": e.base, "sub": "user-1"}
	if err := siem.RemoveSubject(t.Context(), scratch.StreamID, user); err != nil {
		t.Fatalf("remove subject: %v", err)
	}
	if err := siem.AddSubject(t.Context(), scratch.StreamID, user); err != nil {
		t.Fatalf("add subject: %v", err)
	}
	if err := siem.DeleteStream(t.Context(), scratch.StreamID); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if _, err := siem.GetStream(t.Context(), scratch.StreamID); !ssfreceiver.IsNotFound(err) {
		t.Fatalf("get after the delete: %v", err)
	}

	// siem: a push stream to its endpoint, which requires the header it
	// gave tokend; partner: a poll stream.
	siemInbox := &inbox{state: "siem-" + domain.NewID([]byte(t.Name()+"siem"))}
	const authorization = "Bearer siem-inbox-credential"
	handler := ssfreceiver.NewPushHandler(siem.Verifier, authorization, siemInbox.take)
	var answersMu sync.Mutex
	var answers []int
	endpoint := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &statusRecorder{ResponseWriter: w}
		handler.ServeHTTP(rec, r)
		answersMu.Lock()
		answers = append(answers, rec.status)
		answersMu.Unlock()
	}))
	t.Cleanup(endpoint.Close)
	pushed, err := siem.CreateStream(t.Context(), ssfreceiver.StreamRequest{Description: "siem push",
		Delivery: &ssfreceiver.Delivery{Method: ssfreceiver.DeliveryPush, EndpointURL: endpoint.URL, AuthorizationHeader: authorization}})
	if err != nil || pushed.Delivery.AuthorizationHeader != "" {
		t.Fatalf("push stream: %+v %v", pushed, err)
	}
	polled, err := own.CreateStream(t.Context(), ssfreceiver.StreamRequest{Description: "partner poll"})
	if err != nil {
		t.Fatal(err)
	}

	// A receiver cannot see or change another's stream: 404 (SSF 1.0
	// section 8.1.1), as for one that does not exist.
	if _, err := own.GetStream(t.Context(), pushed.StreamID); !ssfreceiver.IsNotFound(err) {
		t.Fatalf("partner reads siem's stream: %v", err)
	}
	if _, err := own.GetStatus(t.Context(), pushed.StreamID); !ssfreceiver.IsNotFound(err) {
		t.Fatalf("partner reads siem's stream's status: %v", err)
	}
	if err := own.DeleteStream(t.Context(), pushed.StreamID); !ssfreceiver.IsNotFound(err) {
		t.Fatalf("partner deletes siem's stream: %v", err)
	}

	// The events: web's session revoked; partner's session's refresh
	// token replayed (credential compromise, then the session revoked).
	web := mustIssue(t, e.nc, "user-1", "web")
	if r := call(t, e.nc, "tokens.cmd.revoke", wire.RevokeRequest{FamilyID: &web.FamilyID}); r.errCode != "" {
		t.Fatalf("revoke: %s", r.raw)
	}
	stolen := mustIssue(t, e.nc, "user-2", "partner")
	mustRefresh(t, e.nc, stolen.RefreshToken, "partner")
	wantError(t, refresh(t, e.nc, stolen.RefreshToken, "partner"), "invalid_grant")
	txn := map[string]string{} // "<family> <tokend event type>" -> the event's id
	for _, f := range []string{web.FamilyID, stolen.FamilyID} {
		for _, ev := range familyEvents(t, e.nc, f) {
			txn[f+" "+ev.Type] = ev.ID
		}
	}
	// Verification events with states each receiver chose, recorded after
	// the events above.
	ownInbox := &inbox{state: "partner-" + domain.NewID([]byte(t.Name()+"partner"))}
	if err := siem.RequestVerification(t.Context(), pushed.StreamID, siemInbox.state); err != nil {
		t.Fatal(err)
	}
	if err := own.RequestVerification(t.Context(), polled.StreamID, ownInbox.state); err != nil {
		t.Fatal(err)
	}

	// The verification SET's txn is the id of the ssf.verification event
	// tokend recorded for the stream (protocol 17.1).
	js, _ := jetstream.New(e.nc)
	tokens, err := js.Stream(t.Context(), events.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	verificationID := func(stream string) string {
		t.Helper()
		msg, err := tokens.GetLastMsgForSubject(t.Context(), events.Subjects{Prefix: "tokens"}.SSF(stream))
		if err != nil {
			t.Fatal(err)
		}
		ev, err := events.DecodeDeployment(msg.Data, stream)
		if err != nil || ev.Type != events.SSFVerification {
			t.Fatalf("%+v %v", ev, err)
		}
		return ev.ID
	}

	type sent struct{ typ, family, txn string }
	// ordered: push delivers in order; a poll's SETs are a JSON object,
	// which has none (RFC 8936 section 2.3).
	want := func(sets []ssfreceiver.SET, stream string, ordered bool, expected []sent) {
		t.Helper()
		var got []sent
		for _, set := range sets {
			sub := subjectOf(t, set)
			if set.Type == ssfreceiver.TypeVerification {
				if sub.Format != "opaque" || sub.ID != stream || set.Txn != verificationID(stream) {
					t.Errorf("verification %+v, sub_id %+v", set, sub)
				}
				continue
			}
			got = append(got, sent{set.Type, sub.Session.ID, set.Txn})
		}
		if !ordered {
			byTxn := func(a, b sent) int { return strings.Compare(a.txn, b.txn) }
			slices.SortFunc(got, byTxn)
			slices.SortFunc(expected, byTxn)
		}
		if !slices.Equal(got, expected) {
			t.Fatalf("stream %s got %+v, want %+v", stream, got, expected)
		}
	}
	replayed := []sent{
		{ssfreceiver.TypeCredentialCompromise, stolen.FamilyID, txn[stolen.FamilyID+" token.replay_detected"]},
		{ssfreceiver.TypeSessionRevoked, stolen.FamilyID, txn[stolen.FamilyID+" family.revoked"]},
	}

	// Push: siem sees every event, in order, each answered 202 and
	// counted delivered.
	got := siemInbox.await(t, nil)
	want(got, pushed.StreamID, true, append([]sent{{ssfreceiver.TypeSessionRevoked, web.FamilyID, txn[web.FamilyID+" family.revoked"]}}, replayed...))
	eventstest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if v := scrapeValue(t, e.app, "tokend_ssf_sets_delivered_total", "stream", pushed.StreamID); v != float64(len(got)) {
			return fmt.Errorf("push stream delivered %v, the receiver took %d", v, len(got))
		}
		return nil
	})
	answersMu.Lock()
	// At least once: a SET may come again, and is answered 202 again.
	if len(answers) < len(got) || slices.ContainsFunc(answers, func(s int) bool { return s != http.StatusAccepted }) {
		t.Errorf("the push endpoint answered %v", answers)
	}
	answersMu.Unlock()

	// Poll: partner sees its own session's events, not web's, and
	// acknowledges them.
	poller, err := own.NewPoller(polled, ownInbox.take)
	if err != nil {
		t.Fatal(err)
	}
	got = ownInbox.await(t, func() error { _, _, err := poller.Poll(t.Context(), true); return err })
	want(got, polled.StreamID, false, slices.Clone(replayed))
	if err := poller.Acknowledge(t.Context()); err != nil {
		t.Fatal(err)
	}
	eventstest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if v := scrapeValue(t, e.app, "tokend_ssf_sets_delivered_total", "stream", polled.StreamID); v != float64(len(got)) {
			return fmt.Errorf("poll stream delivered %v, the receiver acknowledged %d", v, len(got))
		}
		return nil
	})
	// A poller that has seen nothing gets nothing: what was acknowledged
	// does not come again.
	fresh, err := own.NewPoller(polled, ownInbox.take)
	if err != nil {
		t.Fatal(err)
	}
	if again, _, err := fresh.Poll(t.Context(), true); err != nil || len(again) != 0 {
		t.Fatalf("after the acknowledgement: %+v %v", again, err)
	}
}

// statusRecorder keeps the status a handler answered.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(status int) {
	r.status = status
	r.ResponseWriter.WriteHeader(status)
}

// TestSSFOutsideReceiverRefusesAVerification: a verification event whose
// state the receiver did not ask for is refused invalid_state (SSF 1.0
// section 8.1.4.1), pushed (RFC 8935 section 2.3) or polled (setErrs, RFC
// 8936 section 2.4.4); tokend gives it up, counts it failed, and does not
// send it again.
func TestSSFOutsideReceiverRefusesAVerification(t *testing.T) {
	e := mustOAuthEnv(t, nil)
	e.registerReceivers(t)
	siem, err := ssfreceiver.Connect(t.Context(), ssfreceiver.Config{Issuer: e.base, ClientID: "siem", ClientSecret: e.secret, Audience: "siem",
		HTTPClient: &http.Client{Timeout: 30 * time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	in := &inbox{state: "the state asked for"}
	endpoint := httptest.NewServer(ssfreceiver.NewPushHandler(siem.Verifier, "Bearer inbox", in.take))
	t.Cleanup(endpoint.Close)
	pushed, err := siem.CreateStream(t.Context(), ssfreceiver.StreamRequest{
		Delivery: &ssfreceiver.Delivery{Method: ssfreceiver.DeliveryPush, EndpointURL: endpoint.URL, AuthorizationHeader: "Bearer inbox"}})
	if err != nil {
		t.Fatal(err)
	}
	polled, err := siem.CreateStream(t.Context(), ssfreceiver.StreamRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{pushed.StreamID, polled.StreamID} {
		if err := siem.RequestVerification(t.Context(), s, "another state"); err != nil {
			t.Fatal(err)
		}
	}
	poller, err := siem.NewPoller(polled, in.take)
	if err != nil {
		t.Fatal(err)
	}
	failed := func(stream string) error {
		if v := scrapeValue(t, e.app, "tokend_ssf_sets_failed_total", "stream", stream); v != 1 {
			return fmt.Errorf("stream %s: %v SETs given up", stream, v)
		}
		return nil
	}
	eventstest.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error { return failed(pushed.StreamID) })
	eventstest.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		if _, _, err := poller.Poll(t.Context(), true); err != nil {
			return err
		}
		return failed(polled.StreamID)
	})
	fresh, err := siem.NewPoller(polled, in.take)
	if err != nil {
		t.Fatal(err)
	}
	if again, _, err := fresh.Poll(t.Context(), true); err != nil || len(again) != 0 || len(in.taken()) != 0 {
		t.Fatalf("after the refusal: %+v %v, taken %+v", again, err, in.taken())
	}
}
