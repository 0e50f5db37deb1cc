package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime/debug"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events"
	"github.com/tokend/tokend/jti"
	"github.com/tokend/tokend/keys"
	"github.com/tokend/tokend/pii"
	"github.com/tokend/tokend/projections"
	"github.com/tokend/tokend/ratelimit"
	"github.com/tokend/tokend/registry"
	"github.com/tokend/tokend/revoking"
	"github.com/tokend/tokend/signals"
	"github.com/tokend/tokend/tokens"
)

// App is one running tokend: optionally an embedded NATS server, the
// command service and the HTTP endpoints.
type App struct {
	cfg       Config
	log       *slog.Logger
	lock      *os.File
	ns        *server.Server // nil with --nats-url
	nc        *nats.Conn
	js        jetstream.JetStream
	api       *api.Service
	http      *http.Server
	httpLn    net.Listener
	revoking  *revoking.Revoking
	personal  *pii.Store        // nil without --pii-key-file
	periods   *pii.Periods      // nil without --pii-context-retention
	protector *events.Protector // nil without --pii-key-file
	clients   *registry.Registry
	janitor   *tokens.Janitor
	// streams and delivery are the SSF streams and their delivery engine.
	streams  *signals.Store
	delivery *signals.Engine
	// oauth and oauthLn serve the OAuth endpoints (--oauth-http); nil when off.
	oauth   *http.Server
	oauthLn net.Listener
	// issuer is the iss of access tokens and the OAuth endpoints' base URL;
	// issuerDerived says it is the OAuth listener's URL, no --issuer given.
	issuer        string
	issuerDerived bool
	// usedIDs remembers the one-time ids (jti) of client assertions and
	// DPoP proofs, for every instance.
	usedIDs *jti.Cache
	// audit and auditLn serve the audit API (--audit-http); nil when off.
	audit   *http.Server
	auditLn net.Listener

	db             *projections.DB
	projector      *projections.Projector
	stopProjector  context.CancelFunc
	projectorDone  chan struct{}
	stopBackground context.CancelFunc // ends the janitor and the idle memory release
	backgroundDone sync.WaitGroup
}

// maxRateLimitedClients bounds the client ids whose issue rate is tracked.
const maxRateLimitedClients = 65536

