package client_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/oauth2"

	"github.com/tokend/tokend/api/apitest"
	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/client"
	"github.com/tokend/tokend/events/eventstest"
)

const (
	audA = "https://a.example"
	audB = "https://b.example"
	audC = "https://c.example"
)

// clock is an Options.Now that tests move by hand.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock { return &clock{now: time.Now()} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// session is a Source on a test tokend with everything a test looks at.
type session struct {
	td        *apitest.Tokend
	nc        *nats.Conn
	c         *client.Client
	store     client.Store
	clock     *clock
	src       *client.Source
	issued    wire.TokenReply
	terminals atomic.Int32

	mu     sync.Mutex
	events []client.Event
}

// newSession issues a family (audiences A, B, C; scope "read write") and
// begins a session for it in store (a MemoryStore if nil). opts.Now,
// OnTerminal and Observe are the session's.
func newSession(t *testing.T, td *apitest.Tokend, store client.Store, opts client.Options) *session {
	t.Helper()
	return newSessionVia(t, td, td.Options().Prefix, store, opts)
}

// newSessionVia is newSession with the Source's requests sent under prefix.
func newSessionVia(t *testing.T, td *apitest.Tokend, prefix string, store client.Store, opts client.Options) *session {
	t.Helper()
	s := &session{td: td, nc: td.Connect(t), store: store, clock: newClock()}
	if s.store == nil {
		s.store = client.NewMemoryStore()
	}
	s.c = client.New(s.nc, prefix)
	opts.Now = s.clock.Now
	opts.OnTerminal = func(error) { s.terminals.Add(1) }
	opts.Observe = func(e client.Event) {
		s.mu.Lock()
		s.events = append(s.events, e)
		s.mu.Unlock()
	}
	var err error
	s.issued, err = client.New(td.Connect(t), td.Options().Prefix).Issue(ctx(t), wire.IssueRequest{
		Subject: "user-42", ClientID: "web", Scope: "read write", Audience: []string{audA, audB, audC}})
	if err != nil {
		t.Fatal(err)
	}
	s.src = client.NewSource(s.c, s.store, "session-1", opts)
	t.Cleanup(s.src.Close)
	if err := s.src.Begin(ctx(t), "web", s.issued); err != nil {
		t.Fatal(err)
	}
	return s
}

// observed returns the events with outcome o, of refreshes or of Token calls.
func (s *session) observed(refresh bool, o client.Outcome) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, e := range s.events {
		if e.Refresh == refresh && e.Outcome == o {
			n++
		}
	}
	return n
}

// refreshes returns the refresh events observed.
func (s *session) refreshes() []client.Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []client.Event
	for _, e := range s.events {
		if e.Refresh {
			out = append(out, e)
		}
	}
	return out
}

// count returns how many events of type typ the family has in the stream.
func (s *session) count(t *testing.T, typ string) int {
	t.Helper()
	return apitest.Count(s.td.Events(t, s.issued.FamilyID), typ)
}

// stored returns the session's refresh token in the store.
func (s *session) stored(t *testing.T) string {
	t.Helper()
	st, _, err := s.store.Load(ctx(t), "session-1")
	if err != nil {
		t.Fatal(err)
	}
	return st.RefreshToken
}

// waitActive waits until tokend's read model reports token active (or,
// with want false, inactive).
func (s *session) waitActive(t *testing.T, token string, want bool) {
	t.Helper()
	c := client.New(s.td.Connect(t), s.td.Options().Prefix)
	eventstest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		in, err := c.Introspect(ctx(t), wire.IntrospectRequest{RefreshToken: token})
		if err != nil {
			return err
		}
		if in.Active != want {
			return fmt.Errorf("active = %v", in.Active)
		}
		return nil
	})
}

func mustToken(t *testing.T, src *client.Source, audience string, scope ...string) client.AccessToken {
	t.Helper()
	tok, err := src.Token(ctx(t), audience, scope...)
	if err != nil {
		t.Fatalf("Token(%q, %q): %v", audience, scope, err)
	}
	return tok
}

// claims decodes a JWT's payload (unverified: the tests only read it).
func claims(t *testing.T, jwt string) map[string]any {
	t.Helper()
	m, err := decodeClaims(jwt)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func decodeClaims(jwt string) (map[string]any, error) {
	parts := strings.Split(jwt, ".")
	if len(parts) != 3 {
		return nil, fmt.Errorf("not a JWT: %d parts", len(parts))
	}
	data, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return nil, err
	}
	var m map[string]any
	return m, json.Unmarshal(data, &m)
}

