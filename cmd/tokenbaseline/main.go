// Command tokenbaseline is the minimal pipeline that `tokenbench
// --baseline` compares tokend with: the least any service answering
// rotations over NATS with a durable, fenced event log has to do, done as
// cheaply as NATS allows.
//
// One process runs an embedded NATS server with JetStream, configured as
// tokend configures its own (file storage under --data-dir, explicit
// JetStream limits, max_payload 1 MiB, --sync-always), a stream BASELINE on
// baseline.evt.<family>, and a responder on baseline.cmd.issue and
// baseline.cmd.refresh. For each request it does exactly one append of an
// event of --event-bytes to the family's subject, fenced with
// Nats-Expected-Last-Subject-Sequence, and once JetStream acknowledges it
// replies
//
//	{"refresh_token": "<family>.<seq>", "family_id": "<family>", "seq": N}
//
// No token is minted, verified or hashed, no state decided, nothing
// projected: whatever tokend spends beyond this is the price of what it
// does. Failures answer like tokend (the contract's JSON body plus the NATS
// micro error headers) so a client classifies them the same way.
//
// Nothing blocks per request: the request's subscription publishes the
// append with a reply subject of its own, and the acknowledgement's
// subscription replies. That is what a synchronous JetStream publish does
// underneath, without a goroutine, a context, a timer and a channel per
// request. Appends to one family still go one at a time, since each
// append's fence is the sequence its predecessor was stored at.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/nats-io/nuid"
)

// Names of the pipeline; the prefix is what `tokenbench` sends to.
const (
	streamName = "BASELINE"
	prefix     = "baseline"
	queueGroup = "q" // the queue group NATS micro, and so tokend, subscribes in
)

// The same bounds as tokend's api package, so both shed load alike.
const (
	requestTimeout = 5 * time.Second
	maxInFlight    = 1024
)

// Bounds of --event-bytes: the event's fields (a family id of at most
// maxFamilyID bytes included) take under 200 bytes; the largest fits
// max_payload.
const (
	minEventBytes = 256
	maxEventBytes = 512 << 10
	maxFamilyID   = 64
)

type config struct {
	dataDir, natsListen, httpAddr string
	syncAlways                    bool
	jsMaxMemory, jsMaxStore       int64
	eventBytes                    int
	ackTimeout                    time.Duration // 0: requestTimeout; shorter in tests
}

func main() { os.Exit(run(os.Args[1:])) }

func run(args []string) int {
	var cfg config
	fs := flag.NewFlagSet("tokenbaseline", flag.ContinueOnError)
	// Defaults as tokend's, so the same flags start a comparable server.
	fs.StringVar(&cfg.dataDir, "data-dir", "./baseline-data", "the embedded JetStream store")
	fs.StringVar(&cfg.natsListen, "nats-listen", "127.0.0.1:4222", "client listen address of the embedded server")
	fs.StringVar(&cfg.httpAddr, "http", "127.0.0.1:8080", "HTTP listen address (/readyz)")
	fs.BoolVar(&cfg.syncAlways, "sync-always", false, "fsync every write before acknowledging (as tokend --sync-always)")
	fs.Int64Var(&cfg.jsMaxMemory, "js-max-memory", 256<<20, "JetStream memory limit in bytes")
	fs.Int64Var(&cfg.jsMaxStore, "js-max-store", 10<<30, "JetStream disk limit in bytes")
	fs.IntVar(&cfg.eventBytes, "event-bytes", 400, fmt.Sprintf("size of each stored event in bytes (%d to %d)", minEventBytes, maxEventBytes))
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "tokenbaseline: unexpected arguments: %v\n", fs.Args())
		return 2
	}
	if cfg.eventBytes < minEventBytes || cfg.eventBytes > maxEventBytes {
		fmt.Fprintf(os.Stderr, "tokenbaseline: --event-bytes %d: want %d to %d\n", cfg.eventBytes, minEventBytes, maxEventBytes)
		return 2
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	p, err := start(ctx, cfg, log)
	if err != nil {
		log.Error("tokenbaseline failed to start", "err", err)
		return 1
	}
	<-ctx.Done()
	log.Info("shutting down")
	p.stop()
	log.Info("stopped")
	return 0
}

// pipeline is one running baseline.
type pipeline struct {
	ns         *server.Server
	nc         *nats.Conn
	stream     jetstream.Stream
	eventBytes int
	ackTimeout time.Duration
	ackPrefix  string // an append's acknowledgement comes to ackPrefix + its id
	subs       []*nats.Subscription
	http       *http.Server
	httpLn     net.Listener
	slots      chan struct{}
	inFlight   sync.WaitGroup
	sweepStop  chan struct{}
	sweepDone  chan struct{}

	mu       sync.Mutex
	closing  bool // no new requests once stop began
	families map[string]*family
	pending  map[uint64]*request // appends awaiting their acknowledgement, by id
	lastID   uint64
}

