//go:build reliability

// The freeze tests stop the real tokend binary with SIGSTOP (as a long GC
// pause, a paused VM or a network that delivers late would) while the
// sessions of the client library are due for renewal or have expired, and
// resume it with SIGCONT. They take about a minute:
//
//	go test -tags reliability -race -count=1 -run TestFreeze -v ./cmd/tokend
package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/client"
	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events/eventstest"
)

// freezeAccessTTL is tokend's --access-ttl in the freeze tests. The
// Sources' clock is moved ahead of it (freezeClock), so real time only has
// to stay well below it.
const freezeAccessTTL = time.Minute

// TestFreezeSessions12s: tokend is frozen 12.5 s, longer than the
// library's retry window, while browser sessions behind client.Sessions are
// due for renewal or have expired, and their users keep sending requests.
// During the freeze they get 200 while the cached token is served and 503
// with Retry-After once it is not; nobody is signed out (no redirect, no
// cookie cleared). Once tokend is back every request succeeds, each family
// rotated exactly once since the freeze with no replay and no revocation,
// and the token each session holds is its family's current one.
func TestFreezeSessions12s(t *testing.T) {
	f := newFreezeFixture(t, 10*time.Second)
	sessions, err := client.NewSessions(f.c, f.store, client.SessionConfig{
		Key: bytes.Repeat([]byte("freeze-test-session-key-"), 2), ClientID: "web-app",
		SignInURL: "/signin", Insecure: true, Options: f.options(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sessions.Close)
	srv := httptest.NewServer(sessions.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if at, ok := client.AccessTokenFrom(r.Context()); !ok || at.Token == "" {
			http.Error(w, "no access token in the request context", http.StatusInternalServerError)
			return
		}
		w.Write([]byte("ok"))
	})))
	t.Cleanup(srv.Close)
	users := f.beginUsers(t, 3, func(u *freezeUser, reply wire.TokenReply) {
		rec := httptest.NewRecorder()
		if err := sessions.Start(rec, httptest.NewRequest(http.MethodGet, "/signin", nil), reply); err != nil {
			t.Fatal(err)
		}
		cookies := rec.Result().Cookies()
		if len(cookies) != 1 {
			t.Fatalf("Start set %d cookies", len(cookies))
		}
		u.cookie = cookies[0]
		u.sessionID, _, _ = strings.Cut(u.cookie.Value, ".")
	})
	hc := &http.Client{Timeout: time.Minute, CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	}}
	// Half the users navigate (a sign-out would redirect them), the
	// others call an API (a sign-out would answer 401).
	try := func(u *freezeUser, i int) (bool, string) {
		req, err := http.NewRequest(http.MethodGet, srv.URL+"/", nil)
		if err != nil {
			return false, err.Error()
		}
		req.AddCookie(u.cookie)
		if i%2 == 0 {
			req.Header.Set("Sec-Fetch-Mode", "navigate")
		} else {
			req.Header.Set("Accept", "application/json")
		}
		resp, err := hc.Do(req)
		if err != nil {
			return false, err.Error()
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if c := resp.Header.Values("Set-Cookie"); len(c) > 0 {
			return false, fmt.Sprintf("%d with Set-Cookie %q: the session was touched", resp.StatusCode, c)
		}
		switch resp.StatusCode {
		case http.StatusOK:
			return true, ""
		case http.StatusServiceUnavailable:
			if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || s < 1 {
				return false, fmt.Sprintf("503 with Retry-After %q", resp.Header.Get("Retry-After"))
			}
			return false, ""
		}
		return false, fmt.Sprintf("%d (Location %q): %s", resp.StatusCode, resp.Header.Get("Location"), body)
	}
	f.freezeUnderLoad(t, users, 12500*time.Millisecond, try)
	for _, u := range users {
		if ok, problem := try(u, 0); !ok {
			t.Errorf("%s: a request after the freeze was not served: %s", u.name, problem)
		}
	}
	f.wantRecovered(t, users)
}

