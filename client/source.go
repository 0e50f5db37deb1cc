package client

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/domain"
)

// Defaults of Options.
const (
	DefaultLeeway         = 60 * time.Second
	DefaultRenewAfter     = 0.5
	DefaultRetryWindow    = 8 * time.Second
	DefaultAttemptTimeout = 3 * time.Second
	DefaultMaxTokens      = 32
)

// renewJitter spreads renewals of tokens minted together (a deploy, a
// burst of sign-ins) over ±5% of their lifetime.
const renewJitter = 0.05

// maxReloads bounds how often one refresh reloads the session after the
// store changed under it (another replica rotated or ended the session).
const maxReloads = 4

// Options tune a Source; the zero value means the defaults.
type Options struct {
	// Leeway: a cached access token is served while it has more than this
	// left (DefaultLeeway), at most a quarter of its lifetime so that
	// short-lived tokens are still reused.
	Leeway time.Duration
	// RenewAfter is the fraction of an access token's lifetime after which
	// serving it from the cache also starts a renewal in the background
	// (DefaultRenewAfter, jittered by ±5% of the lifetime): tokens are
	// renewed ahead of time, not after a call failed.
	RenewAfter float64
	// RetryWindow bounds how long one refresh token is retried after
	// transient failures, counted from its first presentation
	// (DefaultRetryWindow), and so does the family's reuse interval, less
	// a second, which tokend's replies state: inside that interval a retry
	// of a token that was rotated returns the same child; after it, the
	// child is out of reach (ErrLostRotation).
	RetryWindow time.Duration
	// AttemptTimeout bounds each request to tokend and to the store
	// (DefaultAttemptTimeout).
	AttemptTimeout time.Duration
	// MaxTokens bounds the access tokens cached (DefaultMaxTokens).
	MaxTokens int
	// Now is the clock of access-token lifetimes (time.Now if nil).
	// Retries and back-off use the monotonic clock whatever Now says.
	Now func() time.Time
	// OnTerminal, if set, is called once when the session ends with a
	// terminal error (see Terminal), before the Token calls that waited
	// for the failing refresh return: sign the user out there. Not called
	// for End.
	OnTerminal func(err error)
	// Observe, if set, receives an Event for every Token call and every
	// refresh. Events hold no token.
	Observe func(Event)
	// DPoP, if set, signs a DPoP proof (RFC 9449) for every refresh
	// request, each attempt a new one: a family bound to its key (issued
	// with dpop_jkt DPoP.JKT()) refreshes only with them, and tokend binds
	// the access tokens to the key (AccessToken.TokenType DPoP). When
	// tokend answers use_dpop_nonce, the request is sent again at once
	// with its nonce.
	DPoP *DPoP
	// DPoPURL is the URL the proofs are made for (their htu): the
	// deployment's token endpoint, tokend's --issuer followed by
	// /oauth2/token, as the proof would name it over HTTP. Required with
	// DPoP.
	DPoPURL string
}