// family is what the fence needs of a family: its last stream sequence,
// and whether an append or a load is under way, which the next request of
// the family waits for. tokend's writer keeps the same per family (a keyed
// lock and a cache of states). Entries are never evicted: the bench issues
// a few thousand families.
type family struct {
	id      string
	seq     uint64
	loaded  bool
	busy    bool
	waiting []*request
}

// request is one issue or refresh between its arrival and its reply.
type request struct {
	reply string
	fam   *family
	typ   string    // the event's type
	sent  time.Time // when its append went out
}

func start(ctx context.Context, cfg config, log *slog.Logger) (_ *pipeline, err error) {
	p := &pipeline{eventBytes: cfg.eventBytes, ackTimeout: cfg.ackTimeout, slots: make(chan struct{}, maxInFlight),
		families: map[string]*family{}, pending: map[uint64]*request{}}
	if p.ackTimeout == 0 {
		p.ackTimeout = requestTimeout
	}
	defer func() {
		if err != nil {
			p.stop()
		}
	}()
	if p.ns, err = embeddedServer(cfg); err != nil {
		return nil, err
	}
	// In-process, as tokend joins its embedded server.
	if p.nc, err = nats.Connect(p.ns.ClientURL(), nats.InProcessServer(p.ns), nats.Name("tokenbaseline")); err != nil {
		return nil, err
	}
	js, err := jetstream.New(p.nc)
	if err != nil {
		return nil, err
	}
	setupCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if p.stream, err = js.CreateOrUpdateStream(setupCtx, streamConfig()); err != nil {
		return nil, fmt.Errorf("stream %s: %w", streamName, err)
	}
	p.sweepStop, p.sweepDone = make(chan struct{}), make(chan struct{})
	go p.sweep()
	p.ackPrefix = nats.NewInbox() + "."
	if _, err := p.nc.Subscribe(p.ackPrefix+"*", p.acknowledged); err != nil {
		return nil, err
	}
	for subject, typ := range map[string]string{prefix + ".cmd.issue": "token.issued", prefix + ".cmd.refresh": "token.rotated"} {
		sub, err := p.nc.QueueSubscribe(subject, queueGroup, func(m *nats.Msg) { p.received(m, typ) })
		if err != nil {
			return nil, err
		}
		p.subs = append(p.subs, sub)
	}
	if err := p.nc.FlushTimeout(10 * time.Second); err != nil {
		return nil, err
	}
	if p.httpLn, err = net.Listen("tcp", cfg.httpAddr); err != nil {
		return nil, fmt.Errorf("http listen: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !p.nc.IsConnected() {
			http.Error(w, "nats disconnected", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok\n"))
	})
	p.http = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go p.http.Serve(p.httpLn)
	log.Info("tokenbaseline ready", "nats", p.ns.ClientURL(), "http", p.httpLn.Addr().String(),
		"sync_always", cfg.syncAlways, "event_bytes", cfg.eventBytes)
	return p, nil
}

// streamConfig is a plain file stream limited like tokend's TOKENS. It
// leaves out what only tokend's features need (per-message TTLs, atomic
// batches, deduplication by Nats-Msg-Id): their costs are tokend's.
func streamConfig() jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        streamName,
		Subjects:    []string{prefix + ".evt.*"},
		Storage:     jetstream.FileStorage,
		Replicas:    1,
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardNew,
		MaxBytes:    -1,
		AllowDirect: true,
		DenyDelete:  true,
		DenyPurge:   true,
	}
}

