// Package apitest runs a whole tokend inside a test process, for the tests
// of packages that talk to it (the client, services): an embedded NATS
// server with JetStream, the keys, the TOKENS stream, the event service,
// the projector and read model, and the NATS endpoints, wired with the
// constructors cmd/tokend uses. Everything stops when the test ends.
//
//	td := apitest.Start(t, apitest.Options{AccessTTL: time.Minute})
//	nc := td.Connect(t)
//	c := client.New(nc, "")
//	…
//	td.StopNATS()  // an outage: the server goes, its port and store stay
//	td.StartNATS() // tokend and the connections from Connect come back
//	evs := td.Events(t, familyID)
package apitest

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/dpop"
	"github.com/tokend/tokend/events"
	"github.com/tokend/tokend/jti"
	"github.com/tokend/tokend/keys"
	"github.com/tokend/tokend/projections"
	"github.com/tokend/tokend/revoking"
	"github.com/tokend/tokend/tokens"
)

// Options are the policy knobs of the test tokend; zero values mean the
// defaults below (tokend's own, except shorter lifetimes). Rate limits are
// off.
type Options struct {
	ReuseInterval time.Duration // --reuse-interval, default 10 s
	AccessTTL     time.Duration // --access-ttl, default 5 min
	IdleTTL       time.Duration // --refresh-idle-ttl, default 1 h
	AbsoluteTTL   time.Duration // --refresh-absolute-ttl, default 24 h
	Prefix        string        // --subject-prefix, default "tokens"
	Issuer        string        // --issuer, default "https://tokend.test"
	// Log receives tokend's logs; discarded if nil.
	Log *slog.Logger
}

func (o Options) withDefaults() Options {
	o.ReuseInterval = cmp.Or(o.ReuseInterval, 10*time.Second)
	o.AccessTTL = cmp.Or(o.AccessTTL, 5*time.Minute)
	o.IdleTTL = cmp.Or(o.IdleTTL, time.Hour)
	o.AbsoluteTTL = cmp.Or(o.AbsoluteTTL, 24*time.Hour)
	o.Prefix = cmp.Or(o.Prefix, "tokens")
	o.Issuer = cmp.Or(o.Issuer, "https://tokend.test")
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	return o
}

// Tokend is a running test tokend.
type Tokend struct {
	tb   testing.TB
	opts Options

	mu       sync.Mutex
	natsOpts server.Options // port fixed after the first start, store kept
	ns       *server.Server // nil while stopped

	nc            *nats.Conn // tokend's own
	js            jetstream.JetStream
	svc           *api.Service
	revoking      *revoking.Revoking
	db            *projections.DB
	stopProjector context.CancelFunc
	projectorDone chan struct{}
}

// Start runs a tokend with opts and stops it when the test ends.
func Start(tb testing.TB, opts Options) *Tokend {
	tb.Helper()
	td := &Tokend{tb: tb, opts: opts.withDefaults(),
		natsOpts: server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true, JetStream: true,
			StoreDir: tb.TempDir(), JetStreamMaxMemory: 64 << 20, JetStreamMaxStore: 1 << 30}}
	td.StartNATS()
	tb.Cleanup(td.stop)
	if err := td.start(); err != nil {
		tb.Fatal(err)
	}
	return td
}

// start wires tokend as cmd/tokend does, on a connection that reconnects
// for ever and never buffers while disconnected.
func (td *Tokend) start() error {
	o := td.opts
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	nc, err := nats.Connect(td.URL(), nats.Name("tokend"), nats.MaxReconnects(-1),
		nats.ReconnectWait(50*time.Millisecond), nats.ReconnectBufSize(-1))
	if err != nil {
		return err
	}
	td.nc = nc
	if td.js, err = jetstream.New(nc); err != nil {
		return err
	}
	ring, err := keys.OpenKeyring(ctx, td.js, 1, keys.Lifetimes{Refresh: o.AbsoluteTTL, Access: o.AccessTTL}, o.Log)
	if err != nil {
		return err
	}
	access, err := api.NewAccessTokens(ring.Loaded().Keys, o.Issuer, o.AccessTTL)
	if err == nil {
		err = access.Follow(ring)
	}
	if err != nil {
		return err
	}
	subjects := events.Subjects{Prefix: o.Prefix}
	stream, err := events.Setup(ctx, td.js, subjects, events.StreamLimits{Replicas: 1})
	if err != nil {
		return err
	}
	store := events.NewStore(nc, td.js, stream, subjects)
	writer := events.NewWriter(store, 1024)
	cmds := tokens.NewService(writer, ring.Codec(),
		domain.Policy{ReuseInterval: o.ReuseInterval, IdleTTL: o.IdleTTL, AbsoluteTTL: o.AbsoluteTTL}, time.Now)
	cmds.UseKeyring(ring)
	used, err := jti.Open(ctx, td.js, 1, time.Now)
	if err != nil {
		return err
	}
	cmds.DPoP = &dpop.Verifier{Replay: used, Keys: func() dpop.NonceKeys { return ring.Loaded() }}
	cmds.TokenURL = o.Issuer + api.PathToken
	if cmds.Revoking, err = revoking.Open(ctx, td.js, 1); err != nil {
		return err
	}
	td.revoking = cmds.Revoking
	if td.db, err = projections.Open(ctx, filepath.Join(td.tb.TempDir(), "projections.db")); err != nil {
		return err
	}
	projector, err := projections.NewProjector(ctx, td.db, td.js, subjects, o.Log)
	if err != nil {
		return err
	}
	td.runProjector(projector)
	td.svc = &api.Service{Tokens: cmds, Access: access, Reader: projections.NewReader(td.db, projector, time.Now),
		Projector: projector, Log: o.Log, Now: time.Now, Outbox: store}
	return td.svc.Start(nc, o.Prefix)
}