// TestOneRefreshForManyCallers: 100 goroutines asking at once for a token
// that expired cause exactly one rotation, and all get its token.
func TestOneRefreshForManyCallers(t *testing.T) {
	td := apitest.Start(t, apitest.Options{AccessTTL: time.Minute})
	s := newSession(t, td, nil, client.Options{})
	first := mustToken(t, s.src, "")
	if first.Token != s.issued.AccessToken {
		t.Fatal("the issued access token was not served from the cache")
	}
	s.clock.Add(2 * time.Minute)

	const n = 100
	var wg sync.WaitGroup
	tokens := make([]string, n)
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			tok, err := s.src.Token(ctx(t), "")
			tokens[i], errs[i] = tok.Token, err
		})
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("caller %d: %v", i, errs[i])
		}
		if tokens[i] != tokens[0] || tokens[i] == first.Token {
			t.Fatalf("caller %d got another or the expired token", i)
		}
	}
	evs := td.Events(t, s.issued.FamilyID)
	if got := apitest.Count(evs, "token.rotated"); got != 1 {
		t.Fatalf("%d rotations, want 1: %+v", got, evs)
	}
	if got := s.observed(true, client.OutcomeRefreshed); got != 1 {
		t.Fatalf("%d refreshes observed", got)
	}
}

// TestAudienceAndScopeNeverWiden: a token answers only its own audience,
// and only requests its granted scope covers.
func TestAudienceAndScopeNeverWiden(t *testing.T) {
	td := apitest.Start(t, apitest.Options{AccessTTL: time.Minute})
	s := newSession(t, td, nil, client.Options{})
	check := func(tok client.AccessToken, aud string, scope ...string) {
		t.Helper()
		c := claims(t, tok.Token)
		if tok.Audience != aud || c["aud"] != aud {
			t.Fatalf("token for %q (claim %v), asked for %q", tok.Audience, c["aud"], aud)
		}
		granted := strings.Fields(c["scope"].(string))
		if !slices.Equal(granted, tok.Scope) {
			t.Fatalf("Scope %q, claim %q", tok.Scope, granted)
		}
		for _, sc := range scope {
			if !slices.Contains(granted, sc) {
				t.Fatalf("scope %q granted for a request of %q", granted, scope)
			}
		}
	}
	rotations := func(want int) {
		t.Helper()
		if got := s.count(t, "token.rotated"); got != want {
			t.Fatalf("%d rotations, want %d", got, want)
		}
	}

	// The issued token is for the first audience (A) and the whole grant.
	check(mustToken(t, s.src, audA), audA)
	check(mustToken(t, s.src, audA, "write"), audA, "write")
	rotations(0)
	// Audience B is never answered with A's token.
	b := mustToken(t, s.src, audB, "read")
	check(b, audB, "read")
	rotations(1)
	if !slices.Equal(b.Scope, []string{"read"}) {
		t.Fatalf("down-scoped token has scope %q", b.Scope)
	}
	// A wider scope is never answered with the down-scoped token.
	check(mustToken(t, s.src, audB, "read", "write"), audB, "read", "write")
	rotations(2)
	// Nor is the whole grant, asked without a scope.
	check(mustToken(t, s.src, audB), audB, "read", "write")
	rotations(3)
	// Narrower requests are answered from the cache.
	check(mustToken(t, s.src, audB, "read"), audB, "read")
	check(mustToken(t, s.src, audB, "write"), audB, "write")
	check(mustToken(t, s.src, audA, "read"), audA, "read")
	rotations(3)

	// Outside the grant: refused, and the session goes on.
	_, err := s.src.Token(ctx(t), audA, "admin")
	if !errors.Is(err, client.ErrInvalidScope) || client.Terminal(err) || client.Transient(err) {
		t.Fatalf("scope outside the grant: %v", err)
	}
	_, err = s.src.Token(ctx(t), "https://other.example")
	if !errors.Is(err, client.ErrInvalidTarget) || client.Terminal(err) {
		t.Fatalf("audience outside the family: %v", err)
	}
	// Malformed: refused here, never sent (tokend would answer
	// invalid_request, which ends sessions).
	for _, bad := range [][]string{{`re"ad`}, {strings.Repeat("x", 129)}} {
		if _, err := s.src.Token(ctx(t), audA, bad...); !errors.Is(err, client.ErrInvalidScope) || client.Terminal(err) {
			t.Fatalf("malformed scope: %v", err)
		}
	}
	if _, err := s.src.Token(ctx(t), "https://bad example"); !errors.Is(err, client.ErrInvalidTarget) || client.Terminal(err) {
		t.Fatalf("malformed audience: %v", err)
	}
	if got := s.count(t, "refresh.rejected"); got != 2 {
		t.Fatalf("%d refused refreshes, want the 2 outside the grant", got)
	}
	check(mustToken(t, s.src, audC, "read"), audC, "read")
	if s.terminals.Load() != 0 {
		t.Fatal("a refused request ended the session")
	}
}

