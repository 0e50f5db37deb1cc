package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events"
	"github.com/tokend/tokend/events/eventstest"
	"github.com/tokend/tokend/registry"
	"github.com/tokend/tokend/signals"
)

// setReceiver is a push receiver (RFC 8935) that takes every SET.
type setReceiver struct {
	srv  *httptest.Server
	mu   sync.Mutex
	sets []string
	auth []string
}

func newSETReceiver(t *testing.T) *setReceiver {
	rc := &setReceiver{}
	rc.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		rc.mu.Lock()
		rc.sets = append(rc.sets, string(body))
		rc.auth = append(rc.auth, r.Header.Get("Authorization"))
		rc.mu.Unlock()
		w.WriteHeader(http.StatusAccepted)
	}))
	t.Cleanup(rc.srv.Close)
	return rc
}

func (rc *setReceiver) await(t *testing.T, n int) []string {
	t.Helper()
	var got []string
	eventstest.CheckFor(t, 20*time.Second, 10*time.Millisecond, func() error {
		rc.mu.Lock()
		defer rc.mu.Unlock()
		if got = append([]string(nil), rc.sets...); len(got) < n {
			return fmt.Errorf("%d SETs, waiting for %d", len(got), n)
		}
		return nil
	})
	return got
}

// TestSSFPushThroughTokend: tokend delivers a revocation to a push
// stream as a session-revoked SET a receiver verifies against the JWKS
// tokend publishes, and counts it.
func TestSSFPushThroughTokend(t *testing.T) {
	e := mustOAuthEnv(t, nil)
	e.registerReceivers(t) // siem: every event
	rc := newSETReceiver(t)
	st, err := e.app.api.Streams.Create(t.Context(), signals.NewStream{Receiver: "siem", Request: signals.StreamRequest{
		Delivery: &signals.Delivery{Method: signals.DeliveryPush, EndpointURL: rc.srv.URL, AuthorizationHeader: "Bearer siem-inbox"}}})
	if err != nil {
		t.Fatal(err)
	}

	issued := mustIssue(t, e.nc, "user-7", "web")
	if r := call(t, e.nc, "tokens.cmd.revoke", wire.RevokeRequest{FamilyID: &issued.FamilyID}); r.errCode != "" {
		t.Fatalf("revoke: %s", r.raw)
	}
	var txn string
	for _, ev := range familyEvents(t, e.nc, issued.FamilyID) {
		if ev.Type == string(domain.FamilyRevoked) {
			txn = ev.ID
		}
	}

	set := rc.await(t, 1)[0]
	resp, err := http.Get(e.base + "/.well-known/jwks.json")
	if err != nil {
		t.Fatal(err)
	}
	var keys jose.JSONWebKeySet
	err = json.NewDecoder(resp.Body).Decode(&keys)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.ParseSigned(set, []jose.SignatureAlgorithm{jose.RS256})
	if err != nil {
		t.Fatal(err)
	}
	key := keys.Key(tok.Headers[0].KeyID)
	if len(key) != 1 || tok.Headers[0].ExtraHeaders[jose.HeaderType] != signals.SETType {
		t.Fatalf("kid %q typ %v: not a SET signed with a key of the JWKS", tok.Headers[0].KeyID, tok.Headers[0].ExtraHeaders)
	}
	var claims struct {
		jwt.Claims
		Txn    string         `json:"txn"`
		Events map[string]any `json:"events"`
	}
	if err := tok.Claims(key[0].Key, &claims); err != nil {
		t.Fatal(err)
	}
	if err := claims.ValidateWithLeeway(jwt.Expected{Issuer: e.base, AnyAudience: jwt.Audience{"siem"}}, time.Minute); err != nil ||
		claims.Txn != txn || claims.Events[signals.TypeSessionRevoked] == nil {
		t.Fatalf("claims %+v (%v), want the family.revoked %s", claims, err, txn)
	}
	if rc.auth[0] != "Bearer siem-inbox" {
		t.Errorf("Authorization %q", rc.auth[0])
	}

	eventstest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		m := parseMetrics(t, scrape(t, e.app))
		if v := m.value("tokend_ssf_sets_delivered_total", "stream", st.ID); v != 1 {
			return fmt.Errorf("delivered %v", v)
		}
		if v := m.value("tokend_ssf_stream_status", "stream", st.ID, "status", "enabled"); v != 1 {
			return fmt.Errorf("status enabled %v", v)
		}
		return nil
	})
}