// withDefaults fills in the defaults for zero and negative values.
func (o Options) withDefaults() Options {
	o.Leeway = orDefault(o.Leeway, DefaultLeeway)
	o.RenewAfter = orDefault(o.RenewAfter, DefaultRenewAfter)
	o.RetryWindow = orDefault(o.RetryWindow, DefaultRetryWindow)
	o.AttemptTimeout = orDefault(o.AttemptTimeout, DefaultAttemptTimeout)
	o.MaxTokens = orDefault(o.MaxTokens, DefaultMaxTokens)
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

func orDefault[T time.Duration | float64 | int](v, def T) T {
	if v <= 0 {
		return def
	}
	return v
}

// Outcome says how a Token call or a refresh ended.
type Outcome string

// Outcomes of Events.
const (
	OutcomeHit       Outcome = "hit"       // served from the cache
	OutcomeRefreshed Outcome = "refreshed" // a refresh the caller waited for
	OutcomeRenewed   Outcome = "renewed"   // a background renewal
	OutcomeTransient Outcome = "transient" // failed, may work later (Transient)
	OutcomeTerminal  Outcome = "terminal"  // the session is over (Terminal)
	OutcomeError     Outcome = "error"     // any other failure: a refused scope or audience, a bad reply
)

// Event describes a Token call (Refresh false) or one refresh, an exchange
// with tokend that Token calls wait for or that renews in the background
// (Refresh true). It never holds a token.
type Event struct {
	Refresh  bool
	Audience string   // as asked; "" is the family's first
	Scope    []string // as asked; nil is the whole grant
	Outcome  Outcome
	Duration time.Duration
	Attempts int   // refresh requests sent to tokend (refresh events)
	Err      error // nil on success
}

// AccessToken is an access token as tokend granted it. Its String,
// GoString and LogValue leave the token out.
type AccessToken struct {
	Token    string    // the JWT, for "Authorization: Bearer" (or DPoP, see TokenType)
	Expiry   time.Time // by Options.Now: when it was asked for plus expires_in, or the JWT's exp if up to a second earlier
	Scope    []string  // the granted scope, as the reply's scope
	Audience string    // the JWT's aud; "" when the family has no audience
	// TokenType is the reply's token_type: "Bearer", or TokenTypeDPoP for
	// a token bound to the Source's DPoP key, which goes to a resource
	// server with a proof (DPoP.Authorize).
	TokenType string
}

func (t AccessToken) String() string {
	return fmt.Sprintf("AccessToken{aud %q, scope %q, expires %s}", t.Audience, strings.Join(t.Scope, " "), t.Expiry.Format(time.RFC3339))
}

// GoString keeps %#v from printing the token.
func (t AccessToken) GoString() string { return t.String() }

// LogValue keeps slog from printing the token.
func (t AccessToken) LogValue() slog.Value {
	return slog.GroupValue(slog.String("aud", t.Audience), slog.String("scope", strings.Join(t.Scope, " ")),
		slog.Time("expiry", t.Expiry))
}

// Source hands out access tokens for one session: one token family whose
// current refresh token is kept in a Store, possibly shared by several
// replicas of a service. It is safe for concurrent use, and built so that
// the classic client-side refresh bugs cannot happen:
//
//   - Tokens are cached per audience and granted scope. A token is served
//     only for its own audience ("" is the family's first, as tokend
//     mints without one) and only if the scope tokend granted it covers
//     every scope asked for; a request for the whole grant (no scope) is
//     served only by a token minted for the whole grant.
//   - A cached token is served while it has more than Options.Leeway left.
//     Once Options.RenewAfter of its lifetime has passed, serving it also
//     starts a renewal in the background.
//   - One refresh at a time per Source, however many goroutines ask: they
//     wait for it and share its result. The refresh runs on its own
//     context, so a caller giving up does not cancel it for the others.
//   - Before every refresh the Source loads the refresh token from the
//     Store, and it saves the child with a compare-and-swap against the
//     revision it loaded. If another replica saved first, what it saved
//     descends from the same token, so the Source keeps the store's token
//     (one chain, no fork). A child that could not be saved (store down)
//     is kept in memory and saved before the next refresh.
//   - A reply without an access or refresh token is an error (ErrBadReply),
//     never a success; nothing of it is cached or stored.
//   - Transient failures are retried with the same refresh token, with
//     back-off that honours retry_after_ms, but only within
//     Options.RetryWindow of the token's first presentation, which must be
//     below tokend's --reuse-interval: inside it a retry of a rotated token
//     returns the same child. A request that never reached tokend (no
//     responders, connection down) proves the token unused and may be
//     retried at any time. A timeout proves nothing: tokend may have rotated
//     the token and lost the reply. Every attempt after such an uncertain
//     one says so (recover): tokend then returns the same child while the
//     rotation is inside its reuse interval, by its own clock, however late
//     the rotation landed (a tokend frozen with requests in its socket);
//     only a rotation out of reach ends the session (ErrLostRotation), and
//     tokend revokes that family (reason lost_rotation) rather than judging
//     a replay, so no live token is left that nobody holds. The window is
//     also bounded by the reuse interval tokend reports, less a second.
//     Each request carries its deadline, and tokend does not run one whose
//     caller has given up: an outage or a freeze of tokend ends in
//     temporarily_unavailable (transient, the session kept), not in a
//     rotation no one receives.
//   - A terminal failure (Terminal: invalid_grant, invalid_request, no
//     session in the store) clears the cache, deletes the session from the
//     Store (so other replicas learn it), calls Options.OnTerminal once,
//     and every later call fails at once with the same error, sending
//     nothing. A transient failure (Transient) never ends the session: do
//     not sign users out for it.
//
// Connect with nats.ReconnectBufSize(-1) (see the package documentation).
type Source struct {
	c     *Client
	store Store
	id    string
	o     Options

	mu       sync.Mutex
	cache    map[string]*entry
	inflight *flight
	dead     error
	closed   bool
	unsaved  *unsaved
	flights  sync.WaitGroup
	backoff  time.Time // no background refresh before this (monotonic)
	terminal sync.Once

	// tries is the retry state of the refresh token last presented. Only
	// the one refresh in flight touches it.
	tries tries
	// reuse is the family's reuse interval as tokend last said (nil: not
	// said), from Begin or a refresh.
	reuse atomic.Pointer[time.Duration]
}

// NewSource returns a Source for the session sessionID in store, whose
// refresh requests go through c. The session is started with Begin, here
// or on another replica sharing store.
func NewSource(c *Client, store Store, sessionID string, opts Options) *Source {
	return &Source{c: c, store: store, id: sessionID, o: opts.withDefaults(), cache: map[string]*entry{}}
}

// Begin starts the session with reply, the answer to the issue of its
// family for clientID: the refresh token goes to the store, which must not
// hold one for the session yet (else ErrConflict), and the access token is
// cached for the family's first audience and the whole grant.
func (s *Source) Begin(ctx context.Context, clientID string, reply wire.TokenReply) error {
	asked := s.o.Now()
	if reply.RefreshToken == "" || reply.AccessToken == "" {
		return fmt.Errorf("%w: no token in the issue reply", ErrBadReply)
	}
	e, err := s.newEntry(request{}, reply, asked)
	if err != nil {
		return err
	}
	if s.o.DPoP != nil {
		s.o.DPoP.SetNonce(reply.DPoPNonce)
	}
	s.learn(reply)
	if err := s.checkUsable(); err != nil {
		return err
	}
	if _, err := s.store.Save(ctx, s.id, stored(reply, clientID), 0); err != nil {
		return err
	}
	s.mu.Lock()
	s.put(e)
	s.mu.Unlock()
	return nil
}

func (s *Source) checkUsable() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dead != nil {
		return s.dead
	}
	if s.closed {
		return ErrClosed
	}
	return nil
}