// Start brings tokend up; on error everything started so far is stopped.
func Start(ctx context.Context, cfg Config, log *slog.Logger) (_ *App, err error) {
	a := &App{cfg: cfg, log: log}
	defer func() {
		if err != nil {
			a.Stop()
		}
	}()
	if a.lock, err = lockDataDir(cfg.DataDir); err != nil {
		return nil, err
	}
	fdLimit, err := a.fitConnections()
	if err != nil {
		return nil, err
	}
	if err := a.connect(); err != nil {
		return nil, err
	}
	if a.js, err = jetstream.New(a.nc); err != nil {
		return nil, err
	}
	setupCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := waitForJetStream(setupCtx, a.js, log); err != nil {
		return nil, err
	}
	ring, err := keys.OpenKeyring(setupCtx, a.js, cfg.StreamReplicas,
		keys.Lifetimes{Refresh: cfg.AbsoluteTTL, Access: cfg.AccessTTL, Skew: cfg.keySkew}, log.With("component", "keys"))
	if err != nil {
		return nil, err
	}
	if err := a.listenOAuth(); err != nil {
		return nil, err
	}
	access, err := api.NewAccessTokens(ring.Loaded().Keys, a.issuer, cfg.AccessTTL)
	if err == nil {
		err = access.Follow(ring)
	}
	if err != nil {
		return nil, err
	}
	// Opened whether or not --client-registry enforces it, so clients can
	// be registered before enforcement is switched on.
	if a.clients, err = registry.Open(setupCtx, a.js, cfg.StreamReplicas, log.With("component", "clients")); err != nil {
		return nil, err
	}
	subjects := events.Subjects{Prefix: cfg.SubjectPrefix}
	retention := a.retention()
	stream, err := events.Setup(setupCtx, a.js, subjects, events.StreamLimits{Replicas: cfg.StreamReplicas,
		MaxBytes: a.streamMaxBytes(), MaxAge: retention.MaxAge(cfg.AbsoluteTTL)})
	if err != nil {
		return nil, err
	}
	reg := newRegistry()
	metrics := api.NewMetrics(reg)
	store := events.NewStore(a.nc, a.js, stream, subjects)
	store.Retention = retention
	store.FullState = cfg.EventState == "full"
	if a.personal, a.periods, err = a.openPersonalData(setupCtx); err != nil {
		return nil, err
	}
	if a.personal != nil {
		a.protector = events.NewProtector(a.personal, a.periods)
		store.Protector = a.protector
	}
	writer := events.NewWriter(store, cfg.FamilyCache)
	writer.OnAppend, writer.OnConflict, writer.OnStoreError = metrics.Appended, metrics.FenceConflict, metrics.StoreError
	policy := domain.Policy{ReuseInterval: cfg.ReuseInterval, IdleTTL: cfg.IdleTTL, AbsoluteTTL: cfg.AbsoluteTTL}
	if err := a.startProjections(ctx, subjects, metrics.ProjectionBatch); err != nil {
		return nil, err
	}
	reader := projections.NewReader(a.db, a.projector, time.Now)
	reader.Protector = a.protector
	registerStateMetrics(reg, a.projector, reader, a.nc, a.js)
	svc := tokens.NewService(writer, ring.Codec(), policy, time.Now)
	svc.UseKeyring(ring)
	svc.RefreshLimit = ratelimit.NewKeyedLimiter(cfg.RefreshRate, cfg.RefreshBurst, cfg.FamilyCache, time.Now)
	svc.IssueLimit = ratelimit.NewKeyedLimiter(cfg.IssueRate, cfg.IssueBurst, maxRateLimitedClients, time.Now)
	svc.ForeignLimit = ratelimit.NewKeyedLimiter(cfg.ForeignRate, cfg.ForeignBurst, maxRateLimitedClients, time.Now)
	svc.OnRateLimited = metrics.RateLimited
	if svc.Revoking, err = revoking.Open(setupCtx, a.js, cfg.StreamReplicas); err != nil {
		return nil, err
	}
	if a.usedIDs, err = jti.Open(setupCtx, a.js, cfg.StreamReplicas, time.Now); err != nil {
		return nil, err
	}
	if err := a.useDPoP(svc, ring, metrics); err != nil {
		return nil, err
	}
	a.revoking = svc.Revoking
	if a.protector != nil {
		svc.Revoking.SubjectName = a.protector.MarkerName
	}
	svc.Clients, svc.EnforceClients = a.clients, cfg.ClientRegistry
	a.clients.OnChange = metrics.ClientRegistryChange
	if a.streams, a.delivery, err = a.openSSF(setupCtx, ring, store, subjects, metrics); err != nil {
		return nil, err
	}
	a.api = &api.Service{
		Tokens:    svc,
		Access:    access,
		Reader:    reader,
		Projector: a.projector,
		Metrics:   metrics,
		Clients:   a.clients,
		Outbox:    store,
		Streams:   a.streams,
		Delivery:  a.delivery,
		Personal:  a.personal,
		Log:       log,
		Now:       time.Now,

		CommandsInFlight: cfg.MaxCommands,
		QueriesInFlight:  cfg.MaxQueries,
	}
	svc.OnSubjectReplay = a.api.RevokeSubjectAfterReplay
	if err := a.api.Start(a.nc, cfg.SubjectPrefix); err != nil {
		return nil, err
	}
	if err := a.serveHTTP(reg); err != nil {
		return nil, err
	}
	background, stopBackground := context.WithCancel(context.Background())
	a.stopBackground = stopBackground
	a.janitor = &tokens.Janitor{Tokens: svc, Expired: reader.FamiliesToArchive, Now: time.Now, OnArchived: metrics.Archived}
	a.backgroundDone.Go(func() { a.keepRetention(background, a.janitor) })
	if a.periods != nil {
		// Every instance overwrites the expired period keys on disk;
		// concurrent sweeps are harmless.
		a.backgroundDone.Go(func() { a.periods.Run(background) })
	}
	a.backgroundDone.Go(func() {
		t := time.NewTicker(idleCheck)
		defer t.Stop()
		releaseWhenIdle(background, t.C, a.api.Handled, debug.FreeOSMemory)
	})
	log.Info("tokend ready", "version", api.Version, "nats", a.NATSURL(), "http", a.HTTPAddr(), "audit_http", a.AuditAddr(),
		"oauth_http", a.OAuthAddr(), "issuer", a.issuer, "issuer_derived", a.issuerDerived,
		"prefix", cfg.SubjectPrefix, "reuse_interval", cfg.ReuseInterval, "embedded", a.ns != nil,
		"fd_limit", fdLimit, "max_conns", describeCaps(a.cfg.connCaps()))
	return a, nil
}

