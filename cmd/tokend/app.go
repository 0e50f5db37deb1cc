package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/debug"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events"
	"github.com/tokend/tokend/projections"
)

// App is one running tokend: optionally an embedded NATS server, the
// command service and the HTTP endpoints.
type App struct {
	cfg    Config
	log    *slog.Logger
	ns     *server.Server // nil with --nats-url
	nc     *nats.Conn
	js     jetstream.JetStream
	api    *api.Service
	http   *http.Server
	httpLn net.Listener

	db            *projections.DB
	projector     *projections.Projector
	stopProjector context.CancelFunc
	projectorDone chan struct{}
	stopIdle      context.CancelFunc
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
	if err := a.connect(); err != nil {
		return nil, err
	}
	if a.js, err = jetstream.New(a.nc); err != nil {
		return nil, err
	}
	setupCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	keys, err := events.OpenKeyring(setupCtx, a.js, cfg.StreamReplicas,
		events.Lifetimes{Refresh: cfg.AbsoluteTTL, Access: cfg.AccessTTL}, log.With("component", "keys"))
	if err != nil {
		return nil, err
	}
	access, err := api.NewAccessTokens(keys.Loaded().Keys, cfg.Issuer, cfg.AccessTTL)
	if err == nil {
		err = access.Follow(keys)
	}
	if err != nil {
		return nil, err
	}
	subjects := events.Subjects{Prefix: cfg.SubjectPrefix}
	stream, err := events.Setup(setupCtx, a.js, subjects, cfg.StreamReplicas, 0)
	if err != nil {
		return nil, err
	}
	reg := newRegistry()
	metrics := api.NewMetrics(reg)
	writer := events.NewWriter(events.NewStore(a.nc, a.js, stream, subjects), cfg.FamilyCache)
	writer.OnAppend, writer.OnConflict, writer.OnStoreError = metrics.Appended, metrics.FenceConflict, metrics.StoreError
	policy := domain.Policy{ReuseInterval: cfg.ReuseInterval, IdleTTL: cfg.IdleTTL, AbsoluteTTL: cfg.AbsoluteTTL}
	if err := a.startProjections(ctx, subjects, metrics.ProjectionBatch); err != nil {
		return nil, err
	}
	reader := projections.NewReader(a.db, a.projector, time.Now)
	registerStateMetrics(reg, a.projector, reader, a.nc)
	tokens := events.NewService(writer, keys.Codec(), policy, time.Now)
	tokens.UseKeyring(keys)
	tokens.RefreshLimit = events.NewKeyedLimiter(cfg.RefreshRate, cfg.RefreshBurst, cfg.FamilyCache, time.Now)
	tokens.IssueLimit = events.NewKeyedLimiter(cfg.IssueRate, cfg.IssueBurst, maxRateLimitedClients, time.Now)
	tokens.OnRateLimited = metrics.RateLimited
	a.api = &api.Service{
		Tokens:    tokens,
		Access:    access,
		Reader:    reader,
		Projector: a.projector,
		Metrics:   metrics,
		Log:       log,
		Now:       time.Now,
	}
	if err := a.api.Start(a.nc, cfg.SubjectPrefix); err != nil {
		return nil, err
	}
	if a.httpLn, err = net.Listen("tcp", cfg.HTTPAddr); err != nil {
		return nil, fmt.Errorf("http listen: %w", err)
	}
	handler := a.api.HTTPHandler(a.ready, metricsHandler(reg))
	if cfg.Pprof {
		handler = withPprof(handler)
	}
	a.http = &http.Server{Handler: handler, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := a.http.Serve(a.httpLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("http server", "err", err)
		}
	}()
	idleCtx, stopIdle := context.WithCancel(context.Background())
	a.stopIdle = stopIdle
	go func() {
		t := time.NewTicker(idleCheck)
		defer t.Stop()
		releaseWhenIdle(idleCtx, t.C, a.api.Handled, debug.FreeOSMemory)
	}()
	log.Info("tokend ready", "nats", a.NATSURL(), "http", a.HTTPAddr(), "prefix", cfg.SubjectPrefix,
		"reuse_interval", cfg.ReuseInterval, "embedded", a.ns != nil)
	return a, nil
}

// startProjections opens the read model (rebuilding it from the stream if
// it was deleted) and keeps the projector running until Stop.
func (a *App) startProjections(ctx context.Context, subjects events.Subjects, onBatch func(int, time.Duration)) error {
	if err := os.MkdirAll(a.cfg.DataDir, 0o700); err != nil {
		return err
	}
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

// NATSURL is where clients reach this instance's NATS.
func (a *App) NATSURL() string {
	if a.ns != nil {
		return a.ns.ClientURL()
	}
	return a.cfg.NATSURL
}

// HTTPAddr is the bound HTTP address.
func (a *App) HTTPAddr() string { return a.httpLn.Addr().String() }

// Stop drains in-flight requests, then closes HTTP, NATS and the embedded server.
func (a *App) Stop() {
	if a.stopIdle != nil {
		a.stopIdle()
	}
	if a.api != nil {
		a.api.Stop()
	}
	if a.http != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		a.http.Shutdown(ctx)
		cancel()
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
}
