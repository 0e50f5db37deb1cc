package main

import (
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokend/tokend/events"
	"github.com/tokend/tokend/signals"
)

// ssfCall sends a receiver's SSF request to url with its bearer token.
func ssfCall(t *testing.T, method, url, token, body string) (int, http.Header, []byte) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, raw
}

// receiverToken gets client's SSF access token with client_credentials.
func (e *oauthEnv) receiverToken(t *testing.T, client string, form url.Values) string {
	t.Helper()
	form.Set("grant_type", "client_credentials")
	code, _, body := e.post(t, "/oauth2/token", form, client, e.secret)
	tok, _ := body["access_token"].(string)
	if code != http.StatusOK || tok == "" {
		t.Fatalf("client_credentials for %s: %d %v", client, code, body)
	}
	return tok
}

// TestSSFManagementEndToEnd: a receiver that knows only the issuer gets
// a token with client_credentials, discovers the transmitter, creates a
// push and a poll stream, reads, changes and deletes them, sets a status,
// removes and adds a subject, and asks for a verification, which tokend
// records as ssf.verification in the TOKENS stream for the delivery.
// Another receiver sees none of it.
func TestSSFManagementEndToEnd(t *testing.T) {
	e := mustOAuthEnv(t, nil)
	e.registerReceivers(t)
	tok := e.receiverToken(t, "siem", url.Values{})

	code, header, raw := ssfCall(t, http.MethodGet, e.base+"/.well-known/ssf-configuration", "", "")
	var meta map[string]any
	if err := json.Unmarshal(raw, &meta); err != nil || code != http.StatusOK || header.Get("Content-Type") != "application/json" {
		t.Fatalf("metadata: %d %s", code, raw)
	}
	if meta["issuer"] != e.base || meta["spec_version"] != "1_0" || meta["jwks_uri"] != e.base+"/.well-known/jwks.json" {
		t.Fatalf("metadata %v", meta)
	}
	endpoint := func(name string) string {
		u, _ := meta[name].(string)
		if !strings.HasPrefix(u, e.base+"/") {
			t.Fatalf("%s = %q", name, u)
		}
		return u
	}
	config, status, verify := endpoint("configuration_endpoint"), endpoint("status_endpoint"), endpoint("verification_endpoint")
	add, remove := endpoint("add_subject_endpoint"), endpoint("remove_subject_endpoint")

	create := func(body string) signals.Config {
		t.Helper()
		code, _, raw := ssfCall(t, http.MethodPost, config, tok, body)
		var c signals.Config
		if err := json.Unmarshal(raw, &c); err != nil || code != http.StatusCreated || c.Iss != e.base || len(c.Aud) != 1 || c.Aud[0] != "siem" {
			t.Fatalf("create: %d %s", code, raw)
		}
		return c
	}
	// Push to a receiver on this machine (http is allowed to loopback).
	push := create(`{"delivery": {"method": "urn:ietf:rfc:8935", "endpoint_url": "http://127.0.0.1:9/events",
		"authorization_header": "Bearer push-secret"}, "events_requested": ["` + signals.TypeSessionRevoked + `"]}`)
	poll := create(`{"description": "poller"}`)
	if push.Delivery.AuthorizationHeader != "" || poll.Delivery.Method != signals.DeliveryPoll ||
		poll.Delivery.EndpointURL != e.base+"/ssf/poll/"+poll.StreamID {
		t.Fatalf("deliveries: %+v, %+v", push.Delivery, poll.Delivery)
	}

	code, _, raw = ssfCall(t, http.MethodGet, config, tok, "")
	var list []signals.Config
	if err := json.Unmarshal(raw, &list); err != nil || code != http.StatusOK || len(list) != 2 || strings.Contains(string(raw), "push-secret") {
		t.Fatalf("list: %d %s", code, raw)
	}
	code, _, raw = ssfCall(t, http.MethodPatch, config, tok, `{"stream_id": "`+push.StreamID+`", "description": "siem push"}`)
	var patched signals.Config
	if err := json.Unmarshal(raw, &patched); err != nil || code != http.StatusOK || patched.Description != "siem push" || patched.Delivery.EndpointURL != push.Delivery.EndpointURL {
		t.Fatalf("patch: %d %s", code, raw)
	}
	code, _, raw = ssfCall(t, http.MethodPut, config, tok, `{"stream_id": "`+poll.StreamID+`", "events_requested": ["`+signals.TypeCredentialCompromise+`"]}`)
	var replaced signals.Config
	if err := json.Unmarshal(raw, &replaced); err != nil || code != http.StatusOK || replaced.Description != "" ||
		len(replaced.EventsDelivered) != 1 || replaced.EventsDelivered[0] != signals.TypeCredentialCompromise {
		t.Fatalf("put: %d %s", code, raw)
	}
	code, _, raw = ssfCall(t, http.MethodGet, config+"?stream_id="+push.StreamID, tok, "")
	if code != http.StatusOK || !strings.Contains(string(raw), `"description":"siem push"`) {
		t.Fatalf("read: %d %s", code, raw)
	}

	code, _, raw = ssfCall(t, http.MethodPost, status, tok, `{"stream_id": "`+push.StreamID+`", "status": "paused", "reason": "receiver maintenance"}`)
	if code != http.StatusOK {
		t.Fatalf("pause: %d %s", code, raw)
	}
	code, _, raw = ssfCall(t, http.MethodGet, status+"?stream_id="+push.StreamID, tok, "")
	if code != http.StatusOK || string(raw) != `{"stream_id":"`+push.StreamID+`","status":"paused","reason":"receiver maintenance"}`+"\n" {
		t.Fatalf("status: %d %s", code, raw)
	}

	subject := `"subject": {"format": "iss_sub", "iss": "` + e.base + `", "sub": "user-42"}`
	if code, _, raw := ssfCall(t, http.MethodPost, remove, tok, `{"stream_id": "`+push.StreamID+`", `+subject+`}`); code != http.StatusNoContent {
		t.Fatalf("remove subject: %d %s", code, raw)
	}
	if stored, err := e.app.streams.Get(t.Context(), push.StreamID); err != nil || len(stored.ExcludedSubjects) != 1 {
		t.Fatalf("removed subjects: %+v %v", stored.ExcludedSubjects, err)
	}
	if code, _, raw := ssfCall(t, http.MethodPost, add, tok, `{"stream_id": "`+push.StreamID+`", `+subject+`}`); code != http.StatusOK {
		t.Fatalf("add subject: %d %s", code, raw)
	}

	if code, _, raw := ssfCall(t, http.MethodPost, verify, tok, `{"stream_id": "`+push.StreamID+`", "state": "c3RhdGU="}`); code != http.StatusNoContent {
		t.Fatalf("verify: %d %s", code, raw)
	}
	js, _ := jetstream.New(e.nc)
	stream, err := js.Stream(t.Context(), events.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := stream.GetLastMsgForSubject(t.Context(), events.Subjects{Prefix: "tokens"}.SSF(push.StreamID))
	if err != nil {
		t.Fatalf("no verification event in the stream: %v", err)
	}
	ev, err := events.DecodeDeployment(msg.Data, push.StreamID)
	if err != nil || ev.Type != events.SSFVerification || ev.StreamID != push.StreamID || ev.State != "c3RhdGU=" {
		t.Fatalf("stored %+v %v", ev, err)
	}
	code, header, _ = ssfCall(t, http.MethodPost, verify, tok, `{"stream_id": "`+push.StreamID+`"}`)
	if code != http.StatusTooManyRequests || header.Get("Retry-After") == "" {
		t.Fatalf("a second verification at once: %d %v", code, header)
	}

	// Another receiver, with its own token, sees none of siem's streams.
	other := e.receiverToken(t, "siem-post", url.Values{})
	for _, req := range []struct{ method, url, body string }{
		{http.MethodGet, config + "?stream_id=" + push.StreamID, ""},
		{http.MethodDelete, config + "?stream_id=" + push.StreamID, ""},
		{http.MethodPost, verify, `{"stream_id": "` + poll.StreamID + `"}`},
	} {
		if code, _, raw := ssfCall(t, req.method, req.url, other, req.body); code != http.StatusNotFound {
			t.Fatalf("%s %s by another receiver: %d %s", req.method, req.url, code, raw)
		}
	}
	if code, _, raw := ssfCall(t, http.MethodGet, config, other, ""); code != http.StatusOK || string(raw) != "[]\n" {
		t.Fatalf("another receiver's list: %d %s", code, raw)
	}

	// A token with ssf.read reads, but changes nothing.
	reader := e.receiverToken(t, "siem", url.Values{"scope": {"ssf.read"}})
	if code, _, _ := ssfCall(t, http.MethodGet, config, reader, ""); code != http.StatusOK {
		t.Fatalf("read with ssf.read: %d", code)
	}
	if code, _, _ := ssfCall(t, http.MethodDelete, config+"?stream_id="+push.StreamID, reader, ""); code != http.StatusForbidden {
		t.Fatalf("delete with ssf.read: %d", code)
	}

	if code, _, raw := ssfCall(t, http.MethodDelete, config+"?stream_id="+push.StreamID, tok, ""); code != http.StatusNoContent {
		t.Fatalf("delete: %d %s", code, raw)
	}
	code, _, raw = ssfCall(t, http.MethodGet, config, tok, "")
	if err := json.Unmarshal(raw, &list); err != nil || code != http.StatusOK || len(list) != 1 || list[0].StreamID != poll.StreamID {
		t.Fatalf("list after the delete: %d %s", code, raw)
	}

	if got := scrapeValue(t, e.app, "tokend_oauth_requests_total", "endpoint", "ssf_verify", "outcome", "ok"); got != 1 {
		t.Fatalf(`tokend_oauth_requests_total{endpoint="ssf_verify",outcome="ok"} = %v, want 1`, got)
	}
	if got := scrapeValue(t, e.app, "tokend_oauth_requests_total", "endpoint", "ssf_config", "outcome", "not_found"); got != 2 {
		t.Fatalf(`tokend_oauth_requests_total{endpoint="ssf_config",outcome="not_found"} = %v, want 2`, got)
	}
	if strings.Contains(e.logs.String(), "push-secret") || strings.Contains(e.logs.String(), tok) {
		t.Fatal("a secret or a token reached the log")
	}
}
