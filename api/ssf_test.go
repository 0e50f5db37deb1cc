package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events"
	"github.com/tokend/tokend/events/eventstest"
	"github.com/tokend/tokend/keys"
	"github.com/tokend/tokend/signals"
)

// recordingOutbox keeps the deployment events appended, or refuses them
// with err.
type recordingOutbox struct {
	mu  sync.Mutex
	got []events.DeploymentEvent
	err error
}

func (r *recordingOutbox) AppendDeployment(_ context.Context, ev events.DeploymentEvent) (uint64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil {
		return 0, r.err
	}
	r.got = append(r.got, ev)
	return uint64(len(r.got)), nil
}

func (r *recordingOutbox) events() []events.DeploymentEvent {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.got)
}

// ssfClock is the test's clock, moved by hand.
type ssfClock struct{ offset atomic.Int64 }

func (c *ssfClock) now() time.Time          { return receiverNow.Add(time.Duration(c.offset.Load())) }
func (c *ssfClock) advance(d time.Duration) { c.offset.Add(int64(d)) }

// ssfEnv is an OAuth listener with the SSF transmitter on a real stream
// store, receivers rp-1 and rp-2 (own events) and siem (all).
type ssfEnv struct {
	o       *OAuth
	handler http.Handler
	store   *signals.Store
	outbox  *recordingOutbox
	poller  *stubPoller
	clock   *ssfClock
	logs    *lockedBuffer
	metrics *Metrics
}