// TestBadReplyIsAnError: a success reply without tokens is an error that
// is neither terminal nor transient; nothing of it is cached or stored.
func TestBadReplyIsAnError(t *testing.T) {
	nc := connect(t)
	var replies atomic.Value
	respond(t, nc, "tokens.cmd.refresh", func(*nats.Msg) *nats.Msg {
		return &nats.Msg{Data: []byte(replies.Load().(string))}
	})
	store := client.NewMemoryStore()
	clk := newClock()
	src := client.NewSource(client.New(nc, ""), store, "s1", client.Options{Now: clk.Now})
	defer src.Close()
	issued := wire.TokenReply{RefreshToken: "rt-1", FamilyID: "fam", AccessToken: "at-1", ExpiresIn: 300, Scope: "read"}
	if err := src.Begin(ctx(t), "web", issued); err != nil {
		t.Fatal(err)
	}
	_, rev, _ := store.Load(ctx(t), "s1")
	clk.Add(time.Hour)
	for _, reply := range []string{
		`{"refresh_token":"","access_token":"","token_type":"Bearer","expires_in":300,"scope":"read"}`,
		`{"refresh_token":"rt-2","family_id":"fam","token_type":"Bearer","expires_in":300,"scope":"read"}`,
		`{"refresh_token":"","family_id":"fam","access_token":"at-2","token_type":"Bearer","expires_in":300,"scope":"read"}`,
	} {
		replies.Store(reply)
		tok, err := src.Token(ctx(t), "")
		if !errors.Is(err, client.ErrBadReply) || client.Terminal(err) || client.Transient(err) || tok.Token != "" {
			t.Fatalf("reply %s: %q, %v", reply, tok.Token, err)
		}
		st, gotRev, err := store.Load(ctx(t), "s1")
		if err != nil || st.RefreshToken != "rt-1" || gotRev != rev {
			t.Fatalf("reply %s: the store changed: %v", reply, err)
		}
		if n := client.CacheLen(src); n != 1 {
			t.Fatalf("reply %s: %d cached tokens, want only the issued one", reply, n)
		}
	}
	src.Close()
	if _, err := src.Token(ctx(t), ""); !errors.Is(err, client.ErrClosed) {
		t.Fatalf("Token after Close: %v", err)
	}
}

// TestExpiredTokensPrunedOnWrite: tokens past their leeway leave the cache
// when the next one is cached.
func TestExpiredTokensPrunedOnWrite(t *testing.T) {
	td := apitest.Start(t, apitest.Options{AccessTTL: time.Minute})
	s := newSession(t, td, nil, client.Options{})
	mustToken(t, s.src, audB)
	if n := client.CacheLen(s.src); n != 2 {
		t.Fatalf("%d cached, want 2", n)
	}
	s.clock.Add(time.Minute)
	mustToken(t, s.src, audC)
	if n := client.CacheLen(s.src); n != 1 {
		t.Fatalf("%d cached after the write, want only the new token", n)
	}
}

// TestCacheBounded: the cache never holds more than MaxTokens.
func TestCacheBounded(t *testing.T) {
	td := apitest.Start(t, apitest.Options{AccessTTL: time.Minute})
	s := newSession(t, td, nil, client.Options{MaxTokens: 2})
	for _, aud := range []string{audB, audC, audA} {
		for _, scope := range []string{"read", "write"} {
			mustToken(t, s.src, aud, scope)
			if n := client.CacheLen(s.src); n > 2 {
				t.Fatalf("%d cached", n)
			}
		}
	}
}

// TestOutageIsTransient: with NATS down a valid cached token is still
// served and a refresh fails transiently without ending the session; once
// NATS is back the same session refreshes, and nothing was replayed.
func TestOutageIsTransient(t *testing.T) {
	td := apitest.Start(t, apitest.Options{AccessTTL: time.Minute})
	js, err := jetstream.New(td.Connect(t))
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.CreateKeyValue(ctx(t), jetstream.KeyValueConfig{Bucket: "SESSIONS"})
	if err != nil {
		t.Fatal(err)
	}
	s := newSession(t, td, client.NewKVStore(kv), client.Options{RetryWindow: time.Second, AttemptTimeout: 300 * time.Millisecond})
	cached := mustToken(t, s.src, audA)

	td.StopNATS()
	eventstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if s.nc.IsConnected() {
			return errors.New("still connected")
		}
		return nil
	})
	if got := mustToken(t, s.src, audA); got.Token != cached.Token {
		t.Fatal("the valid cached token was not served during the outage")
	}
	_, err = s.src.Token(ctx(t), audB)
	if !client.Transient(err) || client.Terminal(err) {
		t.Fatalf("refresh during the outage: %v", err)
	}
	if got := mustToken(t, s.src, audA); got.Token != cached.Token {
		t.Fatal("a failed refresh dropped the valid cached token")
	}

	td.StartNATS()
	var b client.AccessToken
	eventstest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		b, err = s.src.Token(ctx(t), audB)
		if err != nil && !client.Transient(err) {
			t.Fatalf("after the outage: %v", err)
		}
		return err
	})
	if b.Audience != audB {
		t.Fatalf("token for %q", b.Audience)
	}
	if s.terminals.Load() != 0 {
		t.Fatal("the outage ended the session")
	}
	evs := td.Events(t, s.issued.FamilyID)
	if apitest.Count(evs, "token.replay_detected") != 0 || apitest.Count(evs, "family.revoked") != 0 ||
		apitest.Count(evs, "token.rotated") == 0 {
		t.Fatalf("events = %+v", evs)
	}
	s.waitActive(t, s.stored(t), true)
}