// runProjector keeps the projector running, restarting it after errors
// (an outage ends its consumer), until the test tokend stops.
func (td *Tokend) runProjector(p *projections.Projector) {
	ctx, cancel := context.WithCancel(context.Background())
	td.stopProjector, td.projectorDone = cancel, make(chan struct{})
	go func() {
		defer close(td.projectorDone)
		for ctx.Err() == nil {
			if err := p.Run(ctx); err != nil && ctx.Err() == nil {
				select {
				case <-ctx.Done():
				case <-time.After(50 * time.Millisecond):
				}
			}
		}
	}()
}

func (td *Tokend) stop() {
	if td.svc != nil {
		td.svc.Stop()
	}
	if td.revoking != nil {
		td.revoking.Stop()
	}
	if td.stopProjector != nil {
		td.stopProjector()
		<-td.projectorDone
	}
	if td.db != nil {
		td.db.Close()
	}
	if td.nc != nil {
		td.nc.Close()
	}
	td.StopNATS()
}

// Options returns the knobs in effect, defaults filled in.
func (td *Tokend) Options() Options { return td.opts }

// URL is the NATS server's client URL; it stays the same across StopNATS
// and StartNATS.
func (td *Tokend) URL() string {
	td.mu.Lock()
	defer td.mu.Unlock()
	return "nats://" + net.JoinHostPort(td.natsOpts.Host, strconv.Itoa(td.natsOpts.Port))
}

// Connect returns a connection for a service, closed when the test ends:
// it reconnects for ever and does not buffer requests while disconnected,
// as the client package recommends.
func (td *Tokend) Connect(tb testing.TB) *nats.Conn {
	tb.Helper()
	nc, err := nats.Connect(td.URL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond), nats.ReconnectBufSize(-1))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(nc.Close)
	return nc
}

// StopNATS shuts the NATS server down; tokend and every connection lose it
// until StartNATS.
func (td *Tokend) StopNATS() {
	td.mu.Lock()
	ns := td.ns
	td.ns = nil
	td.mu.Unlock()
	if ns != nil {
		ns.Shutdown()
		ns.WaitForShutdown()
	}
}

// StartNATS starts the NATS server again, on the same port with the same
// JetStream store; connections reconnect by themselves.
func (td *Tokend) StartNATS() {
	td.tb.Helper()
	td.mu.Lock()
	defer td.mu.Unlock()
	if td.ns != nil {
		return
	}
	opts := td.natsOpts // the server keeps and changes what it is given
	ns, err := server.NewServer(&opts)
	if err != nil {
		td.tb.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		td.tb.Fatal("nats server did not start")
	}
	td.natsOpts.Port = ns.Addr().(*net.TCPAddr).Port
	td.ns = ns
}

// Events returns a family's events as stored in the stream, in order, in
// the audit shape (seq, type, generation, reason, …).
func (td *Tokend) Events(tb testing.TB, familyID string) []wire.AuditEvent {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := td.js.Stream(ctx, events.StreamName)
	if err != nil {
		tb.Fatal(err)
	}
	subject := events.Subjects{Prefix: td.opts.Prefix}.Family(familyID)
	var out []wire.AuditEvent
	for seq := uint64(1); ; {
		m, err := stream.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subject))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return out
		}
		if err != nil {
			tb.Fatalf("reading %s: %v", subject, err)
		}
		env, err := events.Decode(m.Data, familyID)
		if err != nil {
			tb.Fatal(err)
		}
		c, _ := json.Marshal(env.Context)
		out = append(out, wire.AuditEvent{Seq: m.Sequence, ID: env.ID, Type: env.Type, Time: env.Time,
			FamilyID: env.FamilyID, Subject: env.Subject, ClientID: env.ClientID, Generation: env.Generation,
			Reason: env.Reason, Context: c})
		seq = m.Sequence + 1
	}
}

// Count returns how many of evs have type typ.
func Count(evs []wire.AuditEvent, typ string) int {
	n := 0
	for _, e := range evs {
		if e.Type == typ {
			n++
		}
	}
	return n
}