// piiMarkerTTL is how long an erasure's marker stays in the key bucket,
// for instances whose watch lags to drop the key they cache; one cut off
// longer forgets it after pii.DefaultCacheTTL all the same.
const piiMarkerTTL = 24 * time.Hour

// openPersonalData opens the subjects' data keys under --pii-key-file.
// Without it tokend stores personal data in clear, as the v1 contract
// describes, and refuses to start where protection was on before: it
// could not read the sealed events, and new ones would be in clear.
// With --pii-context-retention it opens the period keys too.
func (a *App) openPersonalData(ctx context.Context) (*pii.Store, *pii.Periods, error) {
	if a.cfg.PIIKeyFile == "" {
		_, err := a.js.KeyValue(ctx, pii.Bucket)
		switch {
		case err == nil:
			return nil, nil, fmt.Errorf("this deployment protects personal data (bucket %s exists): start tokend with its --pii-key-file", pii.Bucket)
		case !errors.Is(err, jetstream.ErrBucketNotFound):
			return nil, nil, fmt.Errorf("kv %s: %w", pii.Bucket, err)
		}
		return nil, nil, nil
	}
	key, err := pii.LoadDeploymentKey(a.cfg.PIIKeyFile)
	if err != nil {
		return nil, nil, fmt.Errorf("--pii-key-file: %w", err)
	}
	keys, err := pii.NewKeys(key)
	if err != nil {
		return nil, nil, fmt.Errorf("--pii-key-file: %w", err)
	}
	store, err := pii.OpenStore(ctx, a.js, keys, pii.Config{Replicas: a.cfg.StreamReplicas, CacheSize: a.cfg.FamilyCache, MarkerTTL: piiMarkerTTL})
	if err != nil || a.cfg.PIIContextRetention == 0 {
		return store, nil, err
	}
	periods, err := pii.OpenPeriods(ctx, a.js, keys, pii.PeriodConfig{Replicas: a.cfg.StreamReplicas,
		Retention: a.cfg.PIIContextRetention, CacheSize: 64, Log: a.log.With("component", "pii")})
	if err != nil {
		store.Stop()
		return nil, nil, err
	}
	return store, periods, nil
}

func (a *App) retention() events.Retention {
	return events.Retention{AfterExpiry: a.cfg.Retention, Archive: a.cfg.ArchiveAfter}
}

// retentionEvery is how often an instance archives expired families and
// drops the read model's rows of events the stream dropped.
const retentionEvery = time.Minute

// keepRetention archives families past their absolute expiry and prunes
// the read model, every retentionEvery until ctx ends.
func (a *App) keepRetention(ctx context.Context, janitor *tokens.Janitor) {
	t := time.NewTicker(retentionEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if _, err := janitor.SweepAll(ctx); err != nil && ctx.Err() == nil {
			a.log.Warn("archiving expired families", "err", err)
		}
		if _, err := a.projector.Prune(ctx, time.Now()); err != nil && ctx.Err() == nil {
			a.log.Warn("dropping expired rows from the read model", "err", err)
		}
	}
}

// streamMaxBytes is the TOKENS stream's size limit: as configured, or for
// the embedded server 90% of its store, which leaves room for the key
// bucket and lets the store-filling alert fire before JetStream itself is
// out of space.
func (a *App) streamMaxBytes() int64 {
	if a.cfg.StreamMaxBytes > 0 || a.ns == nil {
		return a.cfg.StreamMaxBytes
	}
	return a.cfg.JSMaxStore / 10 * 9
}