// requestCounter counts the requests the session's connection sends to
// tokend's refresh and introspect subjects, seen by a subscription of its
// own.
type requestCounter struct {
	n       atomic.Int32
	markers chan struct{}
	src     *nats.Conn
}

func countRequests(t *testing.T, s *session) *requestCounter {
	t.Helper()
	rc := &requestCounter{markers: make(chan struct{}, 16), src: s.nc}
	nc := s.td.Connect(t)
	for _, subject := range []string{"tokens.cmd.refresh", "tokens.query.introspect", "test.marker"} {
		_, err := nc.Subscribe(subject, func(m *nats.Msg) {
			if m.Subject == "test.marker" {
				rc.markers <- struct{}{}
				return
			}
			rc.n.Add(1)
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return rc
}

// count returns the requests seen so far: a marker sent after them on the
// same connection arrives after them.
func (rc *requestCounter) count(t *testing.T) int {
	t.Helper()
	if err := rc.src.Publish("test.marker", nil); err != nil {
		t.Fatal(err)
	}
	select {
	case <-rc.markers:
	case <-time.After(10 * time.Second):
		t.Fatal("marker lost")
	}
	return int(rc.n.Load())
}

// TestRevokedFamilyEndsSessionOnce: the first refresh after a revocation
// ends the session: one terminal answer, one OnTerminal call, the session
// gone from the store, and no request to tokend after that.
func TestRevokedFamilyEndsSessionOnce(t *testing.T) {
	td := apitest.Start(t, apitest.Options{AccessTTL: time.Minute})
	// One attempt however slow the machine: a retry would be a second request.
	s := newSession(t, td, nil, client.Options{AttemptTimeout: time.Minute})
	rc := countRequests(t, s)
	fam := s.issued.FamilyID
	if _, err := s.c.Revoke(ctx(t), wire.RevokeRequest{FamilyID: &fam}); err != nil {
		t.Fatal(err)
	}
	s.clock.Add(2 * time.Minute)

	var wg sync.WaitGroup
	errs := make([]error, 20)
	for i := range errs {
		wg.Go(func() { _, errs[i] = s.src.Token(ctx(t), "") })
	}
	wg.Wait()
	for i, err := range errs {
		if !client.Terminal(err) || !errors.Is(err, client.ErrInvalidGrant) || client.Transient(err) {
			t.Fatalf("caller %d: %v", i, err)
		}
	}
	if n := rc.count(t); n != 1 {
		t.Fatalf("%d requests reached tokend, want the one refresh", n)
	}
	if n := s.terminals.Load(); n != 1 {
		t.Fatalf("OnTerminal called %d times", n)
	}
	if _, _, err := s.store.Load(ctx(t), "session-1"); !errors.Is(err, client.ErrNoSession) {
		t.Fatalf("the store still holds the session: %v", err)
	}
	if client.CacheLen(s.src) != 0 {
		t.Fatal("the cache survived the end of the session")
	}

	for _, aud := range []string{"", audA, audB} {
		if _, err := s.src.Token(ctx(t), aud); !errors.Is(err, client.ErrInvalidGrant) {
			t.Fatalf("after the end: %v", err)
		}
	}
	if n := rc.count(t); n != 1 {
		t.Fatalf("%d requests reached tokend, want no more after the end", n)
	}
	if n := s.terminals.Load(); n != 1 {
		t.Fatalf("OnTerminal called %d times", n)
	}
	if got := s.count(t, "refresh.rejected"); got != 1 {
		t.Fatalf("%d refused refreshes recorded, want 1", got)
	}
}

// TestReplicasKeepOneChain: two replicas of a service share a session
// through one KV bucket and refresh it concurrently, round after round.
// The family stays one chain: no replay, every rotation's child stored, in
// order, and the stored token is the current one.
func TestReplicasKeepOneChain(t *testing.T) {
	td := apitest.Start(t, apitest.Options{AccessTTL: time.Minute})
	bucket := func() client.Store {
		js, err := jetstream.New(td.Connect(t))
		if err != nil {
			t.Fatal(err)
		}
		kv, err := js.CreateOrUpdateKeyValue(ctx(t), jetstream.KeyValueConfig{Bucket: "SESSIONS", History: 64})
		if err != nil {
			t.Fatal(err)
		}
		return client.NewKVStore(kv)
	}
	a := newSession(t, td, bucket(), client.Options{})
	bClock := newClock()
	b := client.NewSource(client.New(td.Connect(t), ""), bucket(), "session-1", client.Options{Now: bClock.Now})
	defer b.Close()

	const rounds = 15
	for round := range rounds {
		a.clock.Add(2 * time.Minute)
		bClock.Add(2 * time.Minute)
		var wg sync.WaitGroup
		errs := make(chan error, 10)
		for i := range 10 {
			src := a.src
			if i%2 == 1 {
				src = b
			}
			wg.Go(func() {
				if _, err := src.Token(ctx(t), ""); err != nil {
					errs <- err
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatalf("round %d: %v", round, err)
		}
	}

	evs := td.Events(t, a.issued.FamilyID)
	rotated := apitest.Count(evs, "token.rotated")
	if apitest.Count(evs, "token.replay_detected") != 0 || apitest.Count(evs, "family.revoked") != 0 {
		t.Fatalf("events = %+v", evs)
	}
	if rotated < rounds {
		t.Fatalf("%d rotations in %d rounds", rotated, rounds)
	}
	// Every generation the family went through was stored, in order.
	js, _ := jetstream.New(td.Connect(t))
	kv, _ := js.KeyValue(ctx(t), "SESSIONS")
	hist, err := kv.History(ctx(t), "session-1")
	if err != nil {
		t.Fatal(err)
	}
	var gens []int
	var last string
	for _, e := range hist {
		var st client.StoredToken
		if err := json.Unmarshal(e.Value(), &st); err != nil {
			t.Fatal(err)
		}
		// rt1.<family>.<generation>.…, see docs/protocol.md.
		gen, err := strconv.Atoi(strings.Split(st.RefreshToken, ".")[2])
		if err != nil {
			t.Fatal(err)
		}
		gens = append(gens, gen)
		last = st.RefreshToken
	}
	for i, g := range gens {
		if g != i+1 {
			t.Fatalf("stored generations %v, want 1..%d", gens, rotated+1)
		}
	}
	if len(gens) != rotated+1 {
		t.Fatalf("stored generations %v, want 1..%d", gens, rotated+1)
	}
	a.waitActive(t, last, true)
}

// TestOAuth2Adapter: oauth2.NewClient sends the Source's token for the
// adapter's audience and scope.
func TestOAuth2Adapter(t *testing.T) {
	td := apitest.Start(t, apitest.Options{AccessTTL: time.Minute})
	s := newSession(t, td, nil, client.Options{})
	var seen atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		bearer, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok {
			http.Error(w, "no bearer token", http.StatusUnauthorized)
			return
		}
		want, err := s.src.Token(r.Context(), audB, "read")
		if err != nil || bearer != want.Token {
			http.Error(w, "not the source's token", http.StatusUnauthorized)
			return
		}
		if c, err := decodeClaims(bearer); err != nil || c["aud"] != audB || c["scope"] != "read" {
			http.Error(w, "wrong audience or scope", http.StatusForbidden)
			return
		}
		seen.Add(1)
	}))
	defer srv.Close()

	httpClient := oauth2.NewClient(ctx(t), s.src.OAuth2(audB, "read"))
	for range 3 {
		resp, err := httpClient.Get(srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d", resp.StatusCode)
		}
	}
	if seen.Load() != 3 || s.count(t, "token.rotated") != 1 {
		t.Fatalf("%d requests accepted, %d rotations", seen.Load(), s.count(t, "token.rotated"))
	}
	_, err := oauth2.NewClient(ctx(t), s.src.OAuth2(audB, "admin")).Get(srv.URL)
	if !errors.Is(err, client.ErrInvalidScope) {
		t.Fatalf("a scope outside the grant: %v", err)
	}
}

// TestProactiveRenewal: past half its lifetime a token is still served at
// once, and a refresh in the background replaces it before it expires.
func TestProactiveRenewal(t *testing.T) {
	td := apitest.Start(t, apitest.Options{AccessTTL: time.Minute})
	s := newSession(t, td, nil, client.Options{})
	first := mustToken(t, s.src, "")
	s.clock.Add(40 * time.Second) // past 1/2 ± 5%, before the leeway (a quarter)
	if got := mustToken(t, s.src, ""); got.Token != first.Token {
		t.Fatal("the token due for renewal was not served at once")
	}
	eventstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if n := s.observed(true, client.OutcomeRenewed); n != 1 {
			return fmt.Errorf("%d renewals", n)
		}
		return nil
	})
	renewed := mustToken(t, s.src, "")
	if renewed.Token == first.Token || !renewed.Expiry.After(first.Expiry) {
		t.Fatal("the renewal did not replace the token")
	}
	if got := s.count(t, "token.rotated"); got != 1 {
		t.Fatalf("%d rotations", got)
	}
	if got := s.observed(false, client.OutcomeRefreshed); got != 0 {
		t.Fatalf("%d Token calls waited for a refresh", got)
	}
}

// proxy sits between a Source and tokend on the subjects "proxy.…": it
// forwards refreshes, and drops refresh requests or their replies while
// told to, as a network losing messages would. It counts the refreshes
// that said they recover a lost reply.
type proxy struct {
	dropRequests, dropReplies atomic.Bool
	refreshes, recovers       atomic.Int32
	// gate, if set, holds refresh requests until it is closed; arrived
	// says when one is held.
	gate    atomic.Pointer[chan struct{}]
	arrived chan struct{}
}

func startProxy(t *testing.T, td *apitest.Tokend) *proxy {
	t.Helper()
	p := &proxy{arrived: make(chan struct{}, 16)}
	nc := td.Connect(t)
	forward := func(drop func() (req, reply bool)) nats.MsgHandler {
		return func(m *nats.Msg) {
			dropReq, dropReply := drop()
			if dropReq {
				return
			}
			p.refreshes.Add(1)
			var req wire.RefreshRequest
			if json.Unmarshal(m.Data, &req) == nil && req.Recover {
				p.recovers.Add(1)
			}
			reply, err := nc.Request("tokens."+strings.TrimPrefix(m.Subject, "proxy."), m.Data, 5*time.Second)
			if err != nil || dropReply {
				return
			}
			_ = m.RespondMsg(&nats.Msg{Header: reply.Header, Data: reply.Data})
		}
	}
	subs := map[string]nats.MsgHandler{
		"proxy.cmd.refresh": forward(func() (bool, bool) {
			if gate := p.gate.Load(); gate != nil {
				p.arrived <- struct{}{}
				<-*gate
			}
			return p.dropRequests.Load(), p.dropReplies.Load()
		}),
	}
	for subject, h := range subs {
		if _, err := nc.Subscribe(subject, h); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return p
}

// window is the retry window of lossySession.
const window = 400 * time.Millisecond

// lossySession is a session whose refreshes go through a proxy, with a
// short retry window, and whose cached token has expired; tokend's reuse
// interval is reuse (0: its default, 10 s).
func lossySession(t *testing.T, reuse time.Duration) (*session, *proxy) {
	t.Helper()
	td := apitest.Start(t, apitest.Options{AccessTTL: time.Minute, ReuseInterval: reuse})
	p := startProxy(t, td)
	s := newSessionVia(t, td, "proxy", nil, client.Options{RetryWindow: window, AttemptTimeout: 100 * time.Millisecond})
	s.clock.Add(2 * time.Minute)
	return s, p
}

// TestLostReplyRecovered: tokend rotated the token but every reply was
// lost until the retry window ended. The next refresh says it recovers a
// lost reply, and gets the same child inside the reuse interval: the
// session goes on, with no replay and no second rotation.
func TestLostReplyRecovered(t *testing.T) {
	s, p := lossySession(t, 0)
	p.dropReplies.Store(true)
	if _, err := s.src.Token(ctx(t), ""); !client.Transient(err) {
		t.Fatalf("refresh with lost replies: %v", err)
	}
	p.dropReplies.Store(false)
	if _, err := s.src.Token(ctx(t), ""); err != nil {
		t.Fatalf("after the lost replies: %v", err)
	}
	evs := s.td.Events(t, s.issued.FamilyID)
	if apitest.Count(evs, "token.rotated") != 1 || apitest.Count(evs, "token.reused") == 0 ||
		apitest.Count(evs, "token.replay_detected") != 0 || apitest.Count(evs, "family.revoked") != 0 {
		t.Fatalf("events = %+v", evs)
	}
	if p.recovers.Load() == 0 || s.terminals.Load() != 0 {
		t.Fatalf("%d refreshes said they recover, OnTerminal called %d times", p.recovers.Load(), s.terminals.Load())
	}
	s.waitActive(t, s.stored(t), true) // the session holds the family's current token
}

// TestLostReplyOutOfReachEndsSessionAndFamily: the replies were lost for
// longer than tokend's reuse interval. The refresh that says it recovers
// is refused, the session ends with ErrLostRotation, and tokend revoked
// the family as a lost rotation, not a replay: no token is left that
// nobody holds.
func TestLostReplyOutOfReachEndsSessionAndFamily(t *testing.T) {
	s, p := lossySession(t, time.Second)
	p.dropReplies.Store(true)
	if _, err := s.src.Token(ctx(t), ""); !client.Transient(err) {
		t.Fatalf("refresh with lost replies: %v", err)
	}
	eventstest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if n := s.count(t, "token.rotated"); n != 1 {
			return fmt.Errorf("%d rotations", n)
		}
		return nil
	})
	time.Sleep(time.Second) // a lower bound: the rotation is out of the reuse interval
	p.dropReplies.Store(false)
	_, err := s.src.Token(ctx(t), "")
	if !client.Terminal(err) || !errors.Is(err, client.ErrLostRotation) || !errors.Is(err, client.ErrInvalidGrant) {
		t.Fatalf("after the interval: %v", err)
	}
	if s.terminals.Load() != 1 {
		t.Fatalf("OnTerminal called %d times", s.terminals.Load())
	}
	eventstest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		evs := s.td.Events(t, s.issued.FamilyID)
		if apitest.Count(evs, "family.revoked") != 1 {
			return fmt.Errorf("events %+v", evs)
		}
		for _, e := range evs {
			if e.Type == "token.replay_detected" || (e.Type == "family.revoked" && e.Reason != "lost_rotation") {
				return fmt.Errorf("event %s, reason %q", e.Type, e.Reason)
			}
		}
		return nil
	})
	if _, _, err := s.store.Load(ctx(t), "session-1"); !errors.Is(err, client.ErrNoSession) {
		t.Fatalf("the store still holds the lost token: %v", err)
	}
}