// TestFreezeSource24s is TestFreezeSessions12s with client.Source directly
// and a 24 s freeze, longer than tokend's reuse interval as well: during it
// Token fails with transient errors only, never ending the session; after
// it Token succeeds, with one rotation per family, no replay, no
// revocation, and the stored token the family's current one.
func TestFreezeSource24s(t *testing.T) {
	f := newFreezeFixture(t, 10*time.Second)
	users := f.beginUsers(t, 3, func(u *freezeUser, reply wire.TokenReply) {
		u.sessionID = "session-" + u.name
		u.src = client.NewSource(f.c, f.store, u.sessionID, f.options())
		t.Cleanup(u.src.Close)
		if err := u.src.Begin(context.Background(), "web-app", reply); err != nil {
			t.Fatal(err)
		}
	})
	try := func(u *freezeUser, _ int) (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		at, err := u.src.Token(ctx, "")
		switch {
		case err == nil && at.Token != "":
			return true, ""
		case err == nil:
			return false, "an empty access token without an error"
		case client.Transient(err) && !client.Terminal(err):
			return false, ""
		}
		return false, fmt.Sprintf("Token: %v", err)
	}
	f.freezeUnderLoad(t, users, 24*time.Second, try)
	f.wantRecovered(t, users)
}

// TestFreezeLostRotation: a rotation whose reply arrives only after the
// reuse interval is truly out of reach. The reply of a refresh tokend
// executed is held back by a proxy on the client's NATS connection until
// the rotation is older than the reuse interval; the Source then ends the
// session with ErrLostRotation (OnTerminal called, the session gone from
// the store) without presenting the parent as a replay, and tokend revoked
// the family with reason lost_rotation, so no live refresh token is left
// that nobody holds.
func TestFreezeLostRotation(t *testing.T) {
	const reuseInterval = 2 * time.Second
	f := newFreezeFixture(t, reuseInterval)
	proxy := newStallProxy(t, strings.TrimPrefix(f.p.natsURL, "nats://"))
	c := client.New(clientConn(t, proxy.url()), "")

	var terminal []error
	var mu sync.Mutex
	opts := f.options()
	opts.OnTerminal = func(err error) {
		mu.Lock()
		defer mu.Unlock()
		terminal = append(terminal, err)
	}
	reply, err := f.c.Issue(context.Background(), wire.IssueRequest{Subject: "user-lost", ClientID: "web-app", Scope: "api:read"})
	if err != nil {
		t.Fatal(err)
	}
	src := client.NewSource(c, f.store, "session-lost", opts)
	t.Cleanup(src.Close)
	if err := src.Begin(context.Background(), "web-app", reply); err != nil {
		t.Fatal(err)
	}
	token := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_, err := src.Token(ctx, "")
		return err
	}
	// One refresh through the proxy while it passes everything: the
	// Source has seen a refresh reply, and with it the reuse interval.
	f.clock.advance(freezeAccessTTL + time.Second)
	if err := token(); err != nil {
		t.Fatalf("a refresh through the proxy: %v", err)
	}

	proxy.stall()
	f.clock.advance(freezeAccessTTL + time.Second)
	stalled := make(chan error, 1)
	go func() { stalled <- token() }()
	var rotated storedEvent
	eventstest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		evs := familyEvents(t, f.nc, reply.FamilyID)
		if last := evs[len(evs)-1]; last.Type == string(domain.TokenRotated) && last.Generation == 3 {
			rotated = last
			return nil
		}
		return fmt.Errorf("the family's events: %v", countTypes(evs))
	})
	// The refresh whose reply is held back must end without ending the
	// session: its outcome is unknown.
	select {
	case err := <-stalled:
		if !client.Transient(err) || client.Terminal(err) {
			t.Fatalf("the refresh whose reply was held back: %v; want a transient error", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("the refresh whose reply was held back did not end")
	}
	eventstest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		if age := time.Since(rotated.Time); age <= reuseInterval+500*time.Millisecond {
			return fmt.Errorf("the rotation is %v old", age)
		}
		return nil
	})
	proxy.unstall()

	err = token()
	if !errors.Is(err, client.ErrLostRotation) || !client.Terminal(err) {
		t.Fatalf("Token after the reuse interval: %v; want ErrLostRotation", err)
	}
	mu.Lock()
	if len(terminal) != 1 || !errors.Is(terminal[0], client.ErrLostRotation) {
		t.Errorf("OnTerminal got %v; want ErrLostRotation once", terminal)
	}
	mu.Unlock()
	if _, _, err := f.store.Load(context.Background(), "session-lost"); !errors.Is(err, client.ErrNoSession) {
		t.Errorf("the store after ErrLostRotation: %v; want the session gone", err)
	}
	evs := familyEvents(t, f.nc, reply.FamilyID)
	var rejected, revoked bool
	for _, e := range evs {
		switch domain.EventType(e.Type) {
		case domain.ReplayDetected:
			t.Errorf("token.replay_detected at generation %d: the parent was presented as a replay", e.PresentedGeneration)
		case domain.RefreshRejected:
			rejected = rejected || e.Reason == domain.ReasonLostRotation
		case domain.FamilyRevoked:
			revoked = revoked || e.Reason == domain.ReasonLostRotation
		}
	}
	if !rejected || !revoked {
		t.Fatalf("the family's events: %v; want refresh.rejected and family.revoked with reason %s", describe(evs), domain.ReasonLostRotation)
	}
	view := mustQuery[wire.FamilyView](t, f.nc, "tokens.query.family",
		wire.FamilyRequest{FamilyID: reply.FamilyID, MinSeq: evs[len(evs)-1].Seq})
	if view.Status != "revoked" || view.RevokedReason != domain.ReasonLostRotation {
		t.Fatalf("the family is %s (%s) after ErrLostRotation; want revoked, %s", view.Status, view.RevokedReason, domain.ReasonLostRotation)
	}
	wantCleanLogs(t, f.p.logs.String())
}