// Token returns an access token for audience ("" for the family's first)
// carrying at least the scopes asked for (none: the whole grant), from the
// cache or by refreshing. Errors: Terminal ones end the session (sign the
// user in again); Transient ones do not (try again later); a scope or
// audience outside the grant is ErrInvalidScope or ErrInvalidTarget and
// leaves the session as it was; ErrBadReply; ErrClosed; ctx's error if it
// ends first (the refresh goes on for the others).
func (s *Source) Token(ctx context.Context, audience string, scope ...string) (AccessToken, error) {
	e, err := s.get(ctx, audience, scope)
	if err != nil {
		return AccessToken{}, err
	}
	return e.tok, nil
}

// get is Token, returning the cache entry, and observed.
func (s *Source) get(ctx context.Context, audience string, scope []string) (*entry, error) {
	start := time.Now()
	r, err := newRequest(audience, scope)
	var e *entry
	outcome := OutcomeError
	if err == nil {
		e, outcome, err = s.token(ctx, r)
	}
	s.observe(Event{Audience: audience, Scope: r.scope, Outcome: outcome, Duration: time.Since(start), Err: err})
	return e, err
}

func (s *Source) token(ctx context.Context, r request) (*entry, Outcome, error) {
	for {
		s.mu.Lock()
		if s.dead != nil {
			s.mu.Unlock()
			return nil, OutcomeTerminal, s.dead
		}
		if s.closed {
			s.mu.Unlock()
			return nil, OutcomeError, ErrClosed
		}
		now := s.o.Now()
		if e := s.lookup(r, now); e != nil {
			due := !now.Before(e.renewAt)
			if (due || s.unsaved != nil) && s.inflight == nil && time.Now().After(s.backoff) {
				s.start(e.request(), true, !due)
			}
			s.mu.Unlock()
			return e, OutcomeHit, nil
		}
		c := s.inflight
		if c == nil {
			c = s.start(r, false, false)
		}
		s.mu.Unlock()
		select {
		case <-c.done:
		case <-ctx.Done():
			err := fmt.Errorf("client: waiting for a token refresh: %w", ctx.Err())
			return nil, outcomeOf(err), err
		}
		if e, err, ok := c.answer(r); ok {
			if err != nil {
				return nil, outcomeOf(err), err
			}
			return e, OutcomeRefreshed, nil
		}
		// That refresh was for another audience or scope: look again.
	}
}