// embeddedServer starts the server with the options tokend gives its own
// embedded one (cmd/tokend embeddedOptions without --nats-config).
func embeddedServer(cfg config) (*server.Server, error) {
	host, portStr, err := net.SplitHostPort(cfg.natsListen)
	if err != nil {
		return nil, fmt.Errorf("--nats-listen: %w", err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("--nats-listen port: %w", err)
	}
	opts := &server.Options{
		ServerName:         "tokenbaseline",
		Host:               host,
		Port:               port,
		JetStream:          true,
		StoreDir:           filepath.Join(cfg.dataDir, "jetstream"),
		JetStreamMaxMemory: cfg.jsMaxMemory,
		JetStreamMaxStore:  cfg.jsMaxStore,
		SyncAlways:         cfg.syncAlways,
		MaxPayload:         1 << 20,
		NoSigs:             true,
		NoLog:              true,
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded nats: %w", err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(30 * time.Second) {
		ns.Shutdown()
		return nil, fmt.Errorf("embedded nats did not start listening on %s", cfg.natsListen)
	}
	return ns, nil
}

// replyError is a failure with its contract code.
type replyError struct {
	code, status, msg string
}

func (e *replyError) Error() string { return e.msg }

func invalidRequest(msg string) error { return &replyError{"invalid_request", "400", msg} }

func (p *pipeline) respondError(reply string, err error) {
	re, ok := err.(*replyError)
	if !ok {
		re = &replyError{"temporarily_unavailable", "503", "event store unavailable, retry"}
	}
	data, _ := json.Marshal(map[string]string{"error": re.code, "error_description": re.msg})
	msg := nats.NewMsg(reply)
	msg.Data = data
	msg.Header.Set(micro.ErrorCodeHeader, re.status)
	msg.Header.Set(micro.ErrorHeader, re.msg)
	p.nc.PublishMsg(msg)
}

// familyID returns the family a request is for: a new one for an issue,
// the body's family_id for a refresh (the presented token is not looked
// at). The id goes into subjects and JSON unescaped, so it is held to
// what nuid makes.
func familyID(typ string, body []byte) (string, error) {
	if typ == "token.issued" {
		return nuid.Next(), nil
	}
	var req struct {
		FamilyID string `json:"family_id"`
	}
	if err := json.Unmarshal(body, &req); err != nil {
		return "", invalidRequest("malformed JSON")
	}
	if req.FamilyID == "" || len(req.FamilyID) > maxFamilyID || strings.ContainsFunc(req.FamilyID, func(r rune) bool {
		return !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || r == '_' || r == '-')
	}) {
		return "", invalidRequest(fmt.Sprintf("family_id: 1 to %d letters, digits, _ or -", maxFamilyID))
	}
	return req.FamilyID, nil
}

// received takes a request: its append goes out at once, or after the one
// in flight for its family.
func (p *pipeline) received(m *nats.Msg, typ string) {
	id, err := familyID(typ, m.Data)
	if err != nil {
		p.respondError(m.Reply, err)
		return
	}
	// Beyond maxInFlight the subscription stops reading: requests wait in
	// NATS, as they do for tokend.
	p.slots <- struct{}{}
	p.mu.Lock()
	if p.closing {
		p.mu.Unlock()
		<-p.slots
		return
	}
	p.inFlight.Add(1)
	f := p.families[id]
	if f == nil {
		// A new family starts empty; one this process has not seen (after
		// a restart) is loaded first.
		f = &family{id: id, loaded: typ == "token.issued"}
		p.families[id] = f
	}
	r := &request{reply: m.Reply, fam: f, typ: typ}
	if f.busy {
		f.waiting = append(f.waiting, r)
		p.mu.Unlock()
		return
	}
	f.busy = true
	loaded := f.loaded
	p.mu.Unlock()
	p.begin(r, loaded)
}

// begin appends r's event; its family is busy with r.
func (p *pipeline) begin(r *request, loaded bool) {
	if loaded {
		p.send(r)
		return
	}
	// One direct get, as tokend's writer does on a cache miss; rare enough
	// for a goroutine of its own.
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
		defer cancel()
		msg, err := p.stream.GetLastMsgForSubject(ctx, prefix+".evt."+r.fam.id)
		var seq uint64
		switch {
		case errors.Is(err, jetstream.ErrMsgNotFound):
		case err != nil:
			p.finish(r, 0, err)
			return
		default:
			seq = msg.Sequence
		}
		p.mu.Lock()
		r.fam.seq, r.fam.loaded = seq, true
		p.mu.Unlock()
		p.send(r)
	}()
}

// send publishes r's event, fenced on its family's last sequence, with a
// reply subject that brings the acknowledgement to acknowledged.
func (p *pipeline) send(r *request) {
	p.mu.Lock()
	p.lastID++
	id := p.lastID
	r.sent = time.Now()
	p.pending[id] = r
	fence := r.fam.seq
	p.mu.Unlock()
	msg := &nats.Msg{
		Subject: prefix + ".evt." + r.fam.id,
		Reply:   p.ackPrefix + strconv.FormatUint(id, 10),
		Header:  nats.Header{jetstream.ExpectedLastSubjSeqHeader: []string{strconv.FormatUint(fence, 10)}},
		Data:    p.event(r, r.sent),
	}
	if err := p.nc.PublishMsg(msg); err != nil {
		if p.take(id) == r {
			p.finish(r, 0, err)
		}
	}
}

