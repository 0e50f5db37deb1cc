package main

import (
	"context"
	"net/http"
	"net/http/pprof"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tokend/tokend/events"
	"github.com/tokend/tokend/projections"
)

// newRegistry returns the registry behind /metrics with the Go runtime and
// process collectors; tokend's own metrics are added by api.NewMetrics and
// registerStateMetrics.
func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

func metricsHandler(reg *prometheus.Registry) http.Handler {
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg})
}

// withPprof adds Go's profiler under /debug/pprof/ (--pprof).
func withPprof(next http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.Handle("/", next)
	return mux
}

// registerStateMetrics exposes what is read at scrape time: the read model's
// position against the stream, the active families, the NATS connection.
func registerStateMetrics(reg prometheus.Registerer, p *projections.Projector, r *projections.Reader, nc *nats.Conn, js jetstream.JetStream) {
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f)
	}
	active := &cached[int64]{ttl: 10 * time.Second, load: r.ActiveFamilies}
	usage := &cached[streamUsage]{ttl: 10 * time.Second, load: loadStreamUsage(js)}
	reg.MustRegister(
		gauge("tokend_stream_bytes", "Bytes the TOKENS stream holds (refreshed every 10s at most).",
			func() float64 { return usage.get().bytes }),
		gauge("tokend_stream_limit_bytes", "Bytes the TOKENS stream may hold: its own limit, else the account's storage limit; 0 when neither is set. Writes fail past it.",
			func() float64 { return usage.get().limit }),
		gauge("tokend_projection_applied_sequence", "Last stream sequence applied to the read model.",
			func() float64 { return float64(p.Applied()) }),
		gauge("tokend_stream_last_sequence", "Stream sequence of the newest event in TOKENS, as last seen.",
			func() float64 { return float64(p.StreamSeq()) }),
		gauge("tokend_projection_lag_events", "Stream sequence of the newest event minus the last one applied to the read model.",
			func() float64 { return float64(p.Lag()) }),
		gauge("tokend_active_families", "Token families neither revoked nor expired, per the read model (refreshed every 10s at most).",
			func() float64 { return float64(active.get()) }),
		gauge("tokend_nats_connected", "1 while the NATS connection is up, else 0.", func() float64 {
			if nc.IsConnected() {
				return 1
			}
			return 0
		}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "tokend_projection_skipped_total",
			Help: "Messages on the event subjects that were no tokend event (a misconfigured publisher) and were skipped."},
			func() float64 { return float64(p.Skipped()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "tokend_nats_reconnects_total", Help: "Times the NATS connection was re-established."},
			func() float64 { return float64(nc.Stats().Reconnects) }),
	)
}

// cached keeps a scrape from turning into a query per scrape (a count
// over the families table, JetStream API calls): it loads the value at
// most once per ttl and keeps the last one when a load fails.
type cached[T any] struct {
	ttl  time.Duration
	load func(context.Context) (T, error)

	mu    sync.Mutex
	at    time.Time
	value T
}

func (c *cached[T]) get() T {
	c.mu.Lock()
	defer c.mu.Unlock()
	if time.Since(c.at) < c.ttl {
		return c.value
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if v, err := c.load(ctx); err == nil {
		c.value, c.at = v, time.Now()
	}
	return c.value
}

// streamUsage is what the TOKENS stream holds and may hold: its own byte
// limit, else the account's; 0 when neither is set.
type streamUsage struct{ bytes, limit float64 }

func loadStreamUsage(js jetstream.JetStream) func(context.Context) (streamUsage, error) {
	return func(ctx context.Context) (streamUsage, error) {
		stream, err := js.Stream(ctx, events.StreamName)
		if err != nil {
			return streamUsage{}, err
		}
		info := stream.CachedInfo()
		u := streamUsage{bytes: float64(info.State.Bytes), limit: float64(max(info.Config.MaxBytes, 0))}
		if info.Config.MaxBytes <= 0 {
			acc, err := js.AccountInfo(ctx)
			if err != nil {
				return streamUsage{}, err
			}
			u.limit = float64(max(acc.Limits.MaxStore, 0))
		}
		return u, nil
	}
}
