//go:build reliability

// The outage tests stop the NATS server tokend joined with --nats-url, under
// load, and start it again on the same port and store. They take about 10 s:
//
//	go test -tags reliability -race -count=1 -run TestBrokerOutage -v ./cmd/tokend
package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events/eventstest"
)

// natsServer is a standalone JetStream server that can be stopped and
// started again on the same port with the same store.
type natsServer struct {
	t    *testing.T
	opts server.Options
	ns   *server.Server
}

func mustNATSServer(t *testing.T) *natsServer {
	t.Helper()
	host, portStr, err := net.SplitHostPort(freeAddr(t))
	if err != nil {
		t.Fatal(err)
	}
	port, _ := strconv.Atoi(portStr)
	s := &natsServer{t: t, opts: server.Options{Host: host, Port: port, NoLog: true, NoSigs: true,
		JetStream: true, StoreDir: t.TempDir(), JetStreamMaxMemory: 64 << 20, JetStreamMaxStore: 1 << 30}}
	s.start()
	t.Cleanup(s.stop)
	return s
}

func (s *natsServer) url() string { return fmt.Sprintf("nats://%s:%d", s.opts.Host, s.opts.Port) }

func (s *natsServer) start() {
	s.t.Helper()
	opts := s.opts // the server keeps and changes what it is given
	ns, err := server.NewServer(&opts)
	if err != nil {
		s.t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		s.t.Fatal("nats server did not start")
	}
	s.ns = ns
}

func (s *natsServer) stop() {
	if s.ns != nil {
		s.ns.Shutdown()
		s.ns.WaitForShutdown()
		s.ns = nil
	}
}