func mustSSFEnv(t *testing.T) *ssfEnv {
	t.Helper()
	_, js := eventstest.MustJS(t)
	ring, err := keys.OpenKeyring(t.Context(), js, 1, keys.Lifetimes{Refresh: time.Hour, Access: 5 * time.Minute}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	store, err := signals.Open(t.Context(), js, signals.Options{Replicas: 1, Keys: ring.Loaded()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(store.Stop)
	e := &ssfEnv{store: store, outbox: &recordingOutbox{}, poller: &stubPoller{}, clock: &ssfClock{}, logs: &lockedBuffer{},
		metrics: NewMetrics(prometheus.NewRegistry())}
	rp := func(id string, r domain.ReceiverRole) domain.Client {
		return domain.Client{ID: id, Type: domain.ClientConfidential, AuthMethod: domain.AuthSecretBasic, Receiver: r}
	}
	clients := receiverDirectory{"rp-1": rp("rp-1", domain.ReceiverOwn), "rp-2": rp("rp-2", domain.ReceiverOwn),
		"siem": rp("siem", domain.ReceiverAll), "web": rp("web", domain.ReceiverNone)}
	s := &Service{Access: mustReceiverTokens(t, 5*time.Minute), Now: e.clock.now, Streams: store, Outbox: e.outbox, Metrics: e.metrics}
	e.o = NewOAuth(s, clients, receiverIssuer, nil, slog.New(slog.NewTextHandler(e.logs, nil)))
	e.o.polls = e.poller
	e.handler = e.o.Handler()
	return e
}

// token returns an access token of client's with scope (both SSF scopes
// if none).
func (e *ssfEnv) token(t *testing.T, client string, scope ...string) string {
	t.Helper()
	if len(scope) == 0 {
		scope = domain.ReceiverScopes
	}
	tok, _, err := e.o.svc.Access.MintReceiverToken(domain.Client{ID: client}, scope, e.clock.now())
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

type ssfResponse struct {
	code   int
	header http.Header
	body   string
}

func (r ssfResponse) json(t *testing.T, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(r.body), v); err != nil {
		t.Fatalf("%d %q: %v", r.code, r.body, err)
	}
}

// do sends method path with token (none if "") and body.
func (e *ssfEnv) do(t *testing.T, method, path, token, body string) ssfResponse {
	t.Helper()
	r := httptest.NewRequest(method, path, strings.NewReader(body))
	if body != "" {
		r.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		r.Header.Set("Authorization", "Bearer "+token)
	}
	w := httptest.NewRecorder()
	e.handler.ServeHTTP(w, r)
	return ssfResponse{w.Code, w.Header(), w.Body.String()}
}

// wantError checks an SSF error: status, the error code, no-store.
func wantSSFError(t *testing.T, r ssfResponse, status int, code string) {
	t.Helper()
	var body map[string]string
	if r.code != status || json.Unmarshal([]byte(r.body), &body) != nil || body["error"] != code || body["error_description"] == "" ||
		r.header.Get("Cache-Control") != "no-store" {
		t.Fatalf("want %d %s, got %d %v %q", status, code, r.code, r.header, r.body)
	}
}

// create makes a stream for client from body and returns its id.
func (e *ssfEnv) create(t *testing.T, client, body string) string {
	t.Helper()
	r := e.do(t, http.MethodPost, PathSSFStream, e.token(t, client), body)
	if r.code != http.StatusCreated {
		t.Fatalf("create: %d %s", r.code, r.body)
	}
	var c signals.Config
	r.json(t, &c)
	return c.StreamID
}

func (e *ssfEnv) stored(t *testing.T, id string) signals.Stream {
	t.Helper()
	st, err := e.store.Get(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func (e *ssfEnv) requests(t *testing.T, endpoint, outcome string) float64 {
	t.Helper()
	var m dto.Metric
	if err := e.metrics.oauthRequests.WithLabelValues(endpoint, outcome).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

const pushBody = `{"delivery": {"method": "urn:ietf:rfc:8935", "endpoint_url": "https://rp.example/ssf",
	"authorization_header": "Bearer rp-push-secret"}, "description": "prod"}`

// TestSSFConfiguration: the transmitter metadata of SSF 1.0 section 7.1,
// with every field the CAEP interoperability profile requires, public and
// cacheable.
func TestSSFConfiguration(t *testing.T) {
	e := mustSSFEnv(t)
	r := e.do(t, http.MethodGet, PathSSFConfiguration, "", "")
	if r.code != http.StatusOK || r.header.Get("Content-Type") != "application/json" || r.header.Get("Cache-Control") != "public, max-age=300" {
		t.Fatalf("%d %v", r.code, r.header)
	}
	var got map[string]any
	r.json(t, &got)
	want := map[string]any{
		"spec_version":               "1_0",
		"issuer":                     receiverIssuer,
		"jwks_uri":                   receiverIssuer + "/.well-known/jwks.json",
		"delivery_methods_supported": []any{"urn:ietf:rfc:8935", "urn:ietf:rfc:8936"},
		"configuration_endpoint":     receiverIssuer + "/ssf/stream",
		"status_endpoint":            receiverIssuer + "/ssf/status",
		"add_subject_endpoint":       receiverIssuer + "/ssf/subjects:add",
		"remove_subject_endpoint":    receiverIssuer + "/ssf/subjects:remove",
		"verification_endpoint":      receiverIssuer + "/ssf/verify",
		"authorization_schemes":      []any{map[string]any{"spec_urn": "urn:ietf:rfc:6749"}},
		"default_subjects":           "ALL",
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("metadata\n got %v\nwant %v", got, want)
	}

	// Without a stream store there is no transmitter.
	bare := NewOAuth(&Service{Access: e.o.svc.Access, Now: e.clock.now}, receiverDirectory{}, receiverIssuer, nil, slog.New(slog.DiscardHandler))
	for _, path := range []string{PathSSFConfiguration, PathSSFStream} {
		w := httptest.NewRecorder()
		bare.Handler().ServeHTTP(w, httptest.NewRequest(http.MethodGet, path, nil))
		if w.Code != http.StatusNotFound {
			t.Fatalf("%s without a stream store: %d", path, w.Code)
		}
	}
}

// TestSSFStreamLifecycle: create (push; poll by default), read, list,
// update, replace and delete, as SSF 1.0 section 8.1.1 says.
func TestSSFStreamLifecycle(t *testing.T) {
	e := mustSSFEnv(t)
	tok := e.token(t, "rp-1")

	r := e.do(t, http.MethodPost, PathSSFStream, tok, pushBody)
	if r.code != http.StatusCreated || r.header.Get("Content-Type") != "application/json" || r.header.Get("Cache-Control") != "no-store" {
		t.Fatalf("create: %d %v %s", r.code, r.header, r.body)
	}
	var push map[string]any
	r.json(t, &push)
	id, _ := push["stream_id"].(string)
	supported := make([]any, len(signals.EventsSupported))
	for i, s := range signals.EventsSupported {
		supported[i] = s
	}
	want := map[string]any{"stream_id": id, "iss": receiverIssuer, "aud": "rp-1",
		"delivery":         map[string]any{"method": "urn:ietf:rfc:8935", "endpoint_url": "https://rp.example/ssf"},
		"events_supported": supported, "events_delivered": supported, "min_verification_interval": float64(30), "description": "prod"}
	if !signals.ValidStreamID(id) || fmt.Sprint(push) != fmt.Sprint(want) {
		t.Fatalf("created\n got %v\nwant %v", push, want)
	}

	// No delivery: a poll stream, polled at tokend's endpoint for it.
	r = e.do(t, http.MethodPost, PathSSFStream, tok, "")
	var poll signals.Config
	r.json(t, &poll)
	if r.code != http.StatusCreated || poll.Delivery != (signals.Delivery{Method: signals.DeliveryPoll, EndpointURL: receiverIssuer + "/ssf/poll/" + poll.StreamID}) {
		t.Fatalf("create without delivery: %d %s", r.code, r.body)
	}
	e.create(t, "rp-2", "")

	r = e.do(t, http.MethodGet, PathSSFStream+"?stream_id="+id, e.token(t, "rp-1", domain.ScopeSSFRead), "")
	var read map[string]any
	r.json(t, &read)
	if r.code != http.StatusOK || fmt.Sprint(read) != fmt.Sprint(want) || r.header.Get("Cache-Control") != "no-store" {
		t.Fatalf("read: %d %s", r.code, r.body)
	}
	r = e.do(t, http.MethodGet, PathSSFStream, tok, "")
	var list []signals.Config
	r.json(t, &list)
	if r.code != http.StatusOK || len(list) != 2 || list[0].StreamID != id || list[1].StreamID != poll.StreamID {
		t.Fatalf("list of rp-1: %d %s", r.code, r.body)
	}
	if r := e.do(t, http.MethodGet, PathSSFStream, e.token(t, "siem"), ""); r.code != http.StatusOK || r.body != "[]\n" {
		t.Fatalf("list without streams: %d %q", r.code, r.body)
	}

	// PATCH sets what it sends; the transmitter-supplied members it echoes
	// must match, and unknown members are ignored.
	patch := `{"stream_id": "` + id + `", "events_requested": ["` + signals.TypeSessionRevoked + `", "urn:example:unknown"],
		"iss": "` + receiverIssuer + `", "aud": ["rp-1"], "events_delivered": ` + toJSON(t, signals.EventsSupported) + `,
		"min_verification_interval": 30, "later_member": {"x": 1}}`
	r = e.do(t, http.MethodPatch, PathSSFStream, tok, patch)
	var patched signals.Config
	r.json(t, &patched)
	if r.code != http.StatusOK || patched.Description != "prod" || !slices.Equal(patched.EventsDelivered, []string{signals.TypeSessionRevoked}) ||
		!slices.Equal(patched.EventsRequested, []string{signals.TypeSessionRevoked, "urn:example:unknown"}) || patched.Delivery.Method != signals.DeliveryPush {
		t.Fatalf("patch: %d %s", r.code, r.body)
	}

	// PUT resets what it leaves out: no delivery is poll, no description.
	r = e.do(t, http.MethodPut, PathSSFStream, tok, `{"stream_id": "`+id+`", "events_requested": ["`+signals.TypeCredentialCompromise+`"]}`)
	var replaced signals.Config
	r.json(t, &replaced)
	if r.code != http.StatusOK || replaced.Description != "" || replaced.Delivery.Method != signals.DeliveryPoll ||
		replaced.Delivery.EndpointURL != receiverIssuer+"/ssf/poll/"+id || !slices.Equal(replaced.EventsDelivered, []string{signals.TypeCredentialCompromise}) {
		t.Fatalf("put: %d %s", r.code, r.body)
	}
	// Sending back a poll stream's configuration as read is a valid PUT.
	r = e.do(t, http.MethodPut, PathSSFStream, tok, toJSON(t, replaced))
	if r.code != http.StatusOK {
		t.Fatalf("put of the configuration read: %d %s", r.code, r.body)
	}

	if r := e.do(t, http.MethodDelete, PathSSFStream+"?stream_id="+id, tok, ""); r.code != http.StatusNoContent || r.body != "" {
		t.Fatalf("delete: %d %q", r.code, r.body)
	}
	wantSSFError(t, e.do(t, http.MethodGet, PathSSFStream+"?stream_id="+id, tok, ""), http.StatusNotFound, "not_found")
	wantSSFError(t, e.do(t, http.MethodDelete, PathSSFStream+"?stream_id="+id, tok, ""), http.StatusNotFound, "not_found")
	if !strings.Contains(e.logs.String(), `msg="ssf stream created" client_id=rp-1 stream_id=`+id) ||
		!strings.Contains(e.logs.String(), `msg="ssf stream deleted" client_id=rp-1 stream_id=`+id) {
		t.Fatalf("creation and deletion not logged:\n%s", e.logs)
	}
	if got := e.requests(t, "ssf_config", "ok"); got != 10 {
		t.Fatalf("tokend_oauth_requests_total{endpoint=ssf_config,outcome=ok} = %v, want 10", got)
	}
	if got := e.requests(t, "ssf_config", "not_found"); got != 2 {
		t.Fatalf("tokend_oauth_requests_total{endpoint=ssf_config,outcome=not_found} = %v, want 2", got)
	}
}

func toJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestSSFAuthorizationHeaderIsWriteOnly: a push stream's
// authorization_header is never in an answer, survives a change that
// sends the same delivery without it, and is never carried to another
// endpoint.
func TestSSFAuthorizationHeaderIsWriteOnly(t *testing.T) {
	e := mustSSFEnv(t)
	tok := e.token(t, "rp-1")
	const secret = "rp-push-secret"
	r := e.do(t, http.MethodPost, PathSSFStream, tok, pushBody)
	var c signals.Config
	r.json(t, &c)
	id := c.StreamID
	answers := []ssfResponse{r,
		e.do(t, http.MethodGet, PathSSFStream+"?stream_id="+id, tok, ""),
		e.do(t, http.MethodGet, PathSSFStream, tok, ""),
		e.do(t, http.MethodPatch, PathSSFStream, tok, `{"stream_id": "`+id+`", "description": "renamed"}`),
	}
	for _, a := range answers {
		if a.code/100 != 2 || strings.Contains(a.body, secret) || strings.Contains(a.body, "authorization_header") {
			t.Fatalf("an answer shows the authorization header: %d %s", a.code, a.body)
		}
	}
	header := func() string {
		t.Helper()
		secrets, err := e.store.DeliverySecrets(e.stored(t, id))
		if err != nil {
			t.Fatal(err)
		}
		return secrets.Authorization
	}
	if header() != "Bearer "+secret {
		t.Fatalf("stored header %q", header())
	}
	// Read, change, send back: the header is kept.
	var read signals.Config
	e.do(t, http.MethodGet, PathSSFStream+"?stream_id="+id, tok, "").json(t, &read)
	read.Description = "again"
	if r := e.do(t, http.MethodPut, PathSSFStream, tok, toJSON(t, read)); r.code != http.StatusOK || header() != "Bearer "+secret {
		t.Fatalf("put of the configuration read: %d %s, header %q", r.code, r.body, header())
	}
	// A new header replaces it; "" removes it.
	e.do(t, http.MethodPatch, PathSSFStream, tok, `{"stream_id": "`+id+`", "delivery": {"method": "urn:ietf:rfc:8935",
		"endpoint_url": "https://rp.example/ssf", "authorization_header": "Bearer other"}}`)
	if header() != "Bearer other" {
		t.Fatalf("header after a new one: %q", header())
	}
	// Another endpoint never gets the old header.
	e.do(t, http.MethodPatch, PathSSFStream, tok, `{"stream_id": "`+id+`", "delivery": {"method": "urn:ietf:rfc:8935", "endpoint_url": "https://elsewhere.example/ssf"}}`)
	if st := e.stored(t, id); st.Delivery.EndpointURL != "https://elsewhere.example/ssf" || header() != "" {
		t.Fatalf("moved: %+v", st.Delivery)
	}
	e.do(t, http.MethodPatch, PathSSFStream, tok, `{"stream_id": "`+id+`", "delivery": {"method": "urn:ietf:rfc:8935",
		"endpoint_url": "https://elsewhere.example/ssf", "authorization_header": "Bearer third"}}`)
	e.do(t, http.MethodPatch, PathSSFStream, tok, `{"stream_id": "`+id+`", "delivery": {"method": "urn:ietf:rfc:8935",
		"endpoint_url": "https://elsewhere.example/ssf", "authorization_header": ""}}`)
	if header() != "" {
		t.Fatalf("header after an empty one: %q", header())
	}
	if strings.Contains(e.logs.String(), secret) {
		t.Fatal("the authorization header reached the log")
	}
}

// TestSSFOtherReceiversStreamIsNotFound: a receiver neither reads nor
// changes another's stream, and cannot tell it from one that does not
// exist: both are the same 404.
func TestSSFOtherReceiversStreamIsNotFound(t *testing.T) {
	e := mustSSFEnv(t)
	push := e.create(t, "rp-1", pushBody)
	poll := e.create(t, "rp-1", "")
	before := e.stored(t, push)
	other := e.token(t, "rp-2")
	const missing = "00000000000000000000000000000000"
	subject := `"subject": {"format": "opaque", "id": "x"}`
	for _, tc := range []struct{ method, path, body string }{
		{http.MethodGet, PathSSFStream + "?stream_id=%s", ""},
		{http.MethodPatch, PathSSFStream, `{"stream_id": "%s", "description": "mine now"}`},
		{http.MethodPut, PathSSFStream, `{"stream_id": "%s"}`},
		{http.MethodDelete, PathSSFStream + "?stream_id=%s", ""},
		{http.MethodGet, PathSSFStatus + "?stream_id=%s", ""},
		{http.MethodPost, PathSSFStatus, `{"stream_id": "%s", "status": "disabled"}`},
		{http.MethodPost, PathSSFSubjectsAdd, `{"stream_id": "%s", ` + subject + `}`},
		{http.MethodPost, PathSSFSubjectsRemove, `{"stream_id": "%s", ` + subject + `}`},
		{http.MethodPost, PathSSFVerify, `{"stream_id": "%s"}`},
		{http.MethodPost, PathSSFPoll + "%s", `{}`},
	} {
		id := push
		if strings.HasPrefix(tc.path, PathSSFPoll) {
			id = poll
		}
		format := func(id string) (string, string) {
			return strings.ReplaceAll(tc.path, "%s", id), strings.ReplaceAll(tc.body, "%s", id)
		}
		path, body := format(id)
		theirs := e.do(t, tc.method, path, other, body)
		path, body = format(missing)
		none := e.do(t, tc.method, path, other, body)
		wantSSFError(t, theirs, http.StatusNotFound, "not_found")
		if theirs.body != none.body || none.code != http.StatusNotFound {
			t.Fatalf("%s %s: another's stream answers %q, a missing one %d %q", tc.method, tc.path, theirs.body, none.code, none.body)
		}
	}
	if after := e.stored(t, push); after.Revision != before.Revision {
		t.Fatalf("another receiver changed the stream: %+v", after)
	}
	if len(e.outbox.events()) != 0 || len(e.poller.polls()) != 0 {
		t.Fatal("another receiver verified or polled the stream")
	}
	if !strings.Contains(e.logs.String(), `msg="ssf request refused: the stream is not the receiver's" client_id=rp-2 stream_id=`+push) {
		t.Fatalf("refusal not logged:\n%s", e.logs)
	}
}

// TestSSFAuthentication: every management and poll endpoint takes a
// receiver's bearer token with the scope it needs (reads ssf.read,
// changes and polls ssf.manage), and refuses others as RFC 6750 says.
func TestSSFAuthentication(t *testing.T) {
	e := mustSSFEnv(t)
	id := e.create(t, "rp-1", "")
	before := e.stored(t, id)
	read := e.token(t, "rp-1", domain.ScopeSSFRead)
	manage := e.token(t, "rp-1", domain.ScopeSSFManage)
	notReceiver := e.token(t, "web")
	for _, tc := range []struct {
		method, path, body, endpoint string
		readOnly                     bool
	}{
		{http.MethodPost, PathSSFStream, "", "ssf_config", false},
		{http.MethodGet, PathSSFStream, "", "ssf_config", true},
		{http.MethodGet, PathSSFStream + "?stream_id=" + id, "", "ssf_config", true},
		{http.MethodPatch, PathSSFStream, `{"stream_id": "` + id + `"}`, "ssf_config", false},
		{http.MethodPut, PathSSFStream, `{"stream_id": "` + id + `"}`, "ssf_config", false},
		{http.MethodDelete, PathSSFStream + "?stream_id=" + id, "", "ssf_config", false},
		{http.MethodGet, PathSSFStatus + "?stream_id=" + id, "", "ssf_status", true},
		{http.MethodPost, PathSSFStatus, `{"stream_id": "` + id + `", "status": "enabled"}`, "ssf_status", false},
		{http.MethodPost, PathSSFSubjectsAdd, `{"stream_id": "` + id + `", "subject": {"format": "opaque", "id": "x"}}`, "ssf_subjects", false},
		{http.MethodPost, PathSSFSubjectsRemove, `{"stream_id": "` + id + `", "subject": {"format": "opaque", "id": "x"}}`, "ssf_subjects", false},
		{http.MethodPost, PathSSFVerify, `{"stream_id": "` + id + `"}`, "ssf_verify", false},
		{http.MethodPost, PathSSFPoll + id, `{"returnImmediately": true}`, "ssf_poll", false},
	} {
		name := tc.method + " " + tc.path
		r := e.do(t, tc.method, tc.path, "", tc.body)
		if r.code != http.StatusUnauthorized || r.header.Get("WWW-Authenticate") != `Bearer realm="tokend"` {
			t.Fatalf("%s without a token: %d %v", name, r.code, r.header)
		}
		wantSSFError(t, e.do(t, tc.method, tc.path, "not-a-token", tc.body), http.StatusUnauthorized, "invalid_token")
		wantSSFError(t, e.do(t, tc.method, tc.path, notReceiver, tc.body), http.StatusUnauthorized, "invalid_token")
		if !tc.readOnly {
			r := e.do(t, tc.method, tc.path, read, tc.body)
			wantSSFError(t, r, http.StatusForbidden, "insufficient_scope")
			if !strings.Contains(r.header.Get("WWW-Authenticate"), `scope="ssf.manage"`) {
				t.Fatalf("%s: challenge %q", name, r.header.Get("WWW-Authenticate"))
			}
		} else if r := e.do(t, tc.method, tc.path, read, tc.body); r.code != http.StatusOK {
			t.Fatalf("%s with ssf.read: %d %s", name, r.code, r.body)
		}
		// A token in the query is refused even with a valid header.
		sep := "?"
		if strings.Contains(tc.path, "?") {
			sep = "&"
		}
		wantSSFError(t, e.do(t, tc.method, tc.path+sep+"access_token="+manage, manage, tc.body), http.StatusBadRequest, "invalid_request")
		if got := e.requests(t, tc.endpoint, "no_token"); got == 0 {
			t.Fatalf("%s: no_token not counted under %s", name, tc.endpoint)
		}
	}
	if e.stored(t, id).Revision != before.Revision || len(e.outbox.events()) != 0 || len(e.poller.polls()) != 0 {
		t.Fatal("a refused request changed, verified or polled the stream")
	}
	if e.requests(t, "ssf_verify", "insufficient_scope") != 1 || e.requests(t, "ssf_poll", "invalid_token") != 2 {
		t.Fatal("refusals not counted by their error code")
	}
}

// TestSSFBadRequests: bodies and parameters the endpoints refuse, 400
// invalid_request, changing nothing.
func TestSSFBadRequests(t *testing.T) {
	e := mustSSFEnv(t)
	tok := e.token(t, "rp-1")
	id := e.create(t, "rp-1", pushBody)
	poll := e.create(t, "rp-1", "")
	before := e.stored(t, id)
	s := func(body string) string { return strings.ReplaceAll(body, "ID", id) }
	for _, tc := range []struct {
		name, method, path, body string
	}{
		{"not JSON", http.MethodPost, PathSSFStream, `delivery=poll`},
		{"an array", http.MethodPost, PathSSFStream, `[]`},
		{"null", http.MethodPost, PathSSFStream, `null`},
		{"data after the object", http.MethodPost, PathSSFStream, `{} {}`},
		{"not UTF-8", http.MethodPost, PathSSFStream, "{\"description\": \"\xff\"}"},
		{"too large", http.MethodPost, PathSSFStream, `{"description": "` + strings.Repeat("x", maxSSFBody) + `"}`},
		{"wrong type", http.MethodPost, PathSSFStream, `{"events_requested": "all"}`},
		{"delivery without method", http.MethodPost, PathSSFStream, `{"delivery": {"endpoint_url": "https://rp.example/ssf"}}`},
		{"unknown method", http.MethodPost, PathSSFStream, `{"delivery": {"method": "urn:example:carrier-pigeon"}}`},
		{"webhook", http.MethodPost, PathSSFStream, `{"delivery": {"method": "urn:tokend:webhook", "endpoint_url": "https://rp.example/ssf"}}`},
		{"push over http", http.MethodPost, PathSSFStream, `{"delivery": {"method": "urn:ietf:rfc:8935", "endpoint_url": "http://rp.example/ssf"}}`},
		{"push without endpoint", http.MethodPost, PathSSFStream, `{"delivery": {"method": "urn:ietf:rfc:8935"}}`},
		{"read: stream_id twice", http.MethodGet, PathSSFStream + s("?stream_id=ID&stream_id=ID"), ""},
		{"patch without stream_id", http.MethodPatch, PathSSFStream, `{"description": "x"}`},
		{"patch: iss", http.MethodPatch, PathSSFStream, s(`{"stream_id": "ID", "iss": "https://other.example"}`)},
		{"patch: aud", http.MethodPatch, PathSSFStream, s(`{"stream_id": "ID", "aud": "rp-2"}`)},
		{"patch: events_supported", http.MethodPatch, PathSSFStream, s(`{"stream_id": "ID", "events_supported": []}`)},
		{"patch: events_delivered", http.MethodPatch, PathSSFStream, s(`{"stream_id": "ID", "events_delivered": ["urn:example:x"]}`)},
		{"patch: min_verification_interval", http.MethodPatch, PathSSFStream, s(`{"stream_id": "ID", "min_verification_interval": 1}`)},
		{"patch: inactivity_timeout", http.MethodPatch, PathSSFStream, s(`{"stream_id": "ID", "inactivity_timeout": 3600}`)},
		{"put: a poll endpoint not tokend's", http.MethodPut, PathSSFStream, s(`{"stream_id": "ID", "delivery": {"method": "urn:ietf:rfc:8936", "endpoint_url": "https://rp.example/poll"}}`)},
		{"put: control characters", http.MethodPut, PathSSFStream, s(`{"stream_id": "ID", "description": "a\u0007b"}`)},
		{"delete without stream_id", http.MethodDelete, PathSSFStream, ""},
		{"status without stream_id", http.MethodGet, PathSSFStatus, ""},
		{"status: unknown", http.MethodPost, PathSSFStatus, s(`{"stream_id": "ID", "status": "stopped"}`)},
		{"status: none", http.MethodPost, PathSSFStatus, s(`{"stream_id": "ID"}`)},
		{"status: reason too long", http.MethodPost, PathSSFStatus, s(`{"stream_id": "ID", "status": "paused", "reason": "` + strings.Repeat("x", 257) + `"}`)},
		{"status: no stream_id", http.MethodPost, PathSSFStatus, `{"status": "paused"}`},
		{"subject: none", http.MethodPost, PathSSFSubjectsAdd, s(`{"stream_id": "ID"}`)},
		{"subject: null", http.MethodPost, PathSSFSubjectsRemove, s(`{"stream_id": "ID", "subject": null}`)},
		{"subject: unknown format", http.MethodPost, PathSSFSubjectsAdd, s(`{"stream_id": "ID", "subject": {"format": "nickname", "nickname": "x"}}`)},
		{"subject: unknown member", http.MethodPost, PathSSFSubjectsRemove, s(`{"stream_id": "ID", "subject": {"format": "opaque", "id": "x", "tenant_id": "y"}}`)},
		{"subject: no stream_id", http.MethodPost, PathSSFSubjectsRemove, `{"subject": {"format": "opaque", "id": "x"}}`},
		{"verify: no stream_id", http.MethodPost, PathSSFVerify, `{"state": "x"}`},
		{"verify: state too long", http.MethodPost, PathSSFVerify, s(`{"stream_id": "ID", "state": "` + strings.Repeat("x", 257) + `"}`)},
		{"poll a push stream", http.MethodPost, PathSSFPoll + id, `{}`},
		{"poll: maxEvents negative", http.MethodPost, PathSSFPoll + poll, `{"maxEvents": -1}`},
		{"poll: maxEvents not whole", http.MethodPost, PathSSFPoll + poll, `{"maxEvents": 1.5}`},
		{"poll: maxEvents a string", http.MethodPost, PathSSFPoll + poll, `{"maxEvents": "10"}`},
		{"poll: returnImmediately a string", http.MethodPost, PathSSFPoll + poll, `{"returnImmediately": "true"}`},
		{"poll: an empty ack", http.MethodPost, PathSSFPoll + poll, `{"ack": [""]}`},
		{"poll: ack not strings", http.MethodPost, PathSSFPoll + poll, `{"ack": [1]}`},
		{"poll: too many acks", http.MethodPost, PathSSFPoll + poll, `{"ack": ` + toJSON(t, slices.Repeat([]string{"j"}, maxPollAcks+1)) + `}`},
		{"poll: setErrs without err", http.MethodPost, PathSSFPoll + poll, `{"setErrs": {"j1": {"description": "bad"}}}`},
		{"poll: setErrs description too long", http.MethodPost, PathSSFPoll + poll, `{"setErrs": {"j1": {"err": "invalid_key", "description": "` + strings.Repeat("x", maxSetErrDescription+1) + `"}}}`},
		{"poll: body too large", http.MethodPost, PathSSFPoll + poll, `{"ack": ["` + strings.Repeat("x", maxPollBody) + `"]}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wantSSFError(t, e.do(t, tc.method, tc.path, tok, tc.body), http.StatusBadRequest, "invalid_request")
		})
	}
	if after := e.stored(t, id); after.Revision != before.Revision {
		t.Fatalf("a refused request changed the stream: %+v", after)
	}
	if list, _ := e.store.List(t.Context(), "rp-1"); len(list) != 2 {
		t.Fatalf("a refused create made a stream: %d streams", len(list))
	}
	if len(e.outbox.events()) != 0 || len(e.poller.polls()) != 0 {
		t.Fatal("a refused request verified or polled")
	}
}

// TestSSFTooManyStreams: past the store's limit a receiver's create is
// 409 (SSF 1.0 section 8.1.1.1); another receiver still creates.
func TestSSFTooManyStreams(t *testing.T) {
	e := mustSSFEnv(t)
	for range signals.MaxStreamsPerReceiver {
		e.create(t, "rp-1", "")
	}
	wantSSFError(t, e.do(t, http.MethodPost, PathSSFStream, e.token(t, "rp-1"), ""), http.StatusConflict, "invalid_request")
	e.create(t, "rp-2", "")
}

// TestSSFStatus: a receiver reads its stream's status and enables, pauses
// or disables it with a reason; asked by the receiver, that records no
// stream-updated event.
func TestSSFStatus(t *testing.T) {
	e := mustSSFEnv(t)
	tok := e.token(t, "rp-1")
	id := e.create(t, "rp-1", "")
	status := func() map[string]any {
		t.Helper()
		var got map[string]any
		r := e.do(t, http.MethodGet, PathSSFStatus+"?stream_id="+id, e.token(t, "rp-1", domain.ScopeSSFRead), "")
		r.json(t, &got)
		if r.code != http.StatusOK {
			t.Fatalf("read status: %d %s", r.code, r.body)
		}
		return got
	}
	if got := status(); fmt.Sprint(got) != fmt.Sprint(map[string]any{"stream_id": id, "status": "enabled"}) {
		t.Fatalf("status %v", got)
	}
	for _, tc := range []struct{ status, reason string }{{"paused", "maintenance window"}, {"disabled", ""}, {"enabled", ""}} {
		r := e.do(t, http.MethodPost, PathSSFStatus, tok, `{"stream_id": "`+id+`", "status": "`+tc.status+`", "reason": "`+tc.reason+`"}`)
		want := map[string]any{"stream_id": id, "status": tc.status}
		if tc.reason != "" {
			want["reason"] = tc.reason
		}
		var got map[string]any
		r.json(t, &got)
		if r.code != http.StatusOK || fmt.Sprint(got) != fmt.Sprint(want) || fmt.Sprint(status()) != fmt.Sprint(want) {
			t.Fatalf("set %s: %d %s", tc.status, r.code, r.body)
		}
		if st := e.stored(t, id); string(st.Status) != tc.status || st.Reason != tc.reason {
			t.Fatalf("stored %s %q", st.Status, st.Reason)
		}
	}
	if len(e.outbox.events()) != 0 {
		t.Fatalf("a receiver's own status change recorded %v", e.outbox.events())
	}
	if e.requests(t, "ssf_status", "ok") != 7 {
		t.Fatal("status requests not counted under ssf_status")
	}
}

// TestSSFSubjects: removing a subject stops its events (the stream keeps
// it), adding it back undoes that; add answers an empty 200, remove 204.
func TestSSFSubjects(t *testing.T) {
	e := mustSSFEnv(t)
	tok := e.token(t, "rp-1")
	id := e.create(t, "rp-1", "")
	const user = `{"format": "iss_sub", "iss": "https://tokend.example", "sub": "user-42"}`
	r := e.do(t, http.MethodPost, PathSSFSubjectsRemove, tok, `{"stream_id": "`+id+`", "subject": `+user+`}`)
	if r.code != http.StatusNoContent || r.body != "" {
		t.Fatalf("remove: %d %q", r.code, r.body)
	}
	if got := e.stored(t, id).ExcludedSubjects; len(got) != 1 || !got[0].Equal(signals.IssSub("https://tokend.example", "user-42")) {
		t.Fatalf("removed subjects %+v", got)
	}
	r = e.do(t, http.MethodPost, PathSSFSubjectsAdd, tok, `{"stream_id": "`+id+`", "subject": `+user+`, "verified": true}`)
	if r.code != http.StatusOK || r.body != "" || r.header.Get("Cache-Control") != "no-store" {
		t.Fatalf("add: %d %q", r.code, r.body)
	}
	if got := e.stored(t, id).ExcludedSubjects; len(got) != 0 {
		t.Fatalf("removed subjects after adding back %+v", got)
	}
	// Adding a subject never removed changes nothing, and is no error.
	rev := e.stored(t, id).Revision
	if r := e.do(t, http.MethodPost, PathSSFSubjectsAdd, tok, `{"stream_id": "`+id+`", "subject": {"format": "opaque", "id": "x"}}`); r.code != http.StatusOK ||
		e.stored(t, id).Revision != rev {
		t.Fatalf("add of a subject never removed: %d, revision %d -> %d", r.code, rev, e.stored(t, id).Revision)
	}
	if e.requests(t, "ssf_subjects", "ok") != 3 {
		t.Fatal("subject requests not counted under ssf_subjects")
	}
}

// TestSSFVerification: a verification request records ssf.verification
// for the stream with the receiver's state, at most one per
// min_verification_interval (else 429 with Retry-After); a disabled
// stream is refused, and an outbox that fails is 503.
func TestSSFVerification(t *testing.T) {
	e := mustSSFEnv(t)
	tok := e.token(t, "rp-1")
	id := e.create(t, "rp-1", pushBody)
	verify := func(state string) ssfResponse {
		return e.do(t, http.MethodPost, PathSSFVerify, tok, `{"stream_id": "`+id+`", "state": "`+state+`"}`)
	}
	if r := verify("c3RhdGUtMQ=="); r.code != http.StatusNoContent || r.body != "" {
		t.Fatalf("verify: %d %q", r.code, r.body)
	}
	got := e.outbox.events()
	if want := events.VerificationEvent(id, "c3RhdGUtMQ==", e.clock.now()); len(got) != 1 || got[0].Type != want.Type ||
		got[0].StreamID != id || got[0].State != want.State || !got[0].Time.Equal(want.Time) || got[0].ID == "" {
		t.Fatalf("recorded %+v", got)
	}

	r := verify("again")
	wantSSFError(t, r, http.StatusTooManyRequests, "temporarily_unavailable")
	if r.header.Get("Retry-After") != "30" {
		t.Fatalf("Retry-After %q", r.header.Get("Retry-After"))
	}
	e.clock.advance(29 * time.Second)
	if r := verify("again"); r.code != http.StatusTooManyRequests || r.header.Get("Retry-After") != "1" {
		t.Fatalf("a second early: %d %v", r.code, r.header)
	}
	// Another stream has its own interval.
	other := e.create(t, "rp-1", "")
	if r := e.do(t, http.MethodPost, PathSSFVerify, tok, `{"stream_id": "`+other+`"}`); r.code != http.StatusNoContent {
		t.Fatalf("verify another stream: %d %s", r.code, r.body)
	}
	e.clock.advance(2 * time.Second)
	if r := verify(""); r.code != http.StatusNoContent {
		t.Fatalf("verify after the interval: %d %s", r.code, r.body)
	}
	if got := e.outbox.events(); len(got) != 3 || got[2].State != "" || got[1].StreamID != other {
		t.Fatalf("recorded %+v", got)
	}

	e.clock.advance(VerificationInterval)
	e.do(t, http.MethodPost, PathSSFStatus, tok, `{"stream_id": "`+id+`", "status": "disabled"}`)
	wantSSFError(t, verify("x"), http.StatusBadRequest, "invalid_request")
	e.do(t, http.MethodPost, PathSSFStatus, tok, `{"stream_id": "`+id+`", "status": "paused"}`)
	e.outbox.mu.Lock()
	e.outbox.err = errors.New("stream full")
	e.outbox.mu.Unlock()
	r = verify("x")
	wantSSFError(t, r, http.StatusServiceUnavailable, "temporarily_unavailable")
	if r.header.Get("Retry-After") != "30" || !strings.Contains(e.logs.String(), `level=WARN msg="oauth request unavailable" endpoint=ssf_verify`) {
		t.Fatalf("Retry-After %q; logs:\n%s", r.header.Get("Retry-After"), e.logs)
	}
	if e.requests(t, "ssf_verify", "ok") != 3 || e.requests(t, "ssf_verify", "temporarily_unavailable") != 3 {
		t.Fatal("verifications not counted under ssf_verify")
	}
}

// TestSSFErrorMapping: the stream store's errors as SSF answers them.
func TestSSFErrorMapping(t *testing.T) {
	for _, tc := range []struct {
		err    error
		status int
		code   string
	}{
		{fmt.Errorf("%w: %w", domain.Errorf(domain.ENotFound, "no such stream"), signals.ErrNotFound), http.StatusNotFound, "not_found"},
		{fmt.Errorf("%w: %w", domain.Errorf(domain.EInvalidRequest, "at most 8"), signals.ErrTooManyStreams), http.StatusConflict, "invalid_request"},
		// A delete that raced another change is retried by the receiver.
		{fmt.Errorf("%w: %w", domain.Errorf(domain.EInvalidRequest, "read it again"), signals.ErrRevisionChanged), http.StatusServiceUnavailable, "temporarily_unavailable"},
		{domain.Errorf(domain.EInvalidRequest, "bad"), http.StatusBadRequest, "invalid_request"},
	} {
		e := oauthErrorOf(ssfError(tc.err))
		if e.status != tc.status || e.code != tc.code {
			t.Errorf("%v: %d %s, want %d %s", tc.err, e.status, e.code, tc.status, tc.code)
		}
	}
}