// serveHTTP starts the operations listener (--http) and, if configured,
// the audit listener (--audit-http).
func (a *App) serveHTTP(reg *prometheus.Registry) error {
	var err error
	if a.httpLn, err = net.Listen("tcp", a.cfg.HTTPAddr); err != nil {
		return fmt.Errorf("--http listen: %w", err)
	}
	handler := a.api.OpsHandler(a.ready, metricsHandler(reg), a.cfg.V1OpenAudit)
	a.http = a.newHTTPServer(handler)
	if a.cfg.Pprof {
		a.http.Handler = withPprof(handler)
		a.http.WriteTimeout = max(a.http.WriteTimeout, pprofWriteTimeout)
	}
	go a.serve(a.http, a.limitConns(a.httpLn, "http", a.cfg.HTTPMaxConns, false))

	if a.oauthLn != nil {
		if err := a.serveOAuth(); err != nil {
			return err
		}
	}
	if a.cfg.AuditHTTP.Addr == "" {
		return nil
	}
	guard, tlsConfig, err := auditSecurity(a.cfg.AuditHTTP, a.log.With("component", "audit-http"))
	if err != nil {
		return err
	}
	clientAddr, err := a.cfg.clientAddr()
	if err != nil {
		return err
	}
	if a.auditLn, err = net.Listen("tcp", a.cfg.AuditHTTP.Addr); err != nil {
		return fmt.Errorf("--audit-http listen: %w", err)
	}
	a.audit = a.newHTTPServer(api.WithClientAddress(clientAddr, guard.Wrap(a.api.AuditHandler())))
	a.audit.TLSConfig, a.audit.ErrorLog = tlsConfig, slog.NewLogLogger(a.log.Handler(), slog.LevelDebug)
	go a.serve(a.audit, tls.NewListener(a.limitConns(a.auditLn, "audit", a.cfg.AuditHTTP.MaxConns, true), tlsConfig))
	return nil
}

// listenOAuth binds the OAuth listener (--oauth-http), if any, and settles
// the issuer: --issuer, or without it the listener's own URL, which needs
// its bound address (a port 0 is only known then).
func (a *App) listenOAuth() error {
	var err error
	// Normalised here too, not only when flags are parsed: a Config built
	// in code must not give metadata and tokens two spellings either.
	if a.cfg.Issuer != "" {
		if a.issuer, err = normalizeIssuer(a.cfg.Issuer); err != nil {
			return err
		}
	}
	if a.cfg.OAuthHTTP.Addr == "" {
		return nil
	}
	if a.oauthLn, err = net.Listen("tcp", a.cfg.OAuthHTTP.Addr); err != nil {
		return fmt.Errorf("--oauth-http listen: %w", err)
	}
	if a.issuer == "" {
		scheme := "http://"
		if a.cfg.OAuthHTTP.TLSCert != "" {
			scheme = "https://"
		}
		a.issuer, a.issuerDerived = scheme+a.oauthLn.Addr().String(), true
	}
	if u, err := url.Parse(a.issuer); err == nil && u.Scheme == "http" && !loopback(net.JoinHostPort(u.Hostname(), "0")) {
		a.log.Warn("the issuer is not an https URL, as RFC 8414 requires of an OAuth server: clients may refuse it", "issuer", a.issuer)
	}
	return nil
}

// serveOAuth serves the OAuth listener: it faces clients, so it gets TLS
// when configured (a TLS-terminating proxy in front of it is the
// alternative).
func (a *App) serveOAuth() error {
	clientAddr, err := a.cfg.clientAddr()
	if err != nil {
		return err
	}
	oauth := api.NewOAuth(a.api, a.clients, a.issuer, a.usedIDs, a.log.With("component", "oauth"))
	a.oauth = a.newHTTPServer(api.WithClientAddress(clientAddr, oauth.Handler()))
	a.oauth.ErrorLog = slog.NewLogLogger(a.log.Handler(), slog.LevelDebug)
	underTLS := a.cfg.OAuthHTTP.TLSCert != ""
	ln := a.limitConns(a.oauthLn, "oauth", a.cfg.OAuthHTTP.MaxConns, underTLS)
	if underTLS {
		cert, err := tls.LoadX509KeyPair(a.cfg.OAuthHTTP.TLSCert, a.cfg.OAuthHTTP.TLSKey)
		if err != nil {
			return fmt.Errorf("--oauth-tls-cert/--oauth-tls-key: %w", err)
		}
		ln = tls.NewListener(ln, &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}})
	}
	go a.serve(a.oauth, ln)
	return nil
}

func (a *App) serve(srv *http.Server, ln net.Listener) {
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		a.log.Error("http server", "addr", ln.Addr().String(), "err", err)
	}
}

