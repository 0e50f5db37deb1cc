package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/events/eventstest"
)

// metricsAt reads the exposition of the --http listener at addr.
func metricsAt(t *testing.T, addr string) metricSet {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %d %v", resp.StatusCode, err)
	}
	return parseMetrics(t, raw)
}

// waitMetric waits until the sample of name with labels is want.
func waitMetric(t *testing.T, addr string, want float64, name string, labels ...string) {
	t.Helper()
	eventstest.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
		if got := metricsAt(t, addr).value(name, labels...); got != want {
			return fmt.Errorf("%s%v = %v, want %v", name, labels, got, want)
		}
		return nil
	})
}

func dialTCP(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func write(t *testing.T, c net.Conn, s string) {
	t.Helper()
	if _, err := io.WriteString(c, s); err != nil {
		t.Fatal(err)
	}
}

// slowHeaders opens a connection that sends part of a request's headers.
func slowHeaders(t *testing.T, addr string) net.Conn {
	c := dialTCP(t, addr)
	write(t, c, "POST /oauth2/token HTTP/1.1\r\nHost: tokend\r\n")
	return c
}

// slowBody opens a connection that sends a request's headers and part of
// its body.
func slowBody(t *testing.T, addr string) net.Conn {
	c := dialTCP(t, addr)
	write(t, c, "POST /oauth2/token HTTP/1.1\r\nHost: tokend\r\nContent-Type: application/x-www-form-urlencoded\r\n"+
		"Content-Length: 1000\r\n\r\ngrant_type=refresh_token&")
	return c
}

// idleKeepAlive opens a connection that makes one request, reads the
// answer and keeps the connection open.
func idleKeepAlive(t *testing.T, addr string) net.Conn {
	t.Helper()
	c := dialTCP(t, addr)
	write(t, c, "GET /.well-known/oauth-authorization-server HTTP/1.1\r\nHost: tokend\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no answer to a request: %v", err)
	}
	c.SetReadDeadline(time.Time{})
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return c
}

// wantClosedByServer reads c until the server closes it; the deadline only
// turns a connection left open into a failure.
func wantClosedByServer(t *testing.T, c net.Conn, what string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("%s: the server left the connection open", what)
	}
}

// wantBusy reads a refusal from a connection that sent nothing: a 503
// with Retry-After and the contract's error JSON.
func wantBusy(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("a connection past the cap got no answer: %v", err)
	}
	defer resp.Body.Close()
	var body wire.ErrorReply
	json.NewDecoder(resp.Body).Decode(&body)
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") != "1" || body.Error != "temporarily_unavailable" {
		t.Fatalf("past the cap: %d, Retry-After %q, %+v", resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
}

// TestOAuthListenerAtItsCap: slow and idle connections hold the OAuth
// listener at its cap. A connection past it is answered 503 at once and a
// token request fails fast, while /readyz answers, a new NATS client
// connects and refreshes; once the slow ones are gone, token requests are
// served again. Before the cap, the listener took connections until the
// process ran out of file descriptors.
func TestOAuthListenerAtItsCap(t *testing.T) {
	const limit = 6
	e := mustOAuthEnv(t, func(c *Config) { c.OAuthHTTP.MaxConns = limit })
	ops, oauth := e.app.HTTPAddr(), e.app.OAuthAddr()
	f := e.issue(t, "user-cap", "web")
	var held []net.Conn
	for range limit / 3 {
		held = append(held, slowHeaders(t, oauth), slowBody(t, oauth), idleKeepAlive(t, oauth))
	}
	waitMetric(t, ops, limit, "tokend_http_connections", "listener", "oauth")
	if got := metricsAt(t, ops).value("tokend_http_connections_limit", "listener", "oauth"); got != limit {
		t.Fatalf("tokend_http_connections_limit{oauth} = %v, want %d", got, limit)
	}

	wantBusy(t, dialTCP(t, oauth))
	form := url.Values{"grant_type": {"refresh_token"}, "refresh_token": {f.RefreshToken}}
	req, _ := http.NewRequest(http.MethodPost, e.base+"/oauth2/token", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth("web", e.secret)
	// A 503, or the connection closed under the request: either way at
	// once, since the held connections are still there.
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("a token request past the cap: %d", resp.StatusCode)
		}
	}
	m := metricsAt(t, ops)
	if got := m.value("tokend_http_connections_refused_total", "listener", "oauth"); got != 2 {
		t.Fatalf("refused %v connections, want 2", got)
	}
	if got := m.value("tokend_http_connections", "listener", "oauth"); got != limit {
		t.Fatalf("%v connections open while refusing, want the %d held", got, limit)
	}

	resp, err := http.Get("http://" + ops + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/readyz: %d", resp.StatusCode)
	}
	other := eventstest.MustConnect(t, e.app.NATSURL())
	g := mustIssue(t, other, "user-cap-nats", "web-app")
	mustRefresh(t, other, g.RefreshToken, "web-app")

	for _, c := range held {
		c.Close()
	}
	waitMetric(t, ops, 0, "tokend_http_connections", "listener", "oauth")
	status, _, body := e.post(t, "/oauth2/token", form, "web", e.secret)
	if status != http.StatusOK || body["refresh_token"] == f.RefreshToken {
		t.Fatalf("token request once the slow connections are gone: %d %v", status, body["error_description"])
	}
}

