package client_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tokend/tokend/api/apitest"
	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/client"
	"github.com/tokend/tokend/events/eventstest"
)

// bff is a backend-for-frontend on a test tokend: POST /signin issues a
// family for user-42 (scope "read write", audience A) and starts a
// session; /page and /api/data, behind the Middleware, answer the access
// token they were given; POST /signout signs out.
type bff struct {
	td       *apitest.Tokend
	nc       *nats.Conn
	c        *client.Client
	store    client.Store
	sessions *client.Sessions
	srv      *httptest.Server
	clock    *clock
	cfg      client.SessionConfig

	mu      sync.Mutex
	logs    bytes.Buffer
	secrets []string // tokens and cookie values that must stay out of the logs
}

// newBFF starts a bff with a MemoryStore of its own; cfg's zero fields
// get a key, client id "web", audience A, sign-in URL /signin and the
// test's clock.
func newBFF(t *testing.T, td *apitest.Tokend, cfg client.SessionConfig) *bff {
	t.Helper()
	return newBFFWith(t, td, client.NewMemoryStore(), cfg)
}

// newBFFWith is newBFF with store.
func newBFFWith(t *testing.T, td *apitest.Tokend, store client.Store, cfg client.SessionConfig) *bff {
	t.Helper()
	b := &bff{td: td, nc: td.Connect(t), store: store, clock: newClock()}
	b.c = client.New(b.nc, "")
	if cfg.Key == nil {
		cfg.Key = bytes.Repeat([]byte("k"), client.MinSessionKey)
	}
	if cfg.ClientID == "" {
		cfg.ClientID = "web"
	}
	if cfg.Audience == "" {
		cfg.Audience = audA
	}
	if cfg.SignInURL == "" {
		cfg.SignInURL = "/signin"
	}
	cfg.Options.Now = b.clock.Now
	cfg.Log = slog.New(slog.NewTextHandler(lockedWriter{b}, nil))
	b.cfg = cfg
	var err error
	if b.sessions, err = client.NewSessions(b.c, b.store, cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.sessions.Close)

	mux := http.NewServeMux()
	mux.HandleFunc("POST /signin", func(w http.ResponseWriter, r *http.Request) {
		scope := r.FormValue("scope")
		if scope == "" {
			scope = "read write"
		}
		issued, err := b.c.Issue(r.Context(), wire.IssueRequest{Subject: "user-42", ClientID: "web", Scope: scope,
			Audience: []string{audA}})
		if err == nil {
			b.secret(issued.RefreshToken, issued.AccessToken)
			err = b.sessions.Start(w, r, issued)
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		fmt.Fprint(w, issued.FamilyID)
	})
	token := func(w http.ResponseWriter, r *http.Request) {
		at, ok := client.AccessTokenFrom(r.Context())
		if !ok {
			http.Error(w, "no access token in the context", http.StatusInternalServerError)
			return
		}
		b.secret(at.Token)
		fmt.Fprint(w, at.Token)
	}
	mux.Handle("GET /page", b.sessions.Middleware(http.HandlerFunc(token)))
	mux.Handle("GET /api/data", b.sessions.Middleware(http.HandlerFunc(token)))
	mux.HandleFunc("POST /signout", func(w http.ResponseWriter, r *http.Request) {
		if err := b.sessions.SignOut(w, r); err != nil {
			http.Error(w, "try again", http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	b.srv = httptest.NewServer(mux)
	t.Cleanup(b.srv.Close)
	t.Cleanup(func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		for _, s := range b.secrets {
			if strings.Contains(b.logs.String(), s) {
				t.Errorf("a token or cookie value was logged: %s", b.logs.String())
			}
		}
	})
	return b
}

type lockedWriter struct{ b *bff }

func (w lockedWriter) Write(p []byte) (int, error) {
	w.b.mu.Lock()
	defer w.b.mu.Unlock()
	return w.b.logs.Write(p)
}

func (b *bff) secret(s ...string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.secrets = append(b.secrets, s...)
}

// stopNATS stops the NATS server and waits until the bff knows.
func (b *bff) stopNATS(t *testing.T) {
	t.Helper()
	b.td.StopNATS()
	eventstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if b.nc.IsConnected() {
			return errors.New("still connected")
		}
		return nil
	})
}

func (b *bff) logged() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.logs.String()
}

// do sends a request without following redirects, with cookie if not nil,
// as a browser would for a page navigation (page) or a fetch.
func (b *bff) do(t *testing.T, method, path string, cookie *http.Cookie, page bool) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, b.srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if page {
		req.Header.Set("Sec-Fetch-Mode", "navigate")
		req.Header.Set("Accept", "text/html,application/xhtml+xml,*/*;q=0.8")
	} else {
		req.Header.Set("Sec-Fetch-Mode", "cors")
		req.Header.Set("Accept", "application/json")
	}
	if cookie != nil {
		req.AddCookie(cookie)
	}
	return send(t, req)
}