// startProjections opens the read model (rebuilding it from the stream if
// it was deleted, or if the stream no longer holds what it was built from:
// a restored backup, a recreated stream) and keeps the projector running
// until Stop.
func (a *App) startProjections(ctx context.Context, subjects events.Subjects, onBatch func(int, time.Duration)) error {
	path := filepath.Join(a.cfg.DataDir, "projections.db")
	db, err := projections.Open(ctx, path)
	if err != nil {
		return fmt.Errorf("projections: %w", err)
	}
	a.db = db
	if a.projector, err = projections.NewProjector(ctx, db, a.js, subjects, a.log.With("component", "projector")); err != nil {
		return fmt.Errorf("projections: %w", err)
	}
	a.projector.OnBatch = onBatch
	a.projector.MaxAge = a.retention().MaxAge(a.cfg.AbsoluteTTL)
	if a.projector.Applied() == 0 {
		a.log.Info("projections start from the beginning of the stream", "path", path)
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	a.stopProjector, a.projectorDone = cancel, make(chan struct{})
	go func() {
		defer close(a.projectorDone)
		for runCtx.Err() == nil {
			if err := a.projector.Run(runCtx); err != nil && runCtx.Err() == nil {
				a.log.Error("projector stopped, restarting", "err", err)
				select {
				case <-runCtx.Done():
				case <-time.After(time.Second):
				}
			}
		}
	}()
	return nil
}

// ready is the readiness check behind /readyz.
func (a *App) ready(ctx context.Context) error {
	if !a.nc.IsConnected() {
		return errors.New("nats disconnected")
	}
	stream, err := a.js.Stream(ctx, events.StreamName)
	if err != nil {
		return fmt.Errorf("stream %s: %w", events.StreamName, err)
	}
	// The lag is measured against the stream as just read: the projector's
	// own view of the stream stops moving when the projector does, which is
	// exactly when the lag matters.
	last, err := events.LastEventSeq(ctx, stream, events.Subjects{Prefix: a.cfg.SubjectPrefix})
	if err != nil {
		return fmt.Errorf("stream %s: %w", events.StreamName, err)
	}
	applied := a.projector.Applied()
	a.projector.ObserveStreamSeq(last)
	if last > applied && last-applied > a.cfg.ReadyMaxLag {
		return fmt.Errorf("projections are %d events behind the stream (bound %d)", last-applied, a.cfg.ReadyMaxLag)
	}
	return nil
}

// Clients returns the client registry; Config.ClientRegistry says whether
// it is enforced.
func (a *App) Clients() *registry.Registry { return a.clients }

// NATSURL is where clients reach this instance's NATS.
func (a *App) NATSURL() string {
	if a.ns != nil {
		return a.ns.ClientURL()
	}
	return a.cfg.NATSURL
}

// HTTPAddr is the bound HTTP address.
func (a *App) HTTPAddr() string { return a.httpLn.Addr().String() }

// OAuthAddr is the bound address of the OAuth listener, "" when it is off.
func (a *App) OAuthAddr() string {
	if a.oauthLn == nil {
		return ""
	}
	return a.oauthLn.Addr().String()
}

// AuditAddr is the bound address of the audit listener, "" when it is off.
func (a *App) AuditAddr() string {
	if a.auditLn == nil {
		return ""
	}
	return a.auditLn.Addr().String()
}

// Stop drains in-flight requests, then closes HTTP, NATS and the embedded server.
func (a *App) Stop() {
	if a.stopBackground != nil {
		a.stopBackground()
		a.backgroundDone.Wait()
	}
	if a.api != nil {
		a.api.Stop()
	}
	for _, srv := range []*http.Server{a.http, a.oauth, a.audit} {
		if srv != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			srv.Shutdown(ctx)
			cancel()
		}
	}
	if a.oauth == nil && a.oauthLn != nil {
		a.oauthLn.Close() // bound, but Start failed before serving it
	}
	if a.delivery != nil {
		a.delivery.Stop() // hands the streams it delivers to another instance
	}
	if a.streams != nil {
		a.streams.Stop()
	}
	if a.personal != nil {
		a.personal.Stop()
	}
	if a.revoking != nil {
		a.revoking.Stop()
	}
	if a.clients != nil {
		a.clients.Stop()
	}
	if a.stopProjector != nil {
		a.stopProjector()
		<-a.projectorDone
	}
	if a.db != nil {
		a.db.Close()
	}
	if a.nc != nil {
		a.nc.Drain()
		a.nc.Close()
	}
	if a.ns != nil {
		a.ns.Shutdown()
		a.ns.WaitForShutdown()
	}
	if a.lock != nil {
		a.lock.Close() // releases the data directory
	}
}