func outcomeOf(err error) Outcome {
	switch {
	case Terminal(err):
		return OutcomeTerminal
	case Transient(err):
		return OutcomeTransient
	}
	return OutcomeError
}

func (s *Source) observe(ev Event) {
	if s.o.Observe != nil {
		s.o.Observe(ev)
	}
}

// End signs the session out: it revokes the family at tokend and deletes
// the session from the store. The Source fails every later call with
// ErrNoSession; OnTerminal is not called.
func (s *Source) End(ctx context.Context) error {
	s.terminal.Do(func() {})
	s.mu.Lock()
	if s.dead == nil {
		s.dead = fmt.Errorf("client: the session was signed out: %w", ErrNoSession)
	}
	clear(s.cache)
	s.unsaved = nil
	c := s.inflight
	s.mu.Unlock()
	if c != nil {
		// Its child, if any, is saved before the family is revoked.
		select {
		case <-c.done:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	for range maxReloads {
		t, rev, err := s.store.Load(ctx, s.id)
		if errors.Is(err, ErrNoSession) {
			return nil
		}
		if err != nil {
			return wrapStore(err)
		}
		id := t.FamilyID
		if _, err := s.c.Revoke(ctx, wire.RevokeRequest{FamilyID: &id, Reason: "signed_out"}); err != nil {
			return err
		}
		if err := s.store.Delete(ctx, s.id, rev); !errors.Is(err, ErrConflict) {
			return wrapStore(err)
		}
	}
	return fmt.Errorf("%w: the session kept changing", ErrStoreUnavailable)
}

// Close stops the Source from starting refreshes and waits for the one in
// flight, so a rotation it made is saved; a child still unsaved gets one
// more try. Later calls fail with ErrClosed.
func (s *Source) Close() {
	s.mu.Lock()
	s.closed = true
	if s.unsaved != nil && s.inflight == nil && s.dead == nil {
		s.start(request{}, true, true)
	}
	s.mu.Unlock()
	s.flights.Wait()
}

// request is what a Token call asks for.
type request struct {
	audience string   // "" is the family's first
	scope    []string // nil: the whole grant
}

func (r request) full() bool { return len(r.scope) == 0 }

func (r request) equal(o request) bool {
	return r.audience == o.audience && scopeKey(r.scope) == scopeKey(o.scope)
}

// newRequest checks audience and scope with tokend's own rules, so a
// malformed one is refused here instead of as invalid_request, which would
// end the session.
func newRequest(audience string, scope []string) (request, error) {
	r := request{audience: audience}
	if audience != "" {
		if _, err := domain.ValidateAudiences([]string{audience}); err != nil {
			return r, fmt.Errorf("%w: %v", ErrInvalidTarget, err)
		}
	}
	parsed, err := domain.ParseScope(strings.Join(scope, " "))
	if err != nil {
		return r, fmt.Errorf("%w: %v", ErrInvalidScope, err)
	}
	if len(parsed) > 0 {
		r.scope = parsed
	}
	return r, nil
}

// flight is a refresh in flight; done closes when entry or err is set.
type flight struct {
	req        request
	background bool
	saveOnly   bool // only save an unsaved child, no refresh
	done       chan struct{}
	entry      *entry
	err        error
}

// answer returns c's result for a caller asking r, if it is one: a token
// that serves r, or an error that is not specific to c's own request.
func (c *flight) answer(r request) (*entry, error, bool) {
	if c.entry != nil && c.entry.serves(r) {
		return c.entry, nil, true
	}
	if c.err != nil && (c.req.equal(r) || Terminal(c.err) || Transient(c.err)) {
		return nil, c.err, true
	}
	return nil, nil, false
}

// start begins a refresh for r; s.mu is held.
func (s *Source) start(r request, background, saveOnly bool) *flight {
	c := &flight{req: r, background: background, saveOnly: saveOnly, done: make(chan struct{})}
	s.inflight = c
	s.flights.Add(1)
	go s.run(c)
	return c
}

func (s *Source) run(c *flight) {
	defer s.flights.Done()
	start := time.Now()
	e, attempts, err := s.refresh(c)
	s.mu.Lock()
	if e != nil && s.dead == nil {
		s.put(e)
	}
	if err != nil && c.background {
		s.backoff = time.Now().Add(max(time.Second, RetryAfter(err)))
	}
	c.entry, c.err = e, err
	s.inflight = nil
	s.mu.Unlock()
	// The hooks run before the waiters return, so what they record is
	// there once Token has answered.
	if !c.saveOnly {
		outcome := OutcomeRefreshed
		if c.background {
			outcome = OutcomeRenewed
		}
		if err != nil {
			outcome = outcomeOf(err)
		}
		s.observe(Event{Refresh: true, Audience: c.req.audience, Scope: c.req.scope, Outcome: outcome,
			Duration: time.Since(start), Attempts: attempts, Err: err})
	}
	if Terminal(err) {
		s.terminal.Do(func() {
			if s.o.OnTerminal != nil {
				s.o.OnTerminal(err)
			}
		})
	}
	close(c.done)
}

// die ends the session with cause and returns the error every later call
// gets.
func (s *Source) die(cause error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dead == nil {
		s.dead = fmt.Errorf("client: the session has ended: %w", cause)
		clear(s.cache)
		s.unsaved = nil
	}
	return s.dead
}

// unsaved is a child tokend handed out that the store has not taken yet.
type unsaved struct {
	parent [32]byte // hash of the token it replaces
	child  StoredToken
}

// tries is the retry state of one refresh token.
type tries struct {
	token     [32]byte  // hash of the token
	first     time.Time // its first presentation (monotonic), zero if none yet
	uncertain bool      // an attempt may have reached tokend without its reply reaching us
}

func hashToken(t string) [32]byte { return sha256.Sum256([]byte(t)) }

func stored(reply wire.TokenReply, clientID string) StoredToken {
	exp, _ := time.Parse(time.RFC3339, reply.RefreshTokenExpiresAt)
	return StoredToken{RefreshToken: reply.RefreshToken, FamilyID: reply.FamilyID, ClientID: clientID, ExpiresAt: exp}
}

func wrapStore(err error) error {
	if err == nil || errors.Is(err, ErrNoSession) || errors.Is(err, ErrConflict) || errors.Is(err, ErrStoreUnavailable) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrStoreUnavailable, err)
}

func (s *Source) storeCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), s.o.AttemptTimeout)
}