// clientConn is a service's connection: it reconnects for ever, and it
// does not hold requests back while disconnected to send them late, when
// their caller has given up on them and moved on (a late refresh of a token
// already rotated twice would be a replay).
func clientConn(t *testing.T, url string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond), nats.ReconnectBufSize(-1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// timed runs f and says how long it took.
func timed(f func() error) (time.Duration, error) {
	start := time.Now()
	err := f()
	return time.Since(start), err
}

// commandBound is how long a command may take when the store is
// unreachable: tokend's own request timeout (api.requestTimeout), and a
// little scheduling slack.
const commandBound = 5*time.Second + 500*time.Millisecond

// TestBrokerOutage: the NATS server stops under load and starts again.
// While it is down commands fail within a bounded time with
// temporarily_unavailable (clients see that or their own timeout), /readyz
// says 503 while /healthz, the audit API and the metrics keep answering from
// the process. Once it is back tokend recovers by itself: ready again,
// commands work, the projector resumes, nothing acknowledged is lost and
// nothing is applied twice.
func TestBrokerOutage(t *testing.T) {
	srv := mustNATSServer(t)
	cfg := testConfig(t)
	cfg.NATSURL = srv.url()
	cfg.ReuseInterval = time.Minute
	cfg.RefreshRate = 0 // the outage, not the rate limit, is to refuse commands
	logs := &syncBuffer{}
	app := MustApp(t, cfg, logs)
	nc := clientConn(t, srv.url())

	l := newLoad(t, nc, 8)
	// Two families for in-process commands during the outage.
	probes := []wire.TokenReply{mustIssue(t, nc, "user-probe", "web-app"), mustIssue(t, nc, "user-probe", "web-app")}
	const clientTimeout = 3 * time.Second
	stopLoad := l.run(nc, clientTimeout)
	time.Sleep(time.Second)
	if got := parseMetrics(t, scrape(t, app)).value("tokend_nats_connected"); got != 1 {
		t.Fatalf("tokend_nats_connected = %v before the outage", got)
	}
	acksBefore := l.acks.Load()

	t.Log("stopping the NATS server")
	srv.stop()
	stopped := time.Now()

	// Commands in flight when the connection died (here in-process: no
	// request can reach the service over NATS now) answer
	// temporarily_unavailable within tokend's request timeout.
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		answers []string
	)
	t.Cleanup(wg.Wait)
	runCommands := func(when string, probe wire.TokenReply, bound time.Duration) {
		commands := map[string]func(context.Context) error{
			"refresh": func(ctx context.Context) error {
				_, err := app.api.Tokens.Refresh(ctx, eventsRefresh(probe.RefreshToken, "web-app"))
				return err
			},
			"issue": func(ctx context.Context) error {
				_, err := app.api.Tokens.Issue(ctx, eventsIssue("user-outage", "web-app"))
				return err
			},
		}
		for name, command := range commands {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second) // as the api sets it
				defer cancel()
				took, err := timed(func() error { return command(ctx) })
				if code := domain.ErrorCode(err); err == nil || code != domain.EUnavailable || took > bound {
					t.Errorf("%s %s: %v (%s) after %v; want temporarily_unavailable within %v", name, when, err, code, took, bound)
				}
				mu.Lock()
				answers = append(answers, fmt.Sprintf("%s %s in %v", name, when, took.Round(time.Millisecond)))
				mu.Unlock()
			}()
		}
	}
	runCommands("in flight at the stop", probes[0], commandBound)

	eventstest.CheckFor(t, 5*time.Second, 50*time.Millisecond, func() error {
		if code := status(t, app, "/readyz"); code != http.StatusServiceUnavailable {
			return fmt.Errorf("/readyz %d while NATS is down", code)
		}
		return nil
	})
	notReady := time.Since(stopped)
	acksDown := l.acks.Load()
	// Commands arriving once the connection is known to be down fail fast.
	runCommands("during the outage", probes[1], 500*time.Millisecond)
	if code := status(t, app, "/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz %d while NATS is down", code)
	}
	code, _, body := httpGet(t, app, "/v1/audit?limit=5&family_id="+probes[0].FamilyID)
	var page wire.AuditPage
	if code != http.StatusOK || jsonUnmarshal(body, &page) != nil || len(page.Events) != 1 {
		t.Fatalf("GET /v1/audit while NATS is down: %d %s", code, body)
	}
	if code := status(t, app, "/v1/families/"+probes[0].FamilyID); code != http.StatusOK {
		t.Fatalf("GET /v1/families while NATS is down: %d", code)
	}
	if got := parseMetrics(t, scrape(t, app)).value("tokend_nats_connected"); got != 0 {
		t.Fatalf("tokend_nats_connected = %v while NATS is down", got)
	}
	wg.Wait()
	time.Sleep(time.Until(stopped.Add(3 * time.Second)))
	if n := l.acks.Load(); n != acksDown {
		t.Fatalf("%d rotations acknowledged while NATS was down", n-acksDown)
	}

	t.Log("starting the NATS server again")
	srv.start()
	restarted := time.Now()
	eventstest.CheckFor(t, 20*time.Second, 50*time.Millisecond, func() error {
		if code := status(t, app, "/readyz"); code != http.StatusOK {
			return fmt.Errorf("/readyz %d after NATS came back", code)
		}
		return nil
	})
	ready := time.Since(restarted)
	eventstest.CheckFor(t, 20*time.Second, 50*time.Millisecond, func() error {
		if n := l.acks.Load(); n < acksDown+50 {
			return fmt.Errorf("%d rotations acknowledged since NATS came back", n-acksDown)
		}
		return nil
	})
	stopLoad()
	if t.Failed() {
		t.FailNow()
	}
	if max := time.Duration(l.maxLatency.Load()); max > clientTimeout+time.Second {
		t.Fatalf("a request took %v with a client timeout of %v", max, clientTimeout)
	}

	// Nothing acknowledged is lost, no chain forked, every family's last
	// token works; the projector caught up and holds every event once.
	l.verify(nc)
	l.resolve(nc)
	l.verify(nc)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	last := lastEventSeq(t, js)
	eventstest.CheckFor(t, 20*time.Second, 50*time.Millisecond, func() error {
		if applied := app.projector.Applied(); applied < last {
			return fmt.Errorf("the projector applied %d of %d", applied, last)
		}
		return nil
	})
	l.checkProjections(nc)
	fresh := mustIssue(t, nc, "user-after", "web-app")
	mustRefresh(t, nc, fresh.RefreshToken, "web-app")

	m := parseMetrics(t, scrape(t, app))
	if got := m.value("tokend_nats_connected"); got != 1 {
		t.Fatalf("tokend_nats_connected = %v after NATS came back", got)
	}
	if got := m.value("tokend_nats_reconnects_total"); got < 1 {
		t.Fatalf("tokend_nats_reconnects_total = %v", got)
	}
	for _, cmd := range []string{"issue", "refresh", "revoke"} {
		if got := m.value("tokend_commands_total", "command", cmd, "outcome", domain.EServerError); got > 0 {
			t.Fatalf("%v %s commands answered server_error", got, cmd)
		}
	}
	wantCleanLogs(t, logs.String())
	t.Logf("/readyz 503 %v after the stop, 200 %v after the restart; in-process commands during the outage answered: %v",
		notReady.Round(time.Millisecond), ready.Round(time.Millisecond), answers)
	t.Logf("%d rotations acknowledged over %d families (%d before the stop, %d while the server shut down, none while it was down); %d requests failed and were retried; %d retries got the child of a rotation whose reply was lost (token.reused); slowest request %v",
		l.rotations(), len(l.fams), acksBefore, acksDown-acksBefore, l.failures.Load(), l.reused, time.Duration(l.maxLatency.Load()).Round(time.Millisecond))
}

