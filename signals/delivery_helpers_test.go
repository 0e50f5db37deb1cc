package signals

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events"
	"github.com/tokend/tokend/events/eventstest"
)

// The delivery tests run engines (one per simulated tokend instance, each
// with its own connection and store) against one JetStream and httptest
// receivers that record what they get.

const setKID = "set-1"

// deployment is one JetStream with the TOKENS stream, a client registry
// and what the engines share.
type deployment struct {
	t        *testing.T
	url      string
	js       jetstream.JetStream // the test's own connection
	subjects events.Subjects
	outbox   *events.Store
	// keys seal the streams' delivery secrets on every instance.
	keys *testKeys

	mu      sync.Mutex
	clients map[string]domain.Client
}

func newDeployment(t *testing.T) *deployment {
	t.Helper()
	url := eventstest.MustJetStream(t).ClientURL()
	nc := eventstest.MustConnect(t, url)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	subjects := events.Subjects{Prefix: "tokens"}
	stream, err := events.Setup(context.Background(), js, subjects, events.StreamLimits{Replicas: 1})
	if err != nil {
		t.Fatal(err)
	}
	return &deployment{t: t, url: url, js: js, subjects: subjects, outbox: events.NewStore(nc, js, stream, subjects),
		keys: newTestKeys(t), clients: map[string]domain.Client{}}
}

// register makes clientID a registered client with receiver role role
// ("" to end it).
func (d *deployment) register(clientID string, role domain.ReceiverRole) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.clients[clientID] = domain.Client{ID: clientID, Type: domain.ClientConfidential, Receiver: role}
}

func (d *deployment) lookup(clientID string) (domain.Client, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	c, ok := d.clients[clientID]
	return c, ok
}

// metrics records what an engine reports.
type metrics struct {
	mu        sync.Mutex
	delivered map[string]int
	failed    map[string]int
	retried   map[string]int
	lag       map[string][2]float64 // events, seconds
	status    map[string]string
	forgotten map[string]bool
}

func newMetrics() *metrics {
	return &metrics{delivered: map[string]int{}, failed: map[string]int{}, retried: map[string]int{},
		lag: map[string][2]float64{}, status: map[string]string{}, forgotten: map[string]bool{}}
}

func (m *metrics) SSFDelivered(s string, n int) { m.mu.Lock(); m.delivered[s] += n; m.mu.Unlock() }
func (m *metrics) SSFFailed(s string)           { m.mu.Lock(); m.failed[s]++; m.mu.Unlock() }
func (m *metrics) SSFRetried(s string)          { m.mu.Lock(); m.retried[s]++; m.mu.Unlock() }
func (m *metrics) SSFStatus(s, status string)   { m.mu.Lock(); m.status[s] = status; m.mu.Unlock() }
func (m *metrics) SSFForget(s string)           { m.mu.Lock(); m.forgotten[s] = true; m.mu.Unlock() }
func (m *metrics) SSFLag(s string, n uint64, age time.Duration) {
	m.mu.Lock()
	m.lag[s] = [2]float64{float64(n), age.Seconds()}
	m.mu.Unlock()
}

func (m *metrics) get(f func(*metrics) int) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return f(m)
}

// instance is one simulated tokend: its connection, store and engine.
type instance struct {
	name    string
	js      jetstream.JetStream
	store   *Store
	engine  *Engine
	metrics *metrics
}

// fastTimings make retries, takeovers and redeliveries quick.
func fastTimings(o *EngineOptions) {
	o.AckWait, o.PollAckWait, o.PinnedTTL = 3*time.Second, time.Second, 2*time.Second
	o.MinBackoff, o.MaxBackoff, o.LagEvery = 20*time.Millisecond, 200*time.Millisecond, 50*time.Millisecond
	o.RequestTimeout = 5 * time.Second
}