// freezeFixture is a tokend process, a client of it and the sessions'
// store.
type freezeFixture struct {
	p     *tokendProcess
	nc    *nats.Conn
	c     *client.Client
	store *client.MemoryStore
	clock *freezeClock

	terminal atomic.Int64 // OnTerminal calls
}

func newFreezeFixture(t *testing.T, reuseInterval time.Duration) *freezeFixture {
	t.Helper()
	// Each family is refreshed a few times at most: no rate limit in play.
	p := startTokend(t, buildTokend(t), t.TempDir(), "--access-ttl", freezeAccessTTL.String(),
		"--reuse-interval", reuseInterval.String())
	nc := clientConn(t, p.natsURL)
	return &freezeFixture{p: p, nc: nc, c: client.New(nc, ""), store: client.NewMemoryStore(), clock: &freezeClock{}}
}

// options are the Sources' options: the defaults, the fixture's clock,
// and OnTerminal counted.
func (f *freezeFixture) options() client.Options {
	return client.Options{Now: f.clock.now, OnTerminal: func(error) { f.terminal.Add(1) }}
}

// freezeClock is the Sources' clock, moved ahead to age the access tokens
// they cached: real time would need short-lived tokens, and a renewal
// window too narrow to hit.
type freezeClock struct{ ahead atomic.Int64 }

func (c *freezeClock) now() time.Time          { return time.Now().Add(time.Duration(c.ahead.Load())) }
func (c *freezeClock) advance(d time.Duration) { c.ahead.Add(int64(d)) }

// freezeUser is one session under the freeze and what its calls saw.
type freezeUser struct {
	name      string
	familyID  string
	sessionID string
	cookie    *http.Cookie   // Sessions
	src       *client.Source // Source
	before    int            // the family's events before the freeze

	// Under freezeRun.mu: calls begun while tokend was frozen that
	// failed (transiently) and that succeeded; whether a call begun after
	// it succeeded.
	failedInFreeze, servedInFreeze int
	recovered                      bool
	broken                         bool // a call went wrong: its calls stopped
}