// TestBrokerOutageRefusedRefreshIsRetryable: a refresh answered
// temporarily_unavailable because NATS was down stored nothing, not even
// once NATS is back, so the client's retry of the same token rotates it.
// With --reuse-interval 0 a rotation stored late would make that retry a
// replay and revoke the family.
func TestBrokerOutageRefusedRefreshIsRetryable(t *testing.T) {
	srv := mustNATSServer(t)
	cfg := testConfig(t)
	cfg.NATSURL = srv.url()
	cfg.ReuseInterval = 0
	logs := &syncBuffer{}
	app := MustApp(t, cfg, logs)
	nc := clientConn(t, srv.url())
	f := mustIssue(t, nc, "user-strict", "web-app")
	r := mustRefresh(t, nc, f.RefreshToken, "web-app") // the writer now has the family cached

	srv.stop()
	eventstest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if app.nc.IsConnected() {
			return errors.New("tokend has not noticed that NATS is down")
		}
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	took, err := timed(func() error {
		_, err := app.api.Tokens.Refresh(ctx, eventsRefresh(r.RefreshToken, "web-app"))
		return err
	})
	cancel()
	if code := domain.ErrorCode(err); err == nil || code != domain.EUnavailable {
		t.Fatalf("refresh while NATS is down: %v (%s); want temporarily_unavailable", err, code)
	}
	if took > 500*time.Millisecond {
		t.Errorf("refresh while NATS is down answered after %v: a command must fail fast once the connection is known to be down", took)
	}
	srv.start()
	eventstest.CheckFor(t, 20*time.Second, 50*time.Millisecond, func() error {
		if code := status(t, app, "/readyz"); code != http.StatusOK || !nc.IsConnected() {
			return fmt.Errorf("/readyz %d after NATS came back; client connected: %v", code, nc.IsConnected())
		}
		return nil
	})

	o := tryRefresh(nc, r.RefreshToken, 5*time.Second)
	evs := familyEvents(t, nc, f.FamilyID)
	if !o.ok() {
		t.Fatalf("retrying a refresh answered temporarily_unavailable: %v; the family's events: %v", o, countTypes(evs))
	}
	if gen := tokenGeneration(t, o.token.RefreshToken); gen != 3 || len(evs) != 3 {
		t.Fatalf("the retry rotated to generation %d; the family has %d events: %v", gen, len(evs), countTypes(evs))
	}
	wantCleanLogs(t, logs.String())
	t.Logf("the refused refresh answered in %v", took.Round(time.Millisecond))
}