// TestListenerTimeoutsEndSlowConnections: a connection that sends its
// headers or body too slowly, or idles after a request, is closed by the
// server after --http-read-timeout or --http-idle-timeout, on every
// listener. Before, only slow headers were bounded (5 s); a slow body or
// an idle keep-alive held its connection for ever.
func TestListenerTimeoutsEndSlowConnections(t *testing.T) {
	cfg := oauthConfig(t, "")
	cfg.HTTPReadTimeout, cfg.HTTPIdleTimeout, cfg.HTTPWriteTimeout = 300*time.Millisecond, 300*time.Millisecond, 6*time.Second
	app := MustApp(t, cfg, nil)
	for _, srv := range []*http.Server{app.http, app.oauth, app.audit} {
		if srv.ReadTimeout != cfg.HTTPReadTimeout || srv.ReadHeaderTimeout != cfg.HTTPReadTimeout ||
			srv.WriteTimeout != cfg.HTTPWriteTimeout || srv.IdleTimeout != cfg.HTTPIdleTimeout {
			t.Fatalf("a listener's timeouts are not the configured ones: read %v/%v, write %v, idle %v",
				srv.ReadHeaderTimeout, srv.ReadTimeout, srv.WriteTimeout, srv.IdleTimeout)
		}
	}
	for name, addr := range map[string]string{"http": app.HTTPAddr(), "oauth": app.OAuthAddr()} {
		wantClosedByServer(t, slowHeaders(t, addr), name+" slow headers")
		wantClosedByServer(t, slowBody(t, addr), name+" slow body")
		wantClosedByServer(t, idleKeepAlive(t, addr), name+" idle keep-alive")
	}
	waitMetric(t, app.HTTPAddr(), 0, "tokend_http_connections", "listener", "oauth")
}