// beginUsers begins n sessions whose cached access tokens have expired, by
// the Sources' clock, and n whose tokens are past their renewal point but
// still served, all of generation 1.
func (f *freezeFixture) beginUsers(t *testing.T, n int, begin func(*freezeUser, wire.TokenReply)) []*freezeUser {
	t.Helper()
	var users []*freezeUser
	for i := range 2 * n {
		name := fmt.Sprintf("expired-%d", i)
		if i >= n {
			name = fmt.Sprintf("due-%d", i-n)
		}
		if i == n {
			f.clock.advance(freezeAccessTTL + time.Second)
		}
		reply, err := f.c.Issue(context.Background(), wire.IssueRequest{Subject: "user-" + name, ClientID: "web-app",
			Scope: "openid api:read", Audience: []string{"https://api.example.com"}})
		if err != nil {
			t.Fatal(err)
		}
		u := &freezeUser{name: name, familyID: reply.FamilyID}
		begin(u, reply)
		users = append(users, u)
	}
	// Renewal is due after half the lifetime (±5%); a token is served
	// while more than a quarter of it is left. At 70% the due tokens are
	// both, for the first seconds of the freeze.
	f.clock.advance(freezeAccessTTL * 7 / 10)
	for _, u := range users {
		u.before = len(familyEvents(t, f.nc, u.familyID))
	}
	return users
}

// freezeUnderLoad stops tokend with SIGSTOP for d while every user keeps
// calling try (its second argument the user's index), and resumes it. A
// call may fail transiently (try returns false and no problem) only if it
// began during the freeze; each user must see such a failure, and once
// tokend is back every call must succeed; a call that goes wrong stops its
// user's calls. It returns once every user succeeded after the freeze, with no call running.
func (f *freezeFixture) freezeUnderLoad(t *testing.T, users []*freezeUser, d time.Duration, try func(*freezeUser, int) (bool, string)) {
	t.Helper()
	var (
		mu      sync.Mutex
		resumed time.Time // zero while frozen
		wg      sync.WaitGroup
	)
	ctx, cancel := context.WithCancel(context.Background())
	stop := func() { cancel(); wg.Wait() }
	t.Cleanup(stop)
	f.signal(t, syscall.SIGSTOP)
	frozen := time.Now()
	for i, u := range users {
		wg.Go(func() {
			for ctx.Err() == nil {
				began := time.Now()
				ok, problem := try(u, i)
				mu.Lock()
				inFreeze := resumed.IsZero() || began.Before(resumed)
				switch {
				case problem != "":
					t.Errorf("%s, %v into the freeze (resumed after %v): %s; the family: %v", u.name, began.Sub(frozen).Round(time.Millisecond),
						d, problem, describe(familyEvents(t, f.nc, u.familyID)))
					u.broken = true
				case inFreeze && ok:
					u.servedInFreeze++
				case inFreeze:
					u.failedInFreeze++
				case ok:
					u.recovered = true
				default:
					t.Errorf("%s: a call begun %v after tokend resumed failed", u.name, began.Sub(resumed).Round(time.Millisecond))
					u.broken = true
				}
				broken := u.broken
				mu.Unlock()
				if broken {
					return
				}
				select {
				case <-ctx.Done():
				case <-time.After(50 * time.Millisecond):
				}
			}
		})
	}
	time.Sleep(d) // how long tokend stays frozen
	f.signal(t, syscall.SIGCONT)
	mu.Lock()
	resumed = time.Now()
	mu.Unlock()
	eventstest.CheckFor(t, time.Minute, 100*time.Millisecond, func() error {
		mu.Lock()
		defer mu.Unlock()
		for _, u := range users {
			if !u.recovered && !u.broken {
				return fmt.Errorf("%s has not been served since tokend resumed", u.name)
			}
		}
		return nil
	})
	stop()
	if t.Failed() {
		t.FailNow()
	}
	for _, u := range users {
		if u.failedInFreeze == 0 {
			t.Errorf("%s: no call failed during the freeze", u.name)
		}
		t.Logf("%s: during the freeze %d calls served, %d unavailable", u.name, u.servedInFreeze, u.failedInFreeze)
	}
}

