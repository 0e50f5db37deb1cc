package client

import (
	"container/list"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tokend/tokend/api/wire"
)

// DefaultMaxSources bounds the Sources a Sessions keeps in memory.
const DefaultMaxSources = 10000

// MinSessionKey is the shortest SessionConfig.Key accepted.
const MinSessionKey = 32

// SessionConfig configures Sessions.
type SessionConfig struct {
	// Key signs the session cookies (HMAC-SHA256), at least MinSessionKey
	// random bytes, the same on every replica. Whoever holds it can make a
	// cookie for any session id.
	Key []byte
	// ClientID is the client id the application's sign-in issues families
	// for. Required.
	ClientID string
	// Audience and Scope are what the access token in the request context
	// is for (Source.Token's arguments): "" is the family's first audience,
	// no scope the whole grant.
	Audience string
	Scope    []string
	// CookieName defaults to "__Host-session", or "session" when Insecure
	// (browsers refuse a __Host- cookie without Secure).
	CookieName string
	// Insecure leaves Secure off the cookie so that it travels over plain
	// HTTP: only for a demo on http://localhost.
	Insecure bool
	// SignInURL is where a page navigation without a valid session is
	// redirected. Required; it must not be behind the Middleware.
	SignInURL string
	// IsAPI tells an API call (answered 401 with JSON) from a page
	// navigation (redirected to SignInURL); by default a request is a
	// navigation if its Sec-Fetch-Mode is navigate or, without that
	// header, if it accepts text/html.
	IsAPI func(*http.Request) bool
	// Options are every Source's. While tokend is unreachable, a request
	// whose access token expired waits for the Source's retries (at most
	// Options.RetryWindow) before its 503.
	Options Options
	// MaxSources bounds the Sources kept in memory, one per active
	// session (DefaultMaxSources); the least recently used is closed. A
	// session whose Source was closed goes on with a new one: its state
	// is in the Store.
	MaxSources int
	// Log receives failures other than a session ending (nil: discarded).
	// It never gets a token or a cookie value.
	Log *slog.Logger
	// DPoPKeys, if set, keeps the DPoP key (RFC 9449) of each session
	// begun with StartDPoP, whose Source then signs its refreshes with it
	// (Options.DPoPURL is required). A session whose key is gone refreshes
	// without a proof, which tokend refuses for a bound family
	// (ErrInvalidDPoPProof): the Middleware then signs it out.
	DPoPKeys DPoPKeys
}

// DPoPKeys keeps the DPoP key of each session of a Sessions.
type DPoPKeys interface {
	// Key returns the session's key, nil if it has none.
	Key(ctx context.Context, sessionID string) (*DPoP, error)
	Put(ctx context.Context, sessionID string, key *DPoP) error
	// Delete forgets the session's key; one it does not have is no error.
	Delete(ctx context.Context, sessionID string) error
}

// MemoryDPoPKeys keeps DPoP keys in this process's memory, lost when it
// stops (its sessions must sign in again) and seen by no other replica.
// A deployment keeps each key beside its session's refresh token, sealed
// with a key of its own, or, better, never exported at all: a key in a
// KMS or HSM behind a crypto.Signer (NewDPoP), so that a copy of the
// session store is not enough to use the refresh tokens. The zero value is
// ready to use.
type MemoryDPoPKeys struct {
	mu   sync.Mutex
	keys map[string]*DPoP
}

func (m *MemoryDPoPKeys) Key(_ context.Context, sessionID string) (*DPoP, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.keys[sessionID], nil
}

func (m *MemoryDPoPKeys) Put(_ context.Context, sessionID string, key *DPoP) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.keys == nil {
		m.keys = map[string]*DPoP{}
	}
	m.keys[sessionID] = key
	return nil
}

func (m *MemoryDPoPKeys) Delete(_ context.Context, sessionID string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.keys, sessionID)
	return nil
}

// Sessions keeps browser sessions of a backend-for-frontend: the browser
// holds a cookie with an opaque session id, signed so that it cannot be
// forged; the session's refresh token stays on the server, in a Store,
// and its access tokens come from one Source per session.
//
//	sessions, err := client.NewSessions(c, store, client.SessionConfig{Key: key,
//		ClientID: "web-app", Audience: "https://api.example.com", SignInURL: "/signin"})
//	mux.Handle("GET /", sessions.Middleware(page)) // page calls client.AccessTokenFrom(r.Context())
//	// in the sign-in handler, after checking the user:
//	issued, err := c.Issue(ctx, wire.IssueRequest{Subject: user, ClientID: "web-app", …})
//	err = sessions.Start(w, r, issued)
//
// It is safe for concurrent use.
type Sessions struct {
	c     *Client
	store Store
	cfg   SessionConfig
	log   *slog.Logger

	mu      sync.Mutex
	sources map[string]*list.Element // of lru, holding a *Source
	lru     *list.List               // most recently used first
	closed  bool
	closing sync.WaitGroup // evicted Sources being closed
}