// TestSSFDeliveryUnderShippedPermissions: with ops/nats/auth.conf, tokend
// may keep the polled SETs' acknowledgements and acknowledge what it
// delivered, pushed or polled (a push renews its message while it
// retries: several answers to one message).
func TestSSFDeliveryUnderShippedPermissions(t *testing.T) {
	d := mustSecureDeployment(t, func(c *Config) { c.Issuer = "https://tokend.example" })
	siem := domain.Client{ID: "siem", Type: domain.ClientConfidential, AuthMethod: domain.AuthSecretBasic, Receiver: domain.ReceiverAll,
		Scopes: []string{}, Audiences: []string{}}
	if _, err := d.app.Clients().Put(t.Context(), siem, domain.HashClientSecret("siem-secret"), 0, registry.Actor{By: "test"}); err != nil {
		t.Fatal(err)
	}
	rc := newSETReceiver(t)
	pushed, err := d.app.api.Streams.Create(t.Context(), signals.NewStream{Receiver: "siem", Request: signals.StreamRequest{
		Delivery: &signals.Delivery{Method: signals.DeliveryPush, EndpointURL: rc.srv.URL}}})
	if err != nil {
		t.Fatal(err)
	}
	polled, err := d.app.api.Streams.Create(t.Context(), signals.NewStream{Receiver: "siem", Request: signals.StreamRequest{}})
	if err != nil {
		t.Fatal(err)
	}

	issuer, _ := d.connect(t, "issuer")
	admin, _ := d.connect(t, "admin")
	var issued wire.TokenReply
	json.Unmarshal(allowed(t, issuer, "tokens.cmd.issue", map[string]string{"subject": "user-1", "client_id": "web-app"}), &issued)
	allowed(t, admin, "tokens.cmd.revoke", map[string]string{"family_id": issued.FamilyID})

	rc.await(t, 1)
	var got signals.PollResponse
	eventstest.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		var err error
		if got, err = d.app.api.Delivery.Poll(t.Context(), polled, signals.PollRequest{ReturnImmediately: true}); err != nil || len(got.Sets) != 1 {
			return fmt.Errorf("poll: %d SETs, %v", len(got.Sets), err)
		}
		return nil
	})
	for jti := range got.Sets {
		if _, err := d.app.api.Delivery.Poll(t.Context(), polled, signals.PollRequest{Ack: []string{jti}, MaxEvents: new(int)}); err != nil {
			t.Fatal(err)
		}
	}
	js, err := jetstream.New(d.app.nc)
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range []signals.Stream{pushed, polled} {
		eventstest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
			c, err := js.Consumer(t.Context(), events.StreamName, signals.ConsumerName(st.ID))
			if err != nil {
				return err
			}
			info, err := c.Info(t.Context())
			if err != nil || info.NumPending+uint64(info.NumAckPending) != 0 {
				return fmt.Errorf("%s: consumer %+v, %v: not acknowledged", st.Delivery.Method, info, err)
			}
			return nil
		})
	}
}

// TestSSFShowsWhatIsPending: tokenctl ssf streams show (the admin get)
// tells an operator how far a stream's receiver is behind, and that it
// caught up.
func TestSSFShowsWhatIsPending(t *testing.T) {
	e := mustOAuthEnv(t, nil)
	e.registerReceivers(t)
	var mu sync.Mutex
	down := true
	rc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if down {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusAccepted)
	}))
	t.Cleanup(rc.Close)
	st, err := e.app.api.Streams.Create(t.Context(), signals.NewStream{Receiver: "siem", Request: signals.StreamRequest{
		Delivery: &signals.Delivery{Method: signals.DeliveryPush, EndpointURL: rc.URL}}})
	if err != nil {
		t.Fatal(err)
	}
	pending := func() (*api.SSFPendingView, error) {
		r := call(t, e.nc, "tokens.admin.ssf.streams.get", api.SSFStreamRequest{StreamID: st.ID})
		if r.errCode != "" {
			return nil, fmt.Errorf("get: %s", r.raw)
		}
		var v api.SSFStreamView
		if err := json.Unmarshal(r.raw, &v); err != nil {
			return nil, err
		}
		return v.Pending, nil
	}

	issued := mustIssue(t, e.nc, "user-7", "web")
	if r := call(t, e.nc, "tokens.cmd.revoke", wire.RevokeRequest{FamilyID: &issued.FamilyID}); r.errCode != "" {
		t.Fatalf("revoke: %s", r.raw)
	}
	eventstest.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		p, err := pending()
		if err == nil && (p == nil || p.Events == 0 || p.OldestSeconds <= 0) {
			err = fmt.Errorf("pending %+v while the receiver is down", p)
		}
		return err
	})
	mu.Lock()
	down = false
	mu.Unlock()
	eventstest.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		p, err := pending()
		if err == nil && (p == nil || p.Events != 0) {
			err = fmt.Errorf("pending %+v after the receiver came back", p)
		}
		return err
	})
}