// start starts an instance named name; configure adjusts its options.
func (d *deployment) start(name string, configure func(*EngineOptions)) *instance {
	t := d.t
	t.Helper()
	js, err := jetstream.New(eventstest.MustConnect(t, d.url))
	if err != nil {
		t.Fatal(err)
	}
	in := &instance{name: name, js: js, metrics: newMetrics()}
	o := EngineOptions{JS: js, Subjects: d.subjects, Replicas: 1, Mapper: Mapper{Issuer: issuer},
		Signer: testSigner{kid: setKID, key: mustRSAKey(t)}, Receivers: d.lookup, Metrics: in.metrics,
		// Every request names the instance that sent it.
		HTTP: &http.Client{Transport: instanceTransport(name)},
		// in.store is open by the time the engine starts.
		Secrets: func(st Stream) (DeliverySecrets, error) { return in.store.DeliverySecrets(st) }}
	fastTimings(&o)
	if configure != nil {
		configure(&o)
	}
	in.engine = NewEngine(o)
	if in.store, err = Open(context.Background(), js, Options{Replicas: 1, OnChange: in.engine.Changed,
		Keys: d.keys, Outbox: d.outbox}); err != nil {
		t.Fatal(err)
	}
	if err := in.engine.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.engine.Stop(); in.store.Stop() })
	return in
}

type instanceTransport string

func (name instanceTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("X-Test-Instance", string(name))
	return http.DefaultTransport.RoundTrip(r)
}

// request is what a receiver got, and what it answered.
type request struct {
	header http.Header
	body   []byte
	at     time.Time
	status int
}

// receiver is an HTTP endpoint that records every request and answers as
// answer says (202 by default).
type receiver struct {
	srv *httptest.Server

	mu     sync.Mutex
	got    []request
	answer func(n int, r request) (status int, header http.Header, body string) // n: 0-based request number
}

func newReceiver(t *testing.T) *receiver {
	rc := &receiver{}
	rc.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		rc.mu.Lock()
		defer rc.mu.Unlock()
		req := request{header: r.Header.Clone(), body: body, at: time.Now(), status: http.StatusAccepted}
		var header http.Header
		var text string
		if rc.answer != nil {
			req.status, header, text = rc.answer(len(rc.got), req)
		}
		rc.got = append(rc.got, req)
		maps.Copy(w.Header(), header)
		w.WriteHeader(req.status)
		io.WriteString(w, text)
	}))
	t.Cleanup(rc.srv.Close)
	return rc
}

func (rc *receiver) requests() []request {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return slices.Clone(rc.got)
}

func (rc *receiver) setAnswer(f func(n int, r request) (int, http.Header, string)) {
	rc.mu.Lock()
	rc.answer = f
	rc.mu.Unlock()
}

// accepted returns the jti (or webhook-id) of the requests answered 2xx,
// in order.
func (rc *receiver) accepted(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, r := range rc.requests() {
		if r.status/100 == 2 {
			out = append(out, jtiOf(t, r))
		}
	}
	return out
}

// jtiOf reads a request's jti without verifying it (verifySET does).
func jtiOf(t *testing.T, r request) string {
	t.Helper()
	if id := r.header.Get("webhook-id"); id != "" {
		return id
	}
	tok, err := jwt.ParseSigned(string(r.body), []jose.SignatureAlgorithm{jose.RS256})
	if err != nil {
		t.Fatal(err)
	}
	var c jwt.Claims
	if err := tok.UnsafeClaimsWithoutVerification(&c); err != nil {
		t.Fatal(err)
	}
	return c.ID
}

// awaitAccepted waits until the receiver accepted n requests, and
// returns their jti.
func (rc *receiver) awaitAccepted(t *testing.T, n int) []string {
	t.Helper()
	var got []string
	eventstest.CheckFor(t, 20*time.Second, 10*time.Millisecond, func() error {
		if got = rc.accepted(t); len(got) < n {
			return fmt.Errorf("%d accepted, waiting for %d", len(got), n)
		}
		return nil
	})
	return got
}

// await waits until the receiver got n requests, and returns them.
func (rc *receiver) await(t *testing.T, n int) []request {
	t.Helper()
	var got []request
	eventstest.CheckFor(t, 20*time.Second, 10*time.Millisecond, func() error {
		if got = rc.requests(); len(got) < n {
			return fmt.Errorf("%d requests, waiting for %d", len(got), n)
		}
		return nil
	})
	return got
}