// TestEmbeddedServerCapsClients: the embedded server refuses clients past
// --nats-max-conns (tokend's own connection counts) instead of taking them
// until the process is out of file descriptors; a max_connections in
// --nats-config wins.
func TestEmbeddedServerCapsClients(t *testing.T) {
	cfg := testConfig(t)
	cfg.NATSMaxConns = 2
	app := MustApp(t, cfg, nil)
	eventstest.MustConnect(t, app.NATSURL())
	if nc, err := nats.Connect(app.NATSURL(), nats.NoReconnect()); err == nil {
		nc.Close()
		t.Fatal("a third client was let in")
	}

	conf := filepath.Join(t.TempDir(), "nats.conf")
	if err := os.WriteFile(conf, []byte("max_connections: 7\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.NATSConfig = conf
	opts, err := embeddedOptions(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if opts.MaxConn != 7 {
		t.Fatalf("MaxConn = %d, want the file's 7", opts.MaxConn)
	}
}

// TestConnectionCapsFitTheFileLimit: caps that would use up the file limit
// are lowered, each to minConns plus its share of what the reserve
// leaves; a limit too small for even that refuses to start.
func TestConnectionCapsFitTheFileLimit(t *testing.T) {
	caps := func(ns ...int) []connCap {
		out := make([]connCap, len(ns))
		for i := range ns {
			out[i] = connCap{fmt.Sprint(i), &ns[i]}
		}
		return out
	}
	for _, tc := range []struct {
		limit   uint64
		asked   []int
		want    []int
		lowered bool
	}{
		{limit: 65536, asked: []int{256, 1024, 64, 1024}, want: []int{256, 1024, 64, 1024}},
		{limit: 2432, asked: []int{256, 1024, 64, 1024}, want: []int{256, 1024, 64, 1024}},
		{limit: ^uint64(0), asked: []int{256, 1024}, want: []int{256, 1024}},
		// 256 - 64 = 192: 8 each, and 168 shared in proportion to 248, 1016, 1016.
		{limit: 256, asked: []int{256, 1024, 1024}, want: []int{26, 82, 82}, lowered: true},
		// A cap below minConns stays; the others share the rest.
		{limit: 100, asked: []int{2, 1000}, want: []int{2, 34}, lowered: true},
	} {
		c := caps(tc.asked...)
		lowered, err := fitFileLimit(c, tc.limit)
		got, sum := make([]int, len(c)), 0
		for i := range c {
			got[i], sum = *c[i].n, sum+*c[i].n
		}
		if err != nil || lowered != tc.lowered || fmt.Sprint(got) != fmt.Sprint(tc.want) || uint64(sum+fdReserve) > tc.limit {
			t.Errorf("limit %d, caps %v: got %v lowered %v err %v; want %v lowered %v", tc.limit, tc.asked, got, lowered, err, tc.want, tc.lowered)
		}
	}
	if _, err := fitFileLimit(caps(256, 1024, 1024), 80); err == nil || !strings.Contains(err.Error(), "RLIMIT_NOFILE") {
		t.Fatalf("a limit of 80 for three listeners: %v", err)
	}
}

// TestProcessUnderALowFileLimit runs tokend as the issue found it: a
// 256-descriptor limit and 240 slow-body and idle connections to the OAuth
// listener. Before the caps they took every descriptor (accept4: too many
// open files), and /readyz and new NATS clients timed out. Now the caps
// are fitted to the limit (Go raises the soft limit to just below the
// hard one, as the ready line shows), the OAuth listener refuses what is past its cap,
// and the rest of tokend keeps answering.
func TestProcessUnderALowFileLimit(t *testing.T) {
	bin := buildTokend(t)
	natsAddr, httpAddr, oauthAddr := freeAddr(t), freeAddr(t), freeAddr(t)
	logs := &syncBuffer{}
	// Long read and idle timeouts: the slow connections stay for the test.
	cmd := exec.Command("/bin/sh", "-c", `ulimit -S -n 128 && ulimit -H -n 256 && exec "$0" "$@"`, bin,
		"--data-dir", t.TempDir(), "--nats-listen", natsAddr, "--http", httpAddr, "--oauth-http", oauthAddr,
		"--issuer", "http://"+oauthAddr, "--http-read-timeout", "2m", "--http-write-timeout", "3m", "--http-idle-timeout", "2m")
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() { cmd.Process.Kill() })
	waitReady(t, httpAddr, exited)
	// Go raised the soft limit of 128 to (one below) the hard one.
	var fdLimit int
	if _, after, ok := strings.Cut(logs.String(), "tokend ready"); ok {
		_, after, _ = strings.Cut(after, "fd_limit=")
		fmt.Sscan(after, &fdLimit)
	}
	if fdLimit <= 128 || fdLimit > 256 || !strings.Contains(logs.String(), "connection caps lowered") {
		t.Fatalf("the caps were not fitted to the hard file limit of 256:\n%s", logs)
	}
	limit := metricsAt(t, httpAddr).value("tokend_http_connections_limit", "listener", "oauth")

	const slow = 300
	for range slow / 2 {
		idleKeepAlive(t, oauthAddr)
	}
	for range slow / 2 {
		slowBody(t, oauthAddr)
	}
	waitMetric(t, httpAddr, slow-limit, "tokend_http_connections_refused_total", "listener", "oauth")
	waitMetric(t, httpAddr, limit, "tokend_http_connections", "listener", "oauth")

	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get("http://" + httpAddr + "/readyz")
	if err != nil {
		t.Fatalf("/readyz with the OAuth listener full: %v\n%s", err, logs)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/readyz: %d", resp.StatusCode)
	}
	nc, err := nats.Connect("nats://"+natsAddr, nats.Timeout(10*time.Second))
	if err != nil {
		t.Fatalf("a new NATS client with the OAuth listener full: %v\n%s", err, logs)
	}
	defer nc.Close()
	f := mustIssue(t, nc, "user-fds", "web-app")
	mustRefresh(t, nc, f.RefreshToken, "web-app")
	wantBusy(t, dialTCP(t, oauthAddr))
	if strings.Contains(logs.String(), "too many open files") {
		t.Fatalf("tokend ran out of file descriptors:\n%s", logs)
	}
}

// TestPprofOutlastsTheWriteTimeout: with --pprof, the --http listener
// writes for as long as a profile may run; Go's profiler refuses a
// duration at or past the write timeout, and the default profile is 30 s.
func TestPprofOutlastsTheWriteTimeout(t *testing.T) {
	cfg := testConfig(t)
	cfg.Pprof = true
	app := MustApp(t, cfg, nil)
	if app.http.WriteTimeout != pprofWriteTimeout || app.audit.WriteTimeout != cfg.HTTPWriteTimeout {
		t.Fatalf("write timeouts with --pprof: http %v, audit %v", app.http.WriteTimeout, app.audit.WriteTimeout)
	}
}