func (s *Source) load() (StoredToken, uint64, error) {
	ctx, cancel := s.storeCtx()
	defer cancel()
	t, rev, err := s.store.Load(ctx, s.id)
	return t, rev, wrapStore(err)
}

func (s *Source) save(t StoredToken, rev uint64) (uint64, error) {
	ctx, cancel := s.storeCtx()
	defer cancel()
	newRev, err := s.store.Save(ctx, s.id, t, rev)
	return newRev, wrapStore(err)
}

// drop deletes the session from the store after a terminal answer for the
// token at revision rev. ErrConflict means the store moved on: the answer
// may be about a token another replica had replaced already, so the caller
// tries the store's token instead of ending the session.
func (s *Source) drop(rev uint64) error {
	ctx, cancel := s.storeCtx()
	defer cancel()
	if err := s.store.Delete(ctx, s.id, rev); errors.Is(err, ErrConflict) {
		return err
	}
	// Any other failure leaves the token to the other replicas, which
	// get the same terminal answer from tokend when they present it.
	return nil
}

// refresh is one refresh: load the session's token, exchange it, save the
// child. It returns the access token to cache, how many refresh requests
// it sent, and the error.
func (s *Source) refresh(c *flight) (*entry, int, error) {
	sent := 0
	for range maxReloads {
		t, rev, err := s.load()
		if errors.Is(err, ErrNoSession) {
			return nil, sent, s.die(err)
		}
		if err != nil {
			return nil, sent, err
		}
		s.mu.Lock()
		u := s.unsaved
		s.unsaved = nil
		s.mu.Unlock()
		if u != nil && u.parent == hashToken(t.RefreshToken) {
			newRev, err := s.save(u.child, rev)
			if errors.Is(err, ErrConflict) {
				continue // another replica saved a descendant
			}
			if err != nil {
				s.mu.Lock()
				s.unsaved = u
				s.mu.Unlock()
				return nil, sent, err
			}
			t, rev = u.child, newRev
		}
		if c.saveOnly {
			return nil, sent, nil
		}
		h := hashToken(t.RefreshToken)
		if s.tries.token != h {
			s.tries = tries{token: h}
		}
		if !s.tries.first.IsZero() && time.Since(s.tries.first) >= s.retryWindow() {
			// A new window; what the last one left uncertain stays so.
			s.tries = tries{token: h, uncertain: s.tries.uncertain}
		}
		reply, asked, n, err := s.exchange(c.req, t)
		sent += n
		if Terminal(err) {
			if errors.Is(s.drop(rev), ErrConflict) {
				continue
			}
			return nil, sent, s.die(err)
		}
		if err != nil {
			return nil, sent, err
		}
		if err := s.keep(t, stored(reply, t.ClientID), rev); err != nil {
			return nil, sent, err
		}
		e, err := s.newEntry(c.req, reply, asked)
		return e, sent, err
	}
	return nil, sent, fmt.Errorf("%w: the session kept changing", ErrStoreUnavailable)
}

