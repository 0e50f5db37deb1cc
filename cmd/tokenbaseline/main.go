// Command tokenbaseline is the minimal pipeline that `tokenctl bench
// --baseline` compares tokend with: the least any service answering
// rotations over NATS with a durable, fenced event log has to do.
//
// One process runs an embedded NATS server with JetStream, configured as
// tokend configures its own (file storage under --data-dir, explicit
// JetStream limits, max_payload 1 MiB, --sync-always), a stream BASELINE on
// baseline.evt.<family> configured like tokend's TOKENS stream, and a
// responder on baseline.cmd.issue and baseline.cmd.refresh. For each request
// it does exactly one fenced append (Nats-Expected-Last-Subject-Sequence
// set to the family's last sequence, Nats-Msg-Id set) of an event the size
// of a tokend rotation event, then replies
//
//	{"refresh_token": "<family>.<seq>", "family_id": "<family>", "seq": N}
//
// No token is minted, verified or hashed, no state decided, nothing
// projected: whatever tokend spends beyond this is the price of what it
// does. Failures answer like tokend (the contract's JSON body plus the NATS
// micro error headers) so a client classifies them the same way.
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

// Names of the pipeline; the prefix is what `tokenctl bench` sends to.
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

// eventPadding fills the event to the size of a tokend token.rotated event
// (about 840 bytes of JSON, most of it two SHA-256 hashes, timestamps and
// the family snapshot): the bytes written and fsynced per append must be
// the same for the comparison to hold.
var eventPadding = strings.Repeat("0", 700)

type config struct {
	dataDir, natsListen, httpAddr string
	syncAlways                    bool
	jsMaxMemory, jsMaxStore       int64
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
	ns       *server.Server
	nc       *nats.Conn
	js       jetstream.JetStream
	stream   jetstream.Stream
	subs     []*nats.Subscription
	http     *http.Server
	httpLn   net.Listener
	slots    chan struct{}
	inFlight sync.WaitGroup

	mu       sync.Mutex
	families map[string]*family
}

// family is the per-family lock and last stream sequence, as tokend's
// writer keeps a keyed lock and a cache of family states. The bench uses a
// handful of families, so entries are never evicted.
type family struct {
	sync.Mutex
	seq    uint64
	loaded bool
}

func start(ctx context.Context, cfg config, log *slog.Logger) (_ *pipeline, err error) {
	p := &pipeline{slots: make(chan struct{}, maxInFlight), families: map[string]*family{}}
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
	if p.js, err = jetstream.New(p.nc); err != nil {
		return nil, err
	}
	setupCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if p.stream, err = p.js.CreateOrUpdateStream(setupCtx, streamConfig()); err != nil {
		return nil, fmt.Errorf("stream %s: %w", streamName, err)
	}
	for subject, handle := range map[string]func([]byte) ([]byte, error){
		prefix + ".cmd.issue":   p.issue,
		prefix + ".cmd.refresh": p.refresh,
	} {
		sub, err := p.nc.QueueSubscribe(subject, queueGroup, p.async(handle))
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
	log.Info("tokenbaseline ready", "nats", p.ns.ClientURL(), "http", p.httpLn.Addr().String(), "sync_always", cfg.syncAlways)
	return p, nil
}

// streamConfig is tokend's TOKENS configuration (events.StreamConfig with
// one replica and no size bound) under another name and subjects.
func streamConfig() jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:               streamName,
		Subjects:           []string{prefix + ".evt.*"},
		Storage:            jetstream.FileStorage,
		Replicas:           1,
		Retention:          jetstream.LimitsPolicy,
		Discard:            jetstream.DiscardNew,
		MaxBytes:           -1,
		Duplicates:         2 * time.Minute,
		AllowDirect:        true,
		AllowAtomicPublish: true,
		DenyDelete:         true,
		DenyPurge:          true,
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

// async runs each request on its own goroutine with tokend's bound on
// requests in flight: a subscription delivers one message at a time.
func (p *pipeline) async(handle func([]byte) ([]byte, error)) nats.MsgHandler {
	return func(m *nats.Msg) {
		p.slots <- struct{}{}
		p.inFlight.Add(1)
		go func() {
			defer func() { <-p.slots; p.inFlight.Done() }()
			out, err := handle(m.Data)
			if err != nil {
				p.respondError(m.Reply, err)
				return
			}
			p.nc.Publish(m.Reply, out)
		}()
	}
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

// issue starts a family: its first append expects the subject to be empty.
func (p *pipeline) issue([]byte) ([]byte, error) {
	return p.appendTo(nuid.Next(), "token.issued")
}

// refresh appends the family's next event; the presented token is not
// looked at, only family_id.
func (p *pipeline) refresh(data []byte) ([]byte, error) {
	var req struct {
		FamilyID string `json:"family_id"`
	}
	if err := json.Unmarshal(data, &req); err != nil {
		return nil, invalidRequest("malformed JSON")
	}
	if req.FamilyID == "" || strings.ContainsAny(req.FamilyID, ".*> \t\r\n") {
		return nil, invalidRequest("family_id is not a subject token")
	}
	return p.appendTo(req.FamilyID, "token.rotated")
}

// event is the stored event: tokend's envelope fields, padded to its size.
type event struct {
	ID       string    `json:"id"`
	Type     string    `json:"type"`
	Time     time.Time `json:"time"`
	FamilyID string    `json:"family_id"`
	Data     string    `json:"data"`
}

// appendTo does the one fenced append under the family's lock and returns
// the reply.
func (p *pipeline) appendTo(familyID, typ string) ([]byte, error) {
	f := p.family(familyID)
	f.Lock()
	defer f.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	subject := prefix + ".evt." + familyID
	if !f.loaded {
		// A family this process has not seen (a restart): one direct get,
		// as tokend's writer does on a cache miss.
		msg, err := p.stream.GetLastMsgForSubject(ctx, subject)
		switch {
		case errors.Is(err, jetstream.ErrMsgNotFound):
		case err != nil:
			return nil, err
		default:
			f.seq = msg.Sequence
		}
		f.loaded = true
	}
	id := nuid.Next()
	data, err := json.Marshal(event{ID: id, Type: typ, Time: time.Now().UTC(), FamilyID: familyID, Data: eventPadding})
	if err != nil {
		return nil, err
	}
	msg := nats.NewMsg(subject)
	msg.Data = data
	msg.Header.Set(jetstream.MsgIDHeader, id)
	msg.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(f.seq, 10))
	ack, err := p.js.PublishMsg(ctx, msg)
	if err != nil {
		// Whatever happened (a fence conflict, a lost ack), the next
		// request reloads the family's position.
		f.loaded = false
		return nil, err
	}
	f.seq = ack.Sequence
	return json.Marshal(struct {
		RefreshToken string `json:"refresh_token"`
		FamilyID     string `json:"family_id"`
		Seq          uint64 `json:"seq"`
	}{familyID + "." + strconv.FormatUint(ack.Sequence, 10), familyID, ack.Sequence})
}

func (p *pipeline) family(id string) *family {
	p.mu.Lock()
	defer p.mu.Unlock()
	f := p.families[id]
	if f == nil {
		f = &family{}
		p.families[id] = f
	}
	return f
}

// stop stops taking requests, waits for those in flight, then closes HTTP,
// NATS and the embedded server.
func (p *pipeline) stop() {
	for _, sub := range p.subs {
		sub.Unsubscribe()
	}
	p.inFlight.Wait()
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