// NewSessions returns Sessions keeping their refresh tokens in store and
// refreshing through c. It fails if cfg lacks Key, ClientID or SignInURL,
// or if its Audience or Scope is malformed.
func NewSessions(c *Client, store Store, cfg SessionConfig) (*Sessions, error) {
	switch {
	case len(cfg.Key) < MinSessionKey:
		return nil, fmt.Errorf("client: the session key must have at least %d bytes", MinSessionKey)
	case cfg.ClientID == "":
		return nil, errors.New("client: sessions need a client id")
	case cfg.SignInURL == "":
		return nil, errors.New("client: sessions need a sign-in URL")
	case cfg.DPoPKeys != nil && cfg.Options.DPoPURL == "":
		return nil, errNoDPoPURL
	}
	// Else every session would be refused and sent to sign in, again and
	// again.
	if _, err := newRequest(cfg.Audience, cfg.Scope); err != nil {
		return nil, err
	}
	if cfg.CookieName == "" {
		cfg.CookieName = "__Host-session"
		if cfg.Insecure {
			cfg.CookieName = "session"
		}
	}
	if cfg.IsAPI == nil {
		cfg.IsAPI = isAPI
	}
	cfg.MaxSources = orDefault(cfg.MaxSources, DefaultMaxSources)
	s := &Sessions{c: c, store: store, cfg: cfg, log: cfg.Log, sources: map[string]*list.Element{}, lru: list.New()}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	return s, nil
}

// isAPI: a navigation says so with Sec-Fetch-Mode; older browsers and
// other clients by what they accept.
func isAPI(r *http.Request) bool {
	if mode := r.Header.Get("Sec-Fetch-Mode"); mode != "" {
		return mode != "navigate"
	}
	return !strings.Contains(r.Header.Get("Accept"), "text/html")
}

type tokenKey struct{}

type dpopKey struct{}

// AccessTokenFrom returns the access token the Middleware put in ctx.
func AccessTokenFrom(ctx context.Context) (AccessToken, bool) {
	at, ok := ctx.Value(tokenKey{}).(AccessToken)
	return at, ok
}

// DPoPFrom returns the DPoP key of the session the Middleware served, for
// DPoP.Authorize; false for a session without one.
func DPoPFrom(ctx context.Context) (*DPoP, bool) {
	key, ok := ctx.Value(dpopKey{}).(*DPoP)
	return key, ok && key != nil
}

// Start begins a session with reply, the answer to the issue of a family
// for the configured ClientID, made by the application's sign-in: it saves
// the refresh token under a fresh session id and sets the cookie. A
// session the request's cookie named before is signed out (its family
// revoked), so that a second sign-in leaves no live token behind. On
// error no cookie is set.
func (s *Sessions) Start(w http.ResponseWriter, r *http.Request, reply wire.TokenReply) error {
	return s.start(w, r, reply, nil)
}

// StartDPoP is Start for a family bound to key (issued with dpop_jkt
// key.JKT()): the session's refreshes carry proofs by key, which
// SessionConfig.DPoPKeys keeps.
func (s *Sessions) StartDPoP(w http.ResponseWriter, r *http.Request, reply wire.TokenReply, key *DPoP) error {
	if s.cfg.DPoPKeys == nil {
		return errors.New("client: StartDPoP needs SessionConfig.DPoPKeys")
	}
	return s.start(w, r, reply, key)
}

func (s *Sessions) start(w http.ResponseWriter, r *http.Request, reply wire.TokenReply, key *DPoP) error {
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return err
	}
	id := base64.RawURLEncoding.EncodeToString(raw[:]) // a valid KV key
	if key != nil {
		if err := s.cfg.DPoPKeys.Put(r.Context(), id, key); err != nil {
			return err
		}
	}
	src, err := s.source(r.Context(), id)
	if err == nil {
		if err = src.Begin(r.Context(), s.cfg.ClientID, reply); err != nil {
			s.forget(id, src)
		}
	}
	if err != nil {
		s.forgetKey(r.Context(), id)
		return err
	}
	if old, ok := s.sessionID(r); ok {
		if err := s.end(r.Context(), old); err != nil {
			s.log.Warn("client: signing out the session replaced by a sign-in", "err", err)
		}
	}
	http.SetCookie(w, s.cookie(id+"."+s.mac(id), 0))
	return nil
}

