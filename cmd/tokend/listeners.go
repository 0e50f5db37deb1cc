package main

import (
	"cmp"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"syscall"
	"time"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/connlimit"
)

// Every HTTP listener bounds how long a connection may take and how many
// may be open. Without bounds, slow or idle connections to one listener
// used up the process's file descriptors, and then /readyz, the other
// listeners and new NATS clients could not be accepted either; a request
// that waited in an accept backlog was served long after its client gave
// up.

// Default connection caps: plenty for probes, scrapes and JWKS fetches
// (http), for the clients of one instance (oauth, nats) and for audit
// tools (audit), and together far below the usual file limit (65536 in
// ops/systemd).
const (
	defaultHTTPMaxConns  = 256
	defaultOAuthMaxConns = 1024
	defaultAuditMaxConns = 64
	defaultNATSMaxConns  = 1024
)

// readHeaderTimeout bounds reading a request's headers, under
// --http-read-timeout: a valid request's headers fit in one packet.
const readHeaderTimeout = 5 * time.Second

// pprofWriteTimeout is the --http listener's write timeout with --pprof:
// a profile is written for as long as it was asked to run, and Go's
// profiler refuses a duration at or past the server's write timeout.
const pprofWriteTimeout = 2 * time.Minute

func (c Config) validateListeners() error {
	switch {
	case c.HTTPReadTimeout <= 0 || c.HTTPWriteTimeout <= 0 || c.HTTPIdleTimeout <= 0:
		return errors.New("--http-read-timeout, --http-write-timeout and --http-idle-timeout must be positive")
	case c.HTTPWriteTimeout < c.HTTPReadTimeout+api.RequestTimeout:
		// The write deadline runs from the end of the headers: the body
		// may take up to the read timeout after them, and the handler up
		// to RequestTimeout after that. An answer past the deadline is
		// lost, maybe after its refresh ran.
		return fmt.Errorf("--http-write-timeout must be at least --http-read-timeout plus %v, the longest a handler runs", api.RequestTimeout)
	case c.HTTPMaxConns < 1 || c.OAuthHTTP.MaxConns < 1 || c.AuditHTTP.MaxConns < 1 || c.NATSMaxConns < 1:
		return errors.New("--http-max-conns, --oauth-max-conns, --audit-max-conns and --nats-max-conns must be at least 1")
	}
	return nil
}

// newHTTPServer returns a server for handler with the timeouts of
// --http-read-timeout, --http-write-timeout and --http-idle-timeout.
func (a *App) newHTTPServer(handler http.Handler) *http.Server {
	return &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: min(readHeaderTimeout, a.cfg.HTTPReadTimeout),
		ReadTimeout:       a.cfg.HTTPReadTimeout,
		WriteTimeout:      a.cfg.HTTPWriteTimeout,
		IdleTimeout:       a.cfg.HTTPIdleTimeout,
	}
}