// TestRetryWindowBoundedByTheReuseInterval: the issue reply says the
// family's reuse interval is 1 s, so a Source whose RetryWindow is 5 s
// retries a timed-out refresh for no longer than the interval less a
// second, that is not at all: a retry after the interval could not get the
// child back.
func TestRetryWindowBoundedByTheReuseInterval(t *testing.T) {
	td := apitest.Start(t, apitest.Options{AccessTTL: time.Minute, ReuseInterval: time.Second})
	p := startProxy(t, td)
	s := newSessionVia(t, td, "proxy", nil, client.Options{RetryWindow: 5 * time.Second, AttemptTimeout: 100 * time.Millisecond})
	s.clock.Add(2 * time.Minute)
	p.dropReplies.Store(true)
	if _, err := s.src.Token(ctx(t), ""); !client.Transient(err) {
		t.Fatalf("refresh with lost replies: %v", err)
	}
	if n := p.refreshes.Load(); n != 1 {
		t.Fatalf("%d attempts inside a window the reuse interval closes at once", n)
	}
}

// TestUnansweredRequestRetriedAfterTheWindow: refresh requests were lost
// before reaching tokend until the window ended. The next refresh presents
// the token again, saying it may recover a lost reply: it was never
// rotated, so it rotates now.
func TestUnansweredRequestRetriedAfterTheWindow(t *testing.T) {
	s, p := lossySession(t, 0)
	p.dropRequests.Store(true)
	if _, err := s.src.Token(ctx(t), ""); !client.Transient(err) {
		t.Fatalf("refresh with lost requests: %v", err)
	}
	time.Sleep(window) // a lower bound: the window has ended
	p.dropRequests.Store(false)
	tok := mustToken(t, s.src, "")
	if tok.Token == s.issued.AccessToken {
		t.Fatal("the expired token was served")
	}
	evs := s.td.Events(t, s.issued.FamilyID)
	if apitest.Count(evs, "token.rotated") != 1 || apitest.Count(evs, "token.replay_detected") != 0 || p.recovers.Load() == 0 {
		t.Fatalf("events = %+v, %d recovering refreshes", evs, p.recovers.Load())
	}
}