func send(t *testing.T, req *http.Request) *http.Response {
	t.Helper()
	hc := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

// signIn starts a session, sending cookie (the current one) if not nil,
// and returns the new cookie and the family id.
func (b *bff) signIn(t *testing.T, cookie *http.Cookie, scope string) (*http.Cookie, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, b.srv.URL+"/signin", strings.NewReader("scope="+scope))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if cookie != nil {
		req.AddCookie(cookie)
	}
	resp := send(t, req)
	body := readBody(t, resp)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("sign-in: %s: %s", resp.Status, body)
	}
	c := setCookie(t, resp)
	if c == nil || c.MaxAge < 0 {
		t.Fatalf("sign-in set no session cookie: %v", resp.Header["Set-Cookie"])
	}
	b.secret(c.Value)
	return c, body
}

// setCookie returns the response's session cookie, nil if none.
func setCookie(t *testing.T, resp *http.Response) *http.Cookie {
	t.Helper()
	var found *http.Cookie
	for _, c := range resp.Cookies() {
		if c.Name == "__Host-session" || c.Name == "session" {
			if found != nil {
				t.Fatalf("two session cookies: %v", resp.Header["Set-Cookie"])
			}
			found = c
		}
	}
	return found
}

func readBody(t *testing.T, resp *http.Response) string {
	t.Helper()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// wantToken checks that a request with cookie was served an access token
// and returns it.
func (b *bff) wantToken(t *testing.T, cookie *http.Cookie) string {
	t.Helper()
	resp := b.do(t, http.MethodGet, "/page", cookie, true)
	body := readBody(t, resp)
	if resp.StatusCode != http.StatusOK || body == "" {
		t.Fatalf("page: %s: %s", resp.Status, body)
	}
	if c := setCookie(t, resp); c != nil {
		t.Fatalf("a served request set the cookie: %v", c)
	}
	return body
}

// wantSignIn checks that a page navigation with cookie is redirected to
// sign in and an API call answered 401, the cookie cleared if sent.
func (b *bff) wantSignIn(t *testing.T, cookie *http.Cookie) {
	t.Helper()
	for _, page := range []bool{true, false} {
		resp := b.do(t, http.MethodGet, map[bool]string{true: "/page", false: "/api/data"}[page], cookie, page)
		body := readBody(t, resp)
		if page {
			if resp.StatusCode != http.StatusFound || resp.Header.Get("Location") != "/signin" {
				t.Fatalf("page: %s, Location %q: %s", resp.Status, resp.Header.Get("Location"), body)
			}
		} else {
			var e wire.ErrorReply
			if resp.StatusCode != http.StatusUnauthorized || json.Unmarshal([]byte(body), &e) != nil ||
				e.Error != "login_required" {
				t.Fatalf("API: %s: %s", resp.Status, body)
			}
		}
		c := setCookie(t, resp)
		if cookie != nil && (c == nil || c.MaxAge >= 0 || c.Value != "") {
			t.Fatalf("the cookie was not cleared: %v", resp.Header["Set-Cookie"])
		}
		if cookie == nil && c != nil {
			t.Fatalf("a cookie was set: %v", resp.Header["Set-Cookie"])
		}
	}
}

// TestSessionCookieSignedAndTamperProof: the cookie is an opaque signed id
// with the safe attributes; a changed or foreign cookie gets nobody in,
// and leaves the real session alone.
func TestSessionCookieSignedAndTamperProof(t *testing.T) {
	td := apitest.Start(t, apitest.Options{AccessTTL: time.Minute})
	b := newBFF(t, td, client.SessionConfig{})
	cookie, family := b.signIn(t, nil, "")
	if cookie.Name != "__Host-session" || !cookie.HttpOnly || !cookie.Secure || cookie.SameSite != http.SameSiteLaxMode ||
		cookie.Path != "/" || cookie.Domain != "" || cookie.MaxAge != 0 {
		t.Fatalf("cookie attributes: %+v", cookie)
	}
	if strings.Contains(cookie.Value, family) || strings.Count(cookie.Value, ".") != 1 {
		t.Fatalf("the cookie is not an opaque signed id: %q", cookie.Value)
	}
	at := b.wantToken(t, cookie)
	for _, s := range b.secrets {
		if s != cookie.Value && strings.Contains(cookie.Value, s) {
			t.Fatal("the cookie carries a token")
		}
	}

	// A session of another deployment (another key) on the same store.
	other := newBFFWith(t, td, b.store, client.SessionConfig{Key: bytes.Repeat([]byte("o"), client.MinSessionKey)})
	foreign, _ := other.signIn(t, nil, "")
	id, mac, _ := strings.Cut(cookie.Value, ".")
	flip := func(s string) string {
		if s[0] == 'A' {
			return "B" + s[1:]
		}
		return "A" + s[1:]
	}
	for name, value := range map[string]string{
		"id changed":         flip(id) + "." + mac,
		"signature changed":  id + "." + flip(mac),
		"no signature":       id,
		"empty":              "",
		"another key's":      foreign.Value,
		"signature appended": cookie.Value + ".x",
	} {
		t.Run(name, func(t *testing.T) {
			c := *cookie
			c.Value = value
			b.wantSignIn(t, &c)
		})
	}
	if got := b.wantToken(t, cookie); got != at {
		t.Fatal("the session changed")
	}

	insecure := newBFF(t, td, client.SessionConfig{Insecure: true})
	if c, _ := insecure.signIn(t, nil, ""); c.Name != "session" || c.Secure {
		t.Fatalf("insecure cookie: %+v", c)
	}
}

// TestSessionWithoutCookie: no cookie sends a page to sign in and answers
// an API call 401, told apart by the headers or by IsAPI.
func TestSessionWithoutCookie(t *testing.T) {
	td := apitest.Start(t, apitest.Options{AccessTTL: time.Minute})
	b := newBFF(t, td, client.SessionConfig{})
	b.wantSignIn(t, nil)

	for accept, want := range map[string]int{"text/html": http.StatusFound, "*/*": http.StatusUnauthorized} {
		req, _ := http.NewRequest(http.MethodGet, b.srv.URL+"/page", nil)
		req.Header.Set("Accept", accept) // no Sec-Fetch-Mode: an older browser or a script
		if resp := send(t, req); resp.StatusCode != want {
			t.Fatalf("Accept %s: %s", accept, resp.Status)
		}
	}

	byPath := newBFF(t, td, client.SessionConfig{IsAPI: func(r *http.Request) bool { return strings.HasPrefix(r.URL.Path, "/api/") }})
	for path, want := range map[string]int{"/page": http.StatusFound, "/api/data": http.StatusUnauthorized} {
		req, _ := http.NewRequest(http.MethodGet, byPath.srv.URL+path, nil)
		req.Header.Set("Sec-Fetch-Mode", "navigate")
		if resp := send(t, req); resp.StatusCode != want {
			t.Fatalf("%s: %s", path, resp.Status)
		}
	}
}

// TestSessionOneRotationForConcurrentRequests: many requests of one
// session arriving once its access token expired cause one rotation, and
// all are served its token.
func TestSessionOneRotationForConcurrentRequests(t *testing.T) {
	td := apitest.Start(t, apitest.Options{AccessTTL: time.Minute})
	b := newBFF(t, td, client.SessionConfig{})
	cookie, family := b.signIn(t, nil, "")
	issued := b.wantToken(t, cookie)
	b.clock.Add(2 * time.Minute)

	const n = 20
	tokens := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			resp := b.do(t, http.MethodGet, "/page", cookie, i%2 == 0)
			if body := readBody(t, resp); resp.StatusCode == http.StatusOK {
				tokens[i] = body
			} else {
				t.Errorf("request %d: %s: %s", i, resp.Status, body)
			}
		})
	}
	wg.Wait()
	for i, tok := range tokens {
		if tok != tokens[0] || tok == issued {
			t.Fatalf("request %d got another or the expired token", i)
		}
	}
	// One refresh request: concurrent ones would each rotate or be
	// answered from the reuse interval (token.reused).
	evs := td.Events(t, family)
	if apitest.Count(evs, "token.rotated") != 1 || apitest.Count(evs, "token.reused") != 0 {
		t.Fatalf("events = %+v", evs)
	}
}