// busyResponse answers a connection past its listener's cap: the
// contract's error JSON (also RFC 6749's), and Retry-After for clients
// and proxies that honour it.
var busyResponse = func() []byte {
	body := `{"error":"temporarily_unavailable","error_description":"too many connections, retry"}` + "\n"
	return fmt.Appendf(nil, "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nCache-Control: no-store\r\n"+
		"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
}()

// limitConns caps ln, the plain listener, at max open connections,
// counted as listener in the metrics. Past the cap a connection is
// answered busyResponse and closed; under TLS it is only closed, since
// an answer would need a handshake, which a slow client could drag out
// while Accept waits.
func (a *App) limitConns(ln net.Listener, listener string, max int, underTLS bool) net.Listener {
	refusal := busyResponse
	if underTLS {
		refusal = nil
	}
	return connlimit.New(ln, max, refusal, a.api.Metrics.ListenerHooks(listener, max))
}

// fdReserve is the file descriptors tokend keeps apart from connections:
// about 25 at rest (the stream and bucket files, the read model, the
// listeners, the lock), and the read model's eight readers and
// JetStream's block files under load.
const fdReserve = 64

// minConns is the least a cap is lowered to when the file limit is short.
const minConns = 8

// connCap is a connection cap that takes a file descriptor per connection.
type connCap struct {
	name string
	n    *int
}

// connCaps are c's connection caps that hold descriptors of this
// process: those of its listeners, and the embedded server's. A cap a
// Config literal left at zero takes the flag's default: zero would refuse
// every connection.
func (c *Config) connCaps() []connCap {
	c.HTTPMaxConns = cmp.Or(c.HTTPMaxConns, defaultHTTPMaxConns)
	c.OAuthHTTP.MaxConns = cmp.Or(c.OAuthHTTP.MaxConns, defaultOAuthMaxConns)
	c.AuditHTTP.MaxConns = cmp.Or(c.AuditHTTP.MaxConns, defaultAuditMaxConns)
	c.NATSMaxConns = cmp.Or(c.NATSMaxConns, defaultNATSMaxConns)
	caps := []connCap{{"http", &c.HTTPMaxConns}}
	if c.OAuthHTTP.Addr != "" {
		caps = append(caps, connCap{"oauth", &c.OAuthHTTP.MaxConns})
	}
	if c.AuditHTTP.Addr != "" {
		caps = append(caps, connCap{"audit", &c.AuditHTTP.MaxConns})
	}
	if c.NATSURL == "" {
		caps = append(caps, connCap{"nats", &c.NATSMaxConns})
	}
	return caps
}

func describeCaps(caps []connCap) string {
	parts := make([]string, len(caps))
	for i, c := range caps {
		parts[i] = fmt.Sprintf("%s=%d", c.name, *c.n)
	}
	return strings.Join(parts, " ")
}

// fitFileLimit lowers caps, if they and fdReserve exceed limit, each to
// minConns plus its share of what is left, in proportion to what it asked
// beyond minConns. Lowering rather than refusing to start keeps an
// upgrade or a small container working with the defaults; the warning
// and the ready line say what is in effect. It fails only when not even
// minConns per cap fits.
func fitFileLimit(caps []connCap, limit uint64) (lowered bool, err error) {
	var asked, floors int
	for _, c := range caps {
		asked += *c.n
		floors += min(*c.n, minConns)
	}
	if limit >= uint64(asked+fdReserve) {
		return false, nil
	}
	if limit < uint64(floors+fdReserve) {
		return false, fmt.Errorf("the file limit (RLIMIT_NOFILE) is %d: tokend needs %d for its store and read model and %d per listener at least; raise it (LimitNOFILE= in systemd, ulimit -n)",
			limit, fdReserve, minConns)
	}
	spare, extra := int(limit)-fdReserve-floors, asked-floors
	for _, c := range caps {
		floor := min(*c.n, minConns)
		*c.n = floor + (*c.n-floor)*spare/extra
	}
	return true, nil
}

// fileLimit returns the process's soft RLIMIT_NOFILE: what it may open.
// Go raises the soft limit at start to the hard one, or one below it
// (since Go 1.19), so this is about the hard limit tokend was started
// with.
func fileLimit() (uint64, error) {
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		return 0, err
	}
	return r.Cur, nil
}

// fitConnections fits the connection caps of a.cfg to the file limit,
// warning when it lowers them, and returns the limit (0 if unknown).
func (a *App) fitConnections() (uint64, error) {
	caps := a.cfg.connCaps()
	limit, err := fileLimit()
	if err != nil {
		a.log.Warn("cannot read the file limit; connection caps are not checked against it", "err", err)
		return 0, nil
	}
	asked := describeCaps(caps)
	lowered, err := fitFileLimit(caps, limit)
	if err != nil {
		return limit, err
	}
	if lowered {
		a.log.Warn("connection caps lowered to fit the file limit (raise it to keep them)",
			"fd_limit", limit, "reserve", fdReserve, "asked", asked, "in_effect", describeCaps(caps))
	}
	return limit, nil
}