// event is r's stored event, exactly p.eventBytes long: the fields of
// tokend's envelope, padded.
func (p *pipeline) event(r *request, now time.Time) []byte {
	b := make([]byte, 0, p.eventBytes)
	b = append(b, `{"id":"`...)
	b = append(b, nuid.Next()...)
	b = append(b, `","type":"`...)
	b = append(b, r.typ...)
	b = append(b, `","time":"`...)
	b = now.UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","family_id":"`...)
	b = append(b, r.fam.id...)
	b = append(b, `","data":"`...)
	for len(b) < p.eventBytes-2 {
		b = append(b, '0')
	}
	return append(b, `"}`...)
}

// take removes the pending append id and returns its request, nil if it
// was already answered (a late acknowledgement after the sweep).
func (p *pipeline) take(id uint64) *request {
	p.mu.Lock()
	defer p.mu.Unlock()
	r := p.pending[id]
	delete(p.pending, id)
	return r
}

// pubAck is JetStream's answer to a publish.
type pubAck struct {
	Seq   uint64 `json:"seq"`
	Error *struct {
		ErrCode     int    `json:"err_code"`
		Description string `json:"description"`
	} `json:"error"`
}

// acknowledged answers the request whose append JetStream acknowledged or
// refused.
func (p *pipeline) acknowledged(m *nats.Msg) {
	id, err := strconv.ParseUint(strings.TrimPrefix(m.Subject, p.ackPrefix), 10, 64)
	if err != nil {
		return
	}
	r := p.take(id)
	if r == nil {
		return
	}
	var ack pubAck
	switch {
	case len(m.Data) == 0: // a status message: no stream answered
		err = fmt.Errorf("append: status %s", m.Header.Get("Status"))
	case json.Unmarshal(m.Data, &ack) != nil:
		err = fmt.Errorf("append: malformed acknowledgement %q", m.Data)
	case ack.Error != nil:
		err = fmt.Errorf("append: %s (%d)", ack.Error.Description, ack.Error.ErrCode)
	case ack.Seq == 0:
		err = errors.New("append: acknowledgement without seq")
	}
	p.finish(r, ack.Seq, err)
}

// finish replies to r with its stored sequence or err, and starts the
// next request waiting for the family.
func (p *pipeline) finish(r *request, seq uint64, err error) {
	f := r.fam
	p.mu.Lock()
	if err != nil {
		// Whatever happened (a fence conflict, a lost acknowledgement), the
		// next request reloads the family's position.
		f.loaded = false
	} else {
		f.seq = seq
	}
	var next *request
	if len(f.waiting) > 0 {
		next, f.waiting = f.waiting[0], f.waiting[1:]
	} else {
		f.busy = false
	}
	loaded := f.loaded
	p.mu.Unlock()

	if err != nil {
		p.respondError(r.reply, err)
	} else {
		s := strconv.FormatUint(seq, 10)
		b := make([]byte, 0, 64+2*len(f.id))
		b = append(b, `{"refresh_token":"`...)
		b = append(b, f.id...)
		b = append(b, '.')
		b = append(b, s...)
		b = append(b, `","family_id":"`...)
		b = append(b, f.id...)
		b = append(b, `","seq":`...)
		b = append(b, s...)
		b = append(b, '}')
		p.nc.Publish(r.reply, b)
	}
	<-p.slots
	p.inFlight.Done()
	if next != nil {
		p.begin(next, loaded)
	}
}

// sweep fails the appends whose acknowledgement is overdue, so a lost one
// cannot hold its family for ever.
func (p *pipeline) sweep() {
	defer close(p.sweepDone)
	errNoAck := fmt.Errorf("append: no acknowledgement within %v", p.ackTimeout)
	tick := time.NewTicker(p.ackTimeout / 5)
	defer tick.Stop()
	for {
		select {
		case <-p.sweepStop:
			return
		case now := <-tick.C:
			var overdue []*request
			p.mu.Lock()
			for id, r := range p.pending {
				if now.Sub(r.sent) > p.ackTimeout {
					delete(p.pending, id)
					overdue = append(overdue, r)
				}
			}
			p.mu.Unlock()
			for _, r := range overdue {
				p.finish(r, 0, errNoAck)
			}
		}
	}
}

// stop stops taking requests, waits for those in flight, then closes HTTP,
// NATS and the embedded server.
func (p *pipeline) stop() {
	p.mu.Lock()
	p.closing = true
	p.mu.Unlock()
	for _, sub := range p.subs {
		sub.Unsubscribe()
	}
	// The sweep still runs: it ends every wait within ackTimeout.
	p.inFlight.Wait()
	if p.sweepStop != nil {
		close(p.sweepStop)
		<-p.sweepDone
	}
	if p.http != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		p.http.Shutdown(ctx)
		cancel()
	}
	if p.nc != nil {
		p.nc.Drain()
		p.nc.Close()
	}
	if p.ns != nil {
		p.ns.Shutdown()
		p.ns.WaitForShutdown()
	}
}