// TestSessionEndedSendsToSignIn: once the family is revoked, the next
// refresh ends the session: the cookie is cleared, a page goes to sign
// in, an API call gets 401; tokend is asked once.
func TestSessionEndedSendsToSignIn(t *testing.T) {
	td := apitest.Start(t, apitest.Options{AccessTTL: time.Minute})
	b := newBFF(t, td, client.SessionConfig{})
	cookie, family := b.signIn(t, nil, "")
	b.wantToken(t, cookie)
	if _, err := b.c.Revoke(ctx(t), wire.RevokeRequest{FamilyID: &family}); err != nil {
		t.Fatal(err)
	}
	b.clock.Add(2 * time.Minute)
	b.wantSignIn(t, cookie)
	b.wantSignIn(t, cookie)
	if got := apitest.Count(td.Events(t, family), "refresh.rejected"); got != 1 {
		t.Fatalf("%d refused refreshes, want the one", got)
	}
}

// TestSessionOutageKeepsSession: with tokend unreachable and the access
// token expired, requests get 503 with Retry-After and keep the cookie;
// once NATS is back the same session goes on, with no replay.
func TestSessionOutageKeepsSession(t *testing.T) {
	td := apitest.Start(t, apitest.Options{AccessTTL: time.Minute})
	b := newBFF(t, td, client.SessionConfig{Options: client.Options{RetryWindow: 500 * time.Millisecond,
		AttemptTimeout: 300 * time.Millisecond}})
	cookie, family := b.signIn(t, nil, "")
	issued := b.wantToken(t, cookie)

	b.stopNATS(t)
	b.clock.Add(2 * time.Minute)
	for _, page := range []bool{true, false} {
		resp := b.do(t, http.MethodGet, "/page", cookie, page)
		body := readBody(t, resp)
		if resp.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("during the outage: %s: %s", resp.Status, body)
		}
		if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || s < 1 {
			t.Fatalf("Retry-After %q", resp.Header.Get("Retry-After"))
		}
		if c := setCookie(t, resp); c != nil {
			t.Fatalf("the outage touched the cookie: %v", c)
		}
		var e wire.ErrorReply
		if !page && (json.Unmarshal([]byte(body), &e) != nil || e.Error != "temporarily_unavailable") {
			t.Fatalf("API answer: %s", body)
		}
	}

	td.StartNATS()
	var got string
	eventstest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		resp := b.do(t, http.MethodGet, "/page", cookie, true)
		body := readBody(t, resp)
		if resp.StatusCode != http.StatusOK {
			if resp.StatusCode != http.StatusServiceUnavailable {
				t.Fatalf("after the outage: %s: %s", resp.Status, body)
			}
			return errors.New(resp.Status)
		}
		got = body
		return nil
	})
	if got == issued {
		t.Fatal("the expired token was served")
	}
	evs := td.Events(t, family)
	if apitest.Count(evs, "token.rotated") != 1 || apitest.Count(evs, "token.replay_detected") != 0 ||
		apitest.Count(evs, "family.revoked") != 0 {
		t.Fatalf("events = %+v", evs)
	}
}