// keep saves child, which tokend returned for parent at revision rev.
func (s *Source) keep(parent, child StoredToken, rev uint64) error {
	_, err := s.save(child, rev)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrConflict):
		// Another replica saved since parent was loaded. Every save is a
		// compare-and-swap against the revision its writer loaded, so
		// what is stored descends from parent: child itself (the same
		// child, from the reuse interval) or newer. The store's token
		// stays; only a session ended meanwhile matters.
		if _, _, err := s.load(); errors.Is(err, ErrNoSession) {
			return s.die(err)
		}
		return nil
	default:
		// The access token is good; the child must not be lost, or the
		// next refresh would present parent again, a replay once the
		// reuse interval is over.
		s.mu.Lock()
		s.unsaved = &unsaved{parent: hashToken(parent.RefreshToken), child: child}
		s.mu.Unlock()
		return nil
	}
}

// retryWindow is how long one refresh token is retried: Options.RetryWindow,
// or less when tokend's reuse interval, less a second for the clocks and
// the way, is shorter.
func (s *Source) retryWindow() time.Duration {
	reuse := s.reuse.Load()
	if reuse == nil {
		return s.o.RetryWindow
	}
	return max(0, min(s.o.RetryWindow, *reuse-time.Second))
}

// learn keeps what a token reply says about the family's retries.
func (s *Source) learn(reply wire.TokenReply) {
	if reply.ReuseIntervalMs != nil {
		d := time.Duration(*reply.ReuseIntervalMs) * time.Millisecond
		s.reuse.Store(&d)
	}
}