// TestCallerGivingUpDoesNotCancelRefresh: the caller that started a
// refresh gives up while it is under way; the refresh goes on and serves
// the next caller.
func TestCallerGivingUpDoesNotCancelRefresh(t *testing.T) {
	td := apitest.Start(t, apitest.Options{AccessTTL: time.Minute})
	p := startProxy(t, td)
	s := newSessionVia(t, td, "proxy", nil, client.Options{AttemptTimeout: time.Minute})
	s.clock.Add(2 * time.Minute)
	gate := make(chan struct{})
	p.gate.Store(&gate)

	first, cancel := context.WithCancel(ctx(t))
	errc := make(chan error, 1)
	go func() {
		_, err := s.src.Token(first, "")
		errc <- err
	}()
	select {
	case <-p.arrived:
	case <-time.After(10 * time.Second):
		t.Fatal("the refresh did not reach tokend")
	}
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("the caller that gave up: %v", err)
	}
	close(gate)
	if tok := mustToken(t, s.src, ""); tok.Token == s.issued.AccessToken {
		t.Fatal("the expired token was served")
	}
	if n := s.count(t, "token.rotated"); n != 1 {
		t.Fatalf("%d rotations", n)
	}
	if ok, all := s.observed(true, client.OutcomeRefreshed), len(s.refreshes()); ok != 1 || all != 1 {
		t.Fatalf("%d refreshes, %d of them successful: the first was cancelled", all, ok)
	}
}