// SignOut ends the request's session: its family is revoked, its token
// deleted from the store, and the cookie cleared. If that fails (tokend or
// the store unreachable) the cookie stays, so the user can try again, and
// the error is returned. Without a valid cookie it only clears the cookie.
func (s *Sessions) SignOut(w http.ResponseWriter, r *http.Request) error {
	if id, ok := s.sessionID(r); ok {
		if err := s.end(r.Context(), id); err != nil {
			return err
		}
	}
	http.SetCookie(w, s.cookie("", -1))
	return nil
}

func (s *Sessions) end(ctx context.Context, id string) error {
	src, err := s.source(ctx, id)
	if err != nil {
		return err
	}
	// A Source that End failed on is dead all the same: the next request
	// gets a new one, which finds the session still in the store.
	defer s.forget(id, src)
	if err := src.End(ctx); err != nil {
		return err
	}
	s.forgetKey(ctx, id)
	return nil
}

// forgetKey deletes the DPoP key of a session that has ended.
func (s *Sessions) forgetKey(ctx context.Context, id string) {
	if s.cfg.DPoPKeys == nil {
		return
	}
	if err := s.cfg.DPoPKeys.Delete(ctx, id); err != nil {
		s.log.Warn("client: deleting the DPoP key of an ended session", "err", err)
	}
}

// Middleware serves next with a valid access token in the request context
// (AccessTokenFrom) for requests with a valid session cookie, refreshing
// it through the session's Source when it expired or is due. Otherwise:
//
//   - no cookie, a cookie with a bad signature, or a session that ended
//     (Terminal: revoked, expired, signed out elsewhere): the cookie is
//     cleared and a page navigation is redirected (302) to SignInURL, an
//     API call answered 401 with {"error":"login_required"};
//   - a family whose grant does not cover Audience and Scope (they changed
//     since it was issued): the same, after signing it out;
//   - tokend or the store unreachable while the cached token has expired
//     (Transient): 503 with Retry-After, and the session and the cookie
//     stay: an outage never signs anyone out, however long. tokend does
//     not run a refresh whose caller gave up, and a refresh that ran but
//     whose reply was lost is recovered (the same child) while inside
//     tokend's reuse interval after the rotation (Source). Only a reply
//     lost for longer ends the session (ErrLostRotation); tokend then
//     revokes its family, so no live token is left that nobody holds.
func (s *Sessions) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, ok := s.sessionID(r)
		if !ok {
			s.toSignIn(w, r)
			return
		}
		at, key, err := s.token(r.Context(), id)
		switch {
		case err == nil:
			ctx := context.WithValue(context.WithValue(r.Context(), tokenKey{}, at), dpopKey{}, key)
			next.ServeHTTP(w, r.WithContext(ctx))
		case Terminal(err):
			s.toSignIn(w, r)
		case errors.Is(err, ErrInvalidDPoPProof) || errors.Is(err, ErrInvalidScope) || errors.Is(err, ErrInvalidTarget):
			// A refused proof: the session's key is lost, or this clock is
			// off (its description says which); it would fail again.
			s.log.Warn("client: the session cannot refresh (its grant does not cover the configured audience and scope, or its DPoP proof is refused); signing it out",
				"err", err)
			if err := s.end(r.Context(), id); err != nil {
				s.log.Warn("client: signing out a session", "err", err)
			}
			s.toSignIn(w, r)
		case Transient(err) || errors.Is(err, ErrClosed):
			// ErrClosed: the Sessions are closed, the server is stopping.
			s.unavailable(w, r, RetryAfter(err))
		case r.Context().Err() != nil:
			// The browser went away; nobody reads an answer.
		default:
			s.log.Error("client: no access token for a session", "err", err)
			s.reply(w, r, http.StatusInternalServerError, "server_error", "the session failed")
		}
	})
}

// token returns the session's access token and DPoP key. A Source closed
// by eviction between lookup and use is replaced from the store.
func (s *Sessions) token(ctx context.Context, id string) (AccessToken, *DPoP, error) {
	for range 3 {
		src, err := s.source(ctx, id)
		if err != nil {
			return AccessToken{}, nil, err
		}
		at, err := src.Token(ctx, s.cfg.Audience, s.cfg.Scope...)
		if Terminal(err) {
			s.forget(id, src)
			s.forgetKey(ctx, id)
		}
		if !errors.Is(err, ErrClosed) {
			return at, src.o.DPoP, err
		}
	}
	return AccessToken{}, nil, ErrClosed
}