// exchange presents t for r, retrying transient failures within the retry
// window. It returns the reply, the time (by Options.Now) the successful
// attempt was sent, and how many requests it sent.
func (s *Source) exchange(r request, t StoredToken) (wire.TokenReply, time.Time, int, error) {
	req := wire.RefreshRequest{RefreshToken: t.RefreshToken, ClientID: t.ClientID, Audience: r.audience}
	if !r.full() {
		scope := strings.Join(r.scope, " ")
		req.Scope = &scope
	}
	sent := 0
	nonceRetry := false // the last request was refused for its nonce
	for n := 0; ; n++ {
		if s.tries.first.IsZero() {
			s.tries.first = time.Now()
		}
		asked := s.o.Now()
		var reply wire.TokenReply
		var err error
		// A request published while disconnected may be buffered and sent
		// after the reconnect, when this refresh has moved on: a replay.
		if !s.c.nc.IsConnected() {
			err = errNotSent
		} else if err = s.prove(&req); err == nil {
			req.Recover = s.tries.uncertain
			ctx, cancel := context.WithTimeout(context.Background(), s.o.AttemptTimeout)
			reply, err = s.c.Refresh(ctx, req)
			cancel()
			sent++
		}
		if nonce := dpopNonce(err); nonce != "" && s.o.DPoP != nil {
			s.o.DPoP.SetNonce(nonce)
			if !nonceRetry {
				// Refused before the token was looked at: not a failed
				// attempt, and no back-off. Twice in a row is an error.
				nonceRetry = true
				n--
				continue
			}
		}
		nonceRetry = false
		if err == nil && s.o.DPoP != nil {
			s.o.DPoP.SetNonce(reply.DPoPNonce)
		}
		if req.Recover && errors.Is(err, ErrInvalidGrant) {
			// The child of a lost reply is out of reach; tokend revoked
			// the family (or it had ended some other way).
			return reply, asked, sent, ErrLostRotation
		}
		if err == nil {
			s.learn(reply)
			if reply.RefreshToken == "" || reply.AccessToken == "" {
				// Not a success, and tokend may have rotated all the same.
				s.tries.uncertain = true
				return reply, asked, sent, fmt.Errorf("%w: no access or refresh token in the reply", ErrBadReply)
			}
			return reply, asked, sent, nil
		}
		if !Transient(err) {
			return reply, asked, sent, err
		}
		if !notDelivered(err) {
			s.tries.uncertain = true
		}
		wait := max(backoff(n), RetryAfter(err))
		if time.Since(s.tries.first)+wait >= s.retryWindow() {
			return reply, asked, sent, err
		}
		time.Sleep(wait)
	}
}

// prove puts a new DPoP proof in req when the Source has a key: every
// attempt needs its own, as tokend refuses a proof's jti the second time.
func (s *Source) prove(req *wire.RefreshRequest) error {
	if s.o.DPoP == nil {
		return nil
	}
	if s.o.DPoPURL == "" {
		return errNoDPoPURL
	}
	proof, err := s.o.DPoP.Proof(http.MethodPost, s.o.DPoPURL, "")
	if err != nil {
		return err
	}
	// No dpop_htm or dpop_htu: those are a gateway's, which forwards a
	// request it received. Without them tokend checks the proof against
	// its own token endpoint, which catches a wrong DPoPURL at once.
	req.DPoPProof = proof
	return nil
}

var errNoDPoPURL = errors.New("client: Options.DPoP needs Options.DPoPURL, the token endpoint URL the proofs name")

// dpopNonce returns the nonce of a use_dpop_nonce error, "" for any other.
func dpopNonce(err error) string {
	var e *Error
	if errors.As(err, &e) && e.Code == ErrUseDPoPNonce.Error() {
		return e.DPoPNonce
	}
	return ""
}

// backoff is the pause before retry n+1: 100 ms doubling to 2 s, ±20%.
func backoff(n int) time.Duration {
	d := min(100*time.Millisecond<<min(n, 5), 2*time.Second)
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}