// flakyStore fails saves while told to, like a store that is down.
type flakyStore struct {
	*client.MemoryStore
	failSaves atomic.Bool
}

func (f *flakyStore) Save(ctx context.Context, id string, t client.StoredToken, rev uint64) (uint64, error) {
	if f.failSaves.Load() {
		return 0, errors.New("store down")
	}
	return f.MemoryStore.Save(ctx, id, t, rev)
}

// TestUnsavedChildIsKept: a rotation whose child the store refused is not
// lost: the access token is served, and the child is saved once the store
// is back, without another rotation.
func TestUnsavedChildIsKept(t *testing.T) {
	td := apitest.Start(t, apitest.Options{AccessTTL: time.Minute})
	store := &flakyStore{MemoryStore: client.NewMemoryStore()}
	s := newSession(t, td, store, client.Options{})
	parent := s.stored(t)
	s.clock.Add(2 * time.Minute)
	store.failSaves.Store(true)
	tok := mustToken(t, s.src, "")
	if s.stored(t) != parent {
		t.Fatal("the failing store took the child")
	}
	store.failSaves.Store(false)
	eventstest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if got := mustToken(t, s.src, ""); got.Token != tok.Token {
			t.Fatal("the token changed")
		}
		if s.stored(t) == parent {
			return errors.New("the child is not stored yet")
		}
		return nil
	})
	s.waitActive(t, s.stored(t), true)
	if got := s.count(t, "token.rotated"); got != 1 {
		t.Fatalf("%d rotations", got)
	}
}