func (f *freezeFixture) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := f.p.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	// A signal takes effect a little later: wait until the process is
	// stopped, or running again, so that no request slips through before
	// the freeze begins.
	stopped := sig == syscall.SIGSTOP
	eventstest.CheckFor(t, 10*time.Second, time.Millisecond, func() error {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", f.p.cmd.Process.Pid))
		if err != nil {
			return err
		}
		// The state follows the command name, which is in parentheses.
		fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
		if len(fields) == 0 || (fields[0] == "T") != stopped {
			return fmt.Errorf("process state %q", fields)
		}
		return nil
	})
}

// wantRecovered checks, after the freeze, that no session ended and that
// each family rotated exactly once since the freeze began, with no replay
// and no revocation, to the token its session holds.
func (f *freezeFixture) wantRecovered(t *testing.T, users []*freezeUser) {
	t.Helper()
	if n := f.terminal.Load(); n > 0 {
		t.Errorf("OnTerminal was called %d times: sessions ended", n)
	}
	for _, u := range users {
		evs := familyEvents(t, f.nc, u.familyID)
		since := countTypes(evs[u.before:])
		if since[string(domain.TokenRotated)] != 1 || since[string(domain.ReplayDetected)] > 0 ||
			since[string(domain.FamilyRevoked)] > 0 || since[string(domain.RefreshRejected)] > 0 {
			t.Errorf("%s: since the freeze the family has %v; want one token.rotated, no replay, no revocation", u.name, describe(evs[u.before:]))
			continue
		}
		held, _, err := f.store.Load(context.Background(), u.sessionID)
		if err != nil {
			t.Errorf("%s: the session's token: %v", u.name, err)
			continue
		}
		var current storedEvent
		for _, e := range evs {
			if domain.EventType(e.Type) == domain.TokenRotated {
				current = e
			}
		}
		if domain.HashToken(held.RefreshToken) != current.Data.TokenHash {
			t.Errorf("%s: the session holds generation %d, the family's current token is generation %d",
				u.name, tokenGeneration(t, held.RefreshToken), current.Generation)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		in, err := f.c.Introspect(ctx, wire.IntrospectRequest{RefreshToken: held.RefreshToken, MinSeq: evs[len(evs)-1].Seq})
		cancel()
		if err != nil || !in.Active || in.FamilyID != u.familyID {
			t.Errorf("%s: the session's token introspects as %+v (%v); want active", u.name, in, err)
		}
	}
	wantCleanLogs(t, f.p.logs.String())
}

// describe lists events by type, generation and reason.
func describe(evs []storedEvent) []string {
	var out []string
	for _, e := range evs {
		s := fmt.Sprintf("%s %s %d", e.Time.Format("15:04:05.000"), e.Type, e.Generation)
		if e.Reason != "" {
			s += " (" + e.Reason + ")"
		}
		out = append(out, s)
	}
	return out
}

// stallProxy forwards TCP connections to a NATS server. While stalled it
// holds back what the server sends, as a network that delivers late, and
// passes what the client sends.
type stallProxy struct {
	ln net.Listener
	to string

	mu    sync.Mutex
	open  chan struct{} // closed while the server's bytes flow
	conns []net.Conn
}

func newStallProxy(t *testing.T, to string) *stallProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &stallProxy{ln: ln, to: to, open: make(chan struct{})}
	close(p.open)
	go p.serve()
	t.Cleanup(p.close)
	return p
}

func (p *stallProxy) url() string { return "nats://" + p.ln.Addr().String() }

func (p *stallProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.to)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, s)
		p.mu.Unlock()
		go func() {
			io.Copy(s, c)
			s.Close()
			c.Close()
		}()
		go func() {
			io.Copy(gatedWriter{p, c}, s)
			s.Close()
			c.Close()
		}()
	}
}

func (p *stallProxy) stall() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.open = make(chan struct{})
}

func (p *stallProxy) unstall() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.open:
	default:
		close(p.open)
	}
}

func (p *stallProxy) close() {
	p.ln.Close()
	p.unstall()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
}

// gatedWriter writes to the client once the proxy is not stalled.
type gatedWriter struct {
	p   *stallProxy
	dst net.Conn
}

func (g gatedWriter) Write(b []byte) (int, error) {
	g.p.mu.Lock()
	open := g.p.open
	g.p.mu.Unlock()
	<-open
	return g.dst.Write(b)
}