// TestSessionSignOut: signing out revokes the family and clears the
// cookie; if tokend is unreachable it fails and keeps both, and the
// session goes on.
func TestSessionSignOut(t *testing.T) {
	td := apitest.Start(t, apitest.Options{AccessTTL: time.Minute})
	b := newBFF(t, td, client.SessionConfig{})
	cookie, family := b.signIn(t, nil, "")
	b.wantToken(t, cookie)

	b.stopNATS(t)
	resp := b.do(t, http.MethodPost, "/signout", cookie, true)
	if resp.StatusCode != http.StatusServiceUnavailable || setCookie(t, resp) != nil {
		t.Fatalf("sign-out during an outage: %s %v", resp.Status, resp.Header["Set-Cookie"])
	}
	td.StartNATS()
	b.clock.Add(2 * time.Minute) // the next request refreshes: the session is alive
	eventstest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		if resp := b.do(t, http.MethodGet, "/page", cookie, true); resp.StatusCode != http.StatusOK {
			return errors.New(resp.Status)
		}
		return nil
	})

	resp = b.do(t, http.MethodPost, "/signout", cookie, true)
	if c := setCookie(t, resp); resp.StatusCode != http.StatusNoContent || c == nil || c.MaxAge >= 0 {
		t.Fatalf("sign-out: %s %v", resp.Status, resp.Header["Set-Cookie"])
	}
	evs := td.Events(t, family)
	if last := evs[len(evs)-1]; last.Type != "family.revoked" || last.Reason != "signed_out" {
		t.Fatalf("events = %+v", evs)
	}
	b.wantSignIn(t, cookie)
}