// source returns the session's Source, made if there is none (with the
// session's DPoP key), and makes it the most recently used; beyond
// MaxSources the least recently used is closed.
func (s *Sessions) source(ctx context.Context, id string) (*Source, error) {
	if src, err, ok := s.cached(id); ok {
		return src, err
	}
	opts := s.cfg.Options
	if s.cfg.DPoPKeys != nil {
		key, err := s.cfg.DPoPKeys.Key(ctx, id)
		if err != nil {
			return nil, fmt.Errorf("%w: DPoP key: %w", ErrStoreUnavailable, err)
		}
		opts.DPoP = key
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	if el, ok := s.sources[id]; ok { // made meanwhile by another request
		s.lru.MoveToFront(el)
		return el.Value.(*Source), nil
	}
	src := NewSource(s.c, s.store, id, opts)
	s.sources[id] = s.lru.PushFront(src)
	for s.lru.Len() > s.cfg.MaxSources {
		last := s.lru.Back()
		old := s.lru.Remove(last).(*Source)
		delete(s.sources, old.id)
		s.closeLater(old)
	}
	return src, nil
}

// cached returns the session's Source if there is one, made the most
// recently used.
func (s *Sessions) cached(id string) (*Source, error, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed, true
	}
	if el, ok := s.sources[id]; ok {
		s.lru.MoveToFront(el)
		return el.Value.(*Source), nil, true
	}
	return nil, nil, false
}

// forget drops src, the Source of session id, from memory and closes it.
func (s *Sessions) forget(id string, src *Source) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return // Close closed it
	}
	if el, ok := s.sources[id]; ok && el.Value.(*Source) == src {
		s.lru.Remove(el)
		delete(s.sources, id)
	}
	s.closeLater(src)
}

// closeLater closes src off the caller's path (Close waits for a refresh
// in flight); s.mu is held.
func (s *Sessions) closeLater(src *Source) {
	s.closing.Go(src.Close)
}

// Close closes every Source, so that rotations in flight are saved; the
// Middleware answers 503 from then on. Call it when the server stops.
func (s *Sessions) Close() {
	s.mu.Lock()
	s.closed = true
	for el := s.lru.Front(); el != nil; el = el.Next() {
		s.closeLater(el.Value.(*Source))
	}
	s.lru.Init()
	clear(s.sources)
	s.mu.Unlock()
	s.closing.Wait()
}

// sessionID returns the session id of the request's first cookie with a
// valid signature.
func (s *Sessions) sessionID(r *http.Request) (string, bool) {
	for _, c := range r.CookiesNamed(s.cfg.CookieName) {
		id, mac, ok := strings.Cut(c.Value, ".")
		if ok && hmac.Equal([]byte(mac), []byte(s.mac(id))) {
			return id, true
		}
	}
	return "", false
}

// mac signs a session id; the label keeps these signatures apart from
// anything else the application might sign with the same key.
func (s *Sessions) mac(id string) string {
	m := hmac.New(sha256.New, s.cfg.Key)
	m.Write([]byte("tokend session cookie v1\x00"))
	m.Write([]byte(id))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

func (s *Sessions) cookie(value string, maxAge int) *http.Cookie {
	return &http.Cookie{Name: s.cfg.CookieName, Value: value, Path: "/", MaxAge: maxAge,
		HttpOnly: true, Secure: !s.cfg.Insecure, SameSite: http.SameSiteLaxMode}
}

// toSignIn clears the cookie and sends the user to sign in.
func (s *Sessions) toSignIn(w http.ResponseWriter, r *http.Request) {
	if len(r.CookiesNamed(s.cfg.CookieName)) > 0 {
		http.SetCookie(w, s.cookie("", -1))
	}
	if s.cfg.IsAPI(r) {
		s.reply(w, r, http.StatusUnauthorized, "login_required", "sign in at "+s.cfg.SignInURL)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	http.Redirect(w, r, s.cfg.SignInURL, http.StatusFound)
}

func (s *Sessions) unavailable(w http.ResponseWriter, r *http.Request, hint time.Duration) {
	w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(max(hint.Seconds(), 1)))))
	// Only a request with a valid session gets here: tell the user the
	// outage did not sign them out.
	s.reply(w, r, http.StatusServiceUnavailable, CodeTemporarilyUnavailable,
		"The sign-in service is not answering right now. You are still signed in: your session is kept. Try again in a moment.")
}

// reply answers JSON to an API call, text to a page.
func (s *Sessions) reply(w http.ResponseWriter, r *http.Request, status int, code, description string) {
	w.Header().Set("Cache-Control", "no-store")
	if !s.cfg.IsAPI(r) {
		http.Error(w, description, status)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(wire.ErrorReply{Error: code, Description: description})
}