// TestEndSignsOut: End revokes the family and removes the session; the
// Source refuses later calls and OnTerminal is not called.
func TestEndSignsOut(t *testing.T) {
	td := apitest.Start(t, apitest.Options{AccessTTL: time.Minute})
	s := newSession(t, td, nil, client.Options{})
	if err := s.src.End(ctx(t)); err != nil {
		t.Fatal(err)
	}
	evs := td.Events(t, s.issued.FamilyID)
	if len(evs) != 2 || evs[1].Type != "family.revoked" || evs[1].Reason != "signed_out" {
		t.Fatalf("events = %+v", evs)
	}
	if _, _, err := s.store.Load(ctx(t), "session-1"); !errors.Is(err, client.ErrNoSession) {
		t.Fatalf("store: %v", err)
	}
	if _, err := s.src.Token(ctx(t), ""); !errors.Is(err, client.ErrNoSession) || !client.Terminal(err) {
		t.Fatalf("Token after End: %v", err)
	}
	if s.terminals.Load() != 0 {
		t.Fatal("OnTerminal called for a sign-out")
	}
}

// TestTokensStayOutOfLogs: formatting a stored or access token, with fmt
// or slog, never prints the token itself.
func TestTokensStayOutOfLogs(t *testing.T) {
	st := client.StoredToken{RefreshToken: "rt-secret", FamilyID: "fam", ClientID: "web"}
	at := client.AccessToken{Token: "at-secret", Audience: "https://a", Scope: []string{"read"}}
	var logs strings.Builder
	slog.New(slog.NewTextHandler(&logs, nil)).Info("x", "stored", st, "access", at)
	for _, s := range []string{fmt.Sprint(st), fmt.Sprintf("%v %+v %#v %s", st, st, st, st),
		fmt.Sprintf("%v %+v %#v %s", at, at, at, at), logs.String()} {
		if strings.Contains(s, "secret") {
			t.Fatalf("a token was printed: %s", s)
		}
	}
	if !strings.Contains(logs.String(), "fam") || !strings.Contains(logs.String(), "https://a") {
		t.Fatalf("logs lost the safe fields: %s", logs.String())
	}
}

// TestExpiryFromTheTokenItself: tokend counts expires_in from an iat it
// truncates to the second, so the JWT's exp can come before the time the
// token was asked for plus expires_in: the token expires at the earlier
// of the two (issue 22), when they are a second apart at most.
func TestExpiryFromTheTokenItself(t *testing.T) {
	nc := connect(t)
	clk := newClock()
	jwt := func(exp time.Time) string {
		enc := base64.RawURLEncoding.EncodeToString
		return enc([]byte(`{"alg":"EdDSA"}`)) + "." + enc(fmt.Appendf(nil, `{"aud":"api","exp":%d}`, exp.Unix())) + ".sig"
	}
	for _, tc := range []struct {
		name string
		exp  time.Time
		want time.Time
	}{
		// As tokend mints it: iat truncated to the second, plus the TTL.
		{"exp within a second before asked+expires_in", clk.Now().Add(300 * time.Second), time.Unix(clk.Now().Add(300*time.Second).Unix(), 0)},
		{"exp after it", clk.Now().Add(time.Hour), clk.Now().Add(300 * time.Second)},
		// Further before: tokend's clock is behind this one, and exp is
		// not comparable with it.
		{"exp a minute before", clk.Now().Add(240 * time.Second), clk.Now().Add(300 * time.Second)},
	} {
		src := client.NewSource(client.New(nc, ""), client.NewMemoryStore(), "s1", client.Options{Now: clk.Now})
		defer src.Close()
		issued := wire.TokenReply{RefreshToken: "rt-1", FamilyID: "fam", AccessToken: jwt(tc.exp), ExpiresIn: 300, Scope: "read"}
		if err := src.Begin(ctx(t), "web", issued); err != nil {
			t.Fatal(err)
		}
		tok, err := src.Token(ctx(t), "")
		if err != nil || !tok.Expiry.Equal(tc.want) {
			t.Fatalf("%s: expiry %v (%v), want %v", tc.name, tok.Expiry, err, tc.want)
		}
	}
}