// TestSessionSignInAgainEndsOldSession: signing in over a session signs
// the old one out, so its family does not stay alive unused.
func TestSessionSignInAgainEndsOldSession(t *testing.T) {
	td := apitest.Start(t, apitest.Options{AccessTTL: time.Minute})
	b := newBFF(t, td, client.SessionConfig{})
	first, family := b.signIn(t, nil, "")
	second, _ := b.signIn(t, first, "")
	if second.Value == first.Value {
		t.Fatal("the session id was reused")
	}
	if evs := td.Events(t, family); apitest.Count(evs, "family.revoked") != 1 {
		t.Fatalf("the old family: %+v", evs)
	}
	b.wantToken(t, second)
	b.wantSignIn(t, first)
}

// TestSessionGrantTooNarrow: a session whose family does not cover the
// configured scope (the configuration changed since its sign-in) is signed
// out and sent to sign in, instead of failing on every request.
func TestSessionGrantTooNarrow(t *testing.T) {
	td := apitest.Start(t, apitest.Options{AccessTTL: time.Minute})
	b := newBFF(t, td, client.SessionConfig{Scope: []string{"write"}})
	cookie, family := b.signIn(t, nil, "read")
	b.wantSignIn(t, cookie)
	evs := td.Events(t, family)
	if last := evs[len(evs)-1]; last.Type != "family.revoked" || last.Reason != "signed_out" {
		t.Fatalf("events = %+v", evs)
	}
	if !strings.Contains(b.logged(), "invalid_scope") {
		t.Fatalf("logs: %s", b.logged())
	}
}

// TestSessionSourcesBounded: beyond MaxSources the least recently used
// Source is closed; its session goes on with a new one from the store.
// After Close every request gets 503.
func TestSessionSourcesBounded(t *testing.T) {
	td := apitest.Start(t, apitest.Options{AccessTTL: time.Minute})
	b := newBFF(t, td, client.SessionConfig{MaxSources: 2})
	first, _ := b.signIn(t, nil, "")
	src := client.SessionSource(b.sessions, first.Value)
	if src == nil {
		t.Fatal("no Source for the session")
	}
	b.signIn(t, nil, "")
	b.signIn(t, nil, "")
	if n := client.SessionCount(b.sessions); n != 2 {
		t.Fatalf("%d Sources kept", n)
	}
	if client.SessionSource(b.sessions, first.Value) != nil {
		t.Fatal("the least recently used Source was kept")
	}
	// Closing is asynchronous: wait for it.
	eventstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if _, err := src.Token(ctx(t), audA); !errors.Is(err, client.ErrClosed) {
			return fmt.Errorf("the evicted Source answers %v", err)
		}
		return nil
	})
	b.wantToken(t, first)
	if n := client.SessionCount(b.sessions); n != 2 {
		t.Fatalf("%d Sources kept", n)
	}

	b.sessions.Close()
	if resp := b.do(t, http.MethodGet, "/page", first, true); resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("after Close: %s", resp.Status)
	}
}

// TestNewSessionsChecksConfig: a configuration that could not work is
// refused at start, not by sending every user to sign in.
func TestNewSessionsChecksConfig(t *testing.T) {
	key := bytes.Repeat([]byte("k"), client.MinSessionKey)
	good := client.SessionConfig{Key: key, ClientID: "web", SignInURL: "/signin", Audience: audA, Scope: []string{"read"}}
	if _, err := client.NewSessions(nil, client.NewMemoryStore(), good); err != nil {
		t.Fatal(err)
	}
	for name, change := range map[string]func(*client.SessionConfig){
		"short key":                 func(c *client.SessionConfig) { c.Key = key[1:] },
		"no client id":              func(c *client.SessionConfig) { c.ClientID = "" },
		"no sign-in":                func(c *client.SessionConfig) { c.SignInURL = "" },
		"bad audience":              func(c *client.SessionConfig) { c.Audience = "https://a.example/ x" },
		"bad scope":                 func(c *client.SessionConfig) { c.Scope = []string{`"read"`} },
		"DPoP keys without DPoPURL": func(c *client.SessionConfig) { c.DPoPKeys = &client.MemoryDPoPKeys{} },
	} {
		cfg := good
		change(&cfg)
		if _, err := client.NewSessions(nil, client.NewMemoryStore(), cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