// pushStream creates a push stream to rc for receiver clientID.
func (in *instance) pushStream(t *testing.T, clientID string, rc *receiver) Stream {
	t.Helper()
	st, err := in.store.Create(context.Background(), NewStream{Receiver: clientID, Request: StreamRequest{
		Delivery: &Delivery{Method: DeliveryPush, EndpointURL: rc.srv.URL + "/ssf", AuthorizationHeader: "Bearer rcv-" + clientID}}})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// revoked appends a family.revoked of a family of client clientID, as
// the writer would, and returns its event id (the SET's txn).
func (d *deployment) revoked(clientID string) string {
	d.t.Helper()
	env := events.Envelope{ID: nuid.Next(), Type: string(domain.FamilyRevoked), Time: time.Now().UTC().Truncate(time.Second),
		FamilyID: "fam-" + nuid.Next(), Subject: "user-42", ClientID: clientID, Generation: 2, Reason: domain.ReasonRevoked,
		Data: events.Data{TokenHash: "9f2c0d1e", Family: events.Snapshot{Status: domain.StatusRevoked, Generation: 2}}}
	data, err := events.Encode(env)
	if err != nil {
		d.t.Fatal(err)
	}
	if _, err := d.js.Publish(context.Background(), d.subjects.Family(env.FamilyID), data); err != nil {
		d.t.Fatal(err)
	}
	return env.ID
}

// deploymentEvent appends ev and returns its id.
func (d *deployment) deploymentEvent(ev events.DeploymentEvent) string {
	d.t.Helper()
	if _, err := d.outbox.AppendDeployment(context.Background(), ev); err != nil {
		d.t.Fatal(err)
	}
	return ev.ID
}

// consumerState reads stream id's consumer.
func (d *deployment) consumerState(id string) (*jetstream.ConsumerInfo, error) {
	c, err := d.js.Consumer(context.Background(), events.StreamName, ConsumerName(id))
	if err != nil {
		return nil, err
	}
	return c.Info(context.Background())
}

// awaitLeft waits until stream id's consumer holds n messages not yet
// acknowledged (waiting, or handed out).
func (d *deployment) awaitLeft(t *testing.T, id string, n uint64) {
	t.Helper()
	eventstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		info, err := d.consumerState(id)
		if err != nil || info.NumPending+uint64(info.NumAckPending) != n {
			return fmt.Errorf("consumer %+v, %v: want %d messages left", info, err, n)
		}
		return nil
	})
}

// jwks is the deployment's JWKS as a receiver fetches it.
func jwks(t *testing.T) []byte {
	t.Helper()
	data, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{
		{Key: mustRSAKey(t).Public(), KeyID: setKID, Algorithm: "RS256", Use: "sig"}}})
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// verifySET checks a SET as a receiver does, against the JWKS: the key
// its kid names, RS256, typ secevent+jwt, iss and aud.
func verifySET(t *testing.T, set, aud string) receivedSET {
	t.Helper()
	var keys jose.JSONWebKeySet
	if err := json.Unmarshal(jwks(t), &keys); err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.ParseSigned(set, []jose.SignatureAlgorithm{jose.RS256})
	if err != nil {
		t.Fatalf("not a JWS: %v", err)
	}
	h := tok.Headers[0]
	if h.ExtraHeaders[jose.HeaderType] != SETType {
		t.Fatalf("typ %v", h.ExtraHeaders[jose.HeaderType])
	}
	key := keys.Key(h.KeyID)
	if len(key) != 1 || key[0].Algorithm != h.Algorithm {
		t.Fatalf("kid %q alg %s: not in the JWKS", h.KeyID, h.Algorithm)
	}
	var c receivedSET
	if err := tok.Claims(key[0].Key, &c); err != nil {
		t.Fatalf("the signature does not verify: %v", err)
	}
	if err := c.ValidateWithLeeway(jwt.Expected{Issuer: issuer, AnyAudience: jwt.Audience{aud}}, time.Minute); err != nil {
		t.Fatalf("claims: %v", err)
	}
	return c
}
