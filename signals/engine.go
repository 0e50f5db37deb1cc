package signals

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events"
)

// EngineOptions configure an Engine. JS, Mapper, Signer and Receivers are
// required; the durations default to the values of the Default
// constants when 0.
type EngineOptions struct {
	// JS reaches the TOKENS stream, whose consumers deliver.
	JS       jetstream.JetStream
	Subjects events.Subjects
	// Replicas of TOKENS_SSF_ACKS: like the stream's. (The consumers take
	// the stream's own.)
	Replicas int
	// Mapper maps the stream's messages; its Issuer is every SET's iss.
	Mapper Mapper
	// Signer signs each SET, at each delivery attempt, with the key
	// current then.
	Signer Signer
	// Receivers looks up a stream's receiver in the client registry
	// (registry.Registry.Lookup): whom it may see events of.
	Receivers func(clientID string) (domain.Client, bool)
	// HTTP sends pushes and webhooks. Default: a client that follows no
	// redirect; every request is bounded by RequestTimeout either way.
	HTTP *http.Client
	// Secrets opens a stream's delivery secrets (Store.DeliverySecrets):
	// a push's Authorization header, a webhook's signing secrets. Pushes
	// and webhooks are not delivered without it, nor while a stream's
	// secrets cannot be opened (ErrSecretLost): a SET sent without the
	// receiver's credentials, or unsigned, is one it cannot trust.
	Secrets func(Stream) (DeliverySecrets, error)
	// Metrics, if set, is told of deliveries, retries, failures, lag and
	// status.
	Metrics DeliveryMetrics
	Log     *slog.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time

	// AckWait is how long a push or webhook message may go without a
	// sign of life from the instance delivering it before another gets
	// it (the deliverer renews it while it retries).
	AckWait time.Duration
	// PollAckWait is how long a receiver has to acknowledge a polled SET
	// before it is handed out again, and the TTL of its entry in
	// TOKENS_SSF_ACKS.
	PollAckWait time.Duration
	// PinnedTTL is how long a push or webhook stream stays with the
	// instance delivering it after that instance stops pulling: how soon
	// another takes over. At least 2 s.
	PinnedTTL time.Duration
	// RequestTimeout bounds one push or webhook request.
	RequestTimeout time.Duration
	// MinBackoff and MaxBackoff bound the wait between attempts to
	// deliver one message (exponential, with jitter; a Retry-After in
	// between is honoured).
	MinBackoff, MaxBackoff time.Duration
	// LagEvery is how often the lag of every stream is measured.
	LagEvery time.Duration
}

// Defaults of EngineOptions.
const (
	DefaultAckWait        = 30 * time.Second
	DefaultPollAckWait    = 2 * time.Minute
	DefaultPinnedTTL      = 5 * time.Second
	DefaultRequestTimeout = 10 * time.Second
	DefaultMinBackoff     = time.Second
	DefaultMaxBackoff     = 5 * time.Minute
	DefaultLagEvery       = 15 * time.Second
)

// minPinnedTTL leaves room for a pull request every half of it: the
// client library pulls at most once a second.
const minPinnedTTL = 2 * time.Second

// DeliveryMetrics is told what the engine does, per stream (by stream
// id: never a client, subject or family id).
type DeliveryMetrics interface {
	// SSFDelivered counts SETs (or webhook events) a receiver accepted.
	SSFDelivered(stream string, n int)
	// SSFFailed counts SETs given up for a permanent reason.
	SSFFailed(stream string)
	// SSFRetried counts failed attempts that will be tried again.
	SSFRetried(stream string)
	// SSFLag reports the messages not yet delivered (acknowledged) and
	// the age of the oldest (0 when caught up).
	SSFLag(stream string, events uint64, age time.Duration)
	// SSFStatus reports a stream's status.
	SSFStatus(stream, status string)
	// SSFForget drops a deleted stream's series.
	SSFForget(stream string)
}

// ConsumerName returns the name of the durable consumer on TOKENS that
// delivers stream streamID.
func ConsumerName(streamID string) string { return consumerPrefix + streamID }

const consumerPrefix = "ssf_"

// pinGroup is the priority group of push and webhook consumers: the
// instance pinned to it is the one that delivers.
const pinGroup = "deliver"

// deliverWindow bounds the messages of a push or webhook stream its
// instance holds, received and not yet acknowledged: one pull brings that
// many.
const deliverWindow = 256

// pollMaxAckPending bounds the SETs of a poll stream handed out and not
// yet acknowledged: past it, polls get nothing new until receivers ack
// or AckWait hands the old ones out again.
const pollMaxAckPending = 10 * MaxPollEvents

// Engine delivers every stream's events: one per instance. It follows the
// streams through Changed (the Store's OnChange), keeps one durable
// consumer per stream on the TOKENS stream, pushes push and webhook
// streams (one instance per stream at a time, in order) and answers polls
// (Poll) from any instance.
//
// Delivery is at least once: a message is acknowledged on the stream only
// once its receiver took its SETs (or, for a reason written where it is
// decided, never will), so a crash or takeover may deliver a SET again,
// with the same jti.
type Engine struct {
	o    EngineOptions
	log  *slog.Logger
	now  func() time.Time
	http *http.Client

	mu      sync.Mutex
	runners map[string]*runner
	ctx     context.Context // set by Start; nil before
	stop    context.CancelFunc
	stopped bool
	wg      sync.WaitGroup
	// Set by Start, before ctx.
	stream jetstream.Stream
	acks   jetstream.KeyValue
}

// NewEngine returns an engine that starts delivering at Start.
func NewEngine(o EngineOptions) *Engine {
	o.AckWait = cmp.Or(o.AckWait, DefaultAckWait)
	o.PollAckWait = cmp.Or(o.PollAckWait, DefaultPollAckWait)
	o.PinnedTTL = max(cmp.Or(o.PinnedTTL, DefaultPinnedTTL), minPinnedTTL)
	o.RequestTimeout = cmp.Or(o.RequestTimeout, DefaultRequestTimeout)
	o.MinBackoff = cmp.Or(o.MinBackoff, DefaultMinBackoff)
	o.MaxBackoff = max(cmp.Or(o.MaxBackoff, DefaultMaxBackoff), o.MinBackoff)
	o.LagEvery = cmp.Or(o.LagEvery, DefaultLagEvery)
	e := &Engine{o: o, log: cmp.Or(o.Log, slog.New(slog.DiscardHandler)), now: o.Now, http: o.HTTP,
		runners: map[string]*runner{}}
	if e.now == nil {
		e.now = time.Now
	}
	if e.http == nil {
		// A redirect would carry the SET, and for push the receiver's
		// Authorization, somewhere the receiver did not register: a 3xx is
		// a failed attempt instead.
		e.http = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
	return e
}

// Changed tells the engine of a change of the streams; it never blocks.
// Give it to the Store as Options.OnChange: it may be called before
// Start (the streams present when the store opens).
func (e *Engine) Changed(c StreamChange) {
	e.mu.Lock()
	defer e.mu.Unlock()
	r, ok := e.runners[c.Stream.ID]
	if !ok {
		r = &runner{id: c.Stream.ID, wake: make(chan struct{}, 1)}
		e.runners[c.Stream.ID] = r
		if e.ctx != nil && !e.stopped {
			e.launch(r)
		}
	}
	r.set(c)
}

// Start starts delivering the streams the engine was told of, and those
// it is told of later, until Stop. ctx bounds the setting up only.
func (e *Engine) Start(ctx context.Context) error {
	stream, err := e.o.JS.Stream(ctx, events.StreamName)
	if err != nil {
		return fmt.Errorf("ssf delivery: stream %s: %w", events.StreamName, err)
	}
	acks, err := e.o.JS.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      AcksBucket,
		Description: "tokend SSF: the ack subject of each polled SET not yet acknowledged, by stream id and jti",
		TTL:         e.o.PollAckWait,
		Storage:     jetstream.FileStorage,
		Replicas:    e.o.Replicas,
	})
	if err != nil {
		return fmt.Errorf("ssf delivery: kv %s: %w", AcksBucket, err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.stopped || e.ctx != nil {
		return errors.New("ssf delivery: started twice, or after Stop")
	}
	e.stream, e.acks = stream, acks
	run, stop := context.WithCancel(context.Background())
	e.ctx, e.stop = run, stop
	for _, r := range e.runners {
		e.launch(r)
	}
	e.wg.Go(func() { e.reapOrphans(run) })
	if e.o.Metrics != nil {
		e.wg.Go(func() { e.measureLag(run) })
	}
	return nil
}

// Stop stops delivering: the messages in flight are handed back, so
// another instance takes them over at once. It waits for the deliveries
// to end (a request in flight is cancelled).
func (e *Engine) Stop() {
	e.mu.Lock()
	e.stopped = true
	stop := e.stop
	e.mu.Unlock()
	if stop != nil {
		stop()
	}
	e.wg.Wait()
}

// started returns what Start set up, ok false before Start.
func (e *Engine) started() (stream jetstream.Stream, acks jetstream.KeyValue, ok bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.stream, e.acks, e.ctx != nil
}

// launch runs r's loop; e.mu is held.
func (e *Engine) launch(r *runner) {
	ctx := e.ctx
	e.wg.Go(func() { e.run(ctx, r) })
}

// runner serves one stream on this instance: it keeps the stream's
// consumer as the stream's configuration says, and delivers a push or
// webhook stream. Changed updates it; its goroutine does the work.
type runner struct {
	id   string
	wake chan struct{} // a change came (capacity 1)

	mu          sync.Mutex
	stream      Stream
	deleted     bool
	restartFrom time.Time // the stream left disabled then: its consumer starts there
}

func (r *runner) set(c StreamChange) {
	r.mu.Lock()
	r.stream, r.deleted = c.Stream, r.deleted || c.Deleted
	if c.Previous != nil && (StatusChange{From: c.Previous.Status, To: c.Stream.Status}).RestartsConsumer() && r.restartFrom.IsZero() {
		// SSF 1.0 section 8.1.2: a disabled stream holds nothing, so once
		// enabled again it starts from the change, not where it stopped.
		r.restartFrom = c.Stream.UpdatedAt
	}
	r.mu.Unlock()
	r.notify()
}

func (r *runner) notify() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

func (r *runner) current() (st Stream, deleted bool, restartFrom time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stream, r.deleted, r.restartFrom
}

// restarted forgets restartFrom once the consumer starts there.
func (r *runner) restarted(from time.Time) {
	r.mu.Lock()
	if r.restartFrom.Equal(from) {
		r.restartFrom = time.Time{}
	}
	r.mu.Unlock()
}

// await waits for a change, or the end of ctx.
func (r *runner) await(ctx context.Context) error {
	select {
	case <-r.wake:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Bounds of the wait after a failure to set up a stream's consumer (the
// JetStream unreachable, say).
const (
	minSetupRetry = time.Second
	maxSetupRetry = 30 * time.Second
)

// run serves r until its stream is deleted (and its consumer with it) or
// ctx ends.
func (e *Engine) run(ctx context.Context, r *runner) {
	wait := minSetupRetry
	for ctx.Err() == nil {
		done, err := e.step(ctx, r)
		if done {
			return
		}
		if err == nil || ctx.Err() != nil {
			wait = minSetupRetry
			continue
		}
		e.log.Warn("SSF stream not served, retrying", "stream", r.id, "retry_in", wait, "err", err)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
		case <-r.wake:
		case <-t.C:
		}
		t.Stop()
		wait = min(2*wait, maxSetupRetry)
	}
}

// step brings r's stream's consumer to what its configuration says and
// serves it until the configuration changes in a way that matters here.
func (e *Engine) step(ctx context.Context, r *runner) (done bool, err error) {
	st, deleted, restartFrom := r.current()
	if deleted {
		if err := e.deleteConsumer(ctx, r.id); err != nil {
			return false, err
		}
		e.forget(r)
		return true, nil
	}
	if m := e.o.Metrics; m != nil {
		m.SSFStatus(st.ID, string(st.Status))
	}
	if st.Status == StatusDisabled {
		// SSF 1.0 section 8.1.2: nothing is held for a disabled stream.
		if err := e.deleteConsumer(ctx, st.ID); err != nil {
			return false, err
		}
		return false, r.await(ctx)
	}
	cons, err := e.ensureConsumer(ctx, st, restartFrom)
	if err != nil {
		return false, err
	}
	r.restarted(restartFrom)
	if !pushed(st) {
		return false, r.await(ctx) // polls are answered by Poll
	}
	err = e.deliver(ctx, r, cons, st)
	if errors.Is(err, errHeld) {
		return false, r.await(ctx)
	}
	return false, err
}

// forget drops r once its stream is deleted.
func (e *Engine) forget(r *runner) {
	e.mu.Lock()
	if e.runners[r.id] == r {
		delete(e.runners, r.id)
	}
	e.mu.Unlock()
	if m := e.o.Metrics; m != nil {
		m.SSFForget(r.id)
	}
}

// pushed reports whether st's events are sent by tokend (push, webhook)
// rather than polled.
func pushed(st Stream) bool {
	return st.Delivery.Method == DeliveryPush || st.Delivery.Method == DeliveryWebhook
}

// filterSubjects are the subjects of the TOKENS stream that stream
// streamID's consumer reads: every family and deployment event, and the
// events addressed to this stream.
func (e *Engine) filterSubjects(streamID string) []string {
	return []string{e.o.Subjects.Events(), e.o.Subjects.AllOps(), e.o.Subjects.SSF(streamID)}
}

// consumerConfig is the configuration of st's consumer, without its start.
func (e *Engine) consumerConfig(st Stream) jetstream.ConsumerConfig {
	c := jetstream.ConsumerConfig{
		Durable:        ConsumerName(st.ID),
		Description:    "tokend SSF delivery of one stream",
		DeliverPolicy:  jetstream.DeliverByStartTimePolicy,
		AckPolicy:      jetstream.AckExplicitPolicy,
		FilterSubjects: e.filterSubjects(st.ID),
		MaxDeliver:     -1,
		// Replicas 0: the stream's.
	}
	if pushed(st) {
		// By one instance at a time, which delivers them one at a time:
		// in order (design item 7); another instance takes over when the
		// pinned one stops pulling for PinnedTTL. It holds a window of
		// messages rather than one, since most (rotations) carry nothing
		// for the stream: a round trip per message would leave delivery
		// behind the rotations it follows.
		c.AckWait, c.MaxAckPending = e.o.AckWait, deliverWindow
		c.PriorityGroups, c.PriorityPolicy, c.PinnedTTL = []string{pinGroup}, jetstream.PriorityPolicyPinned, e.o.PinnedTTL
	} else {
		c.AckWait, c.MaxAckPending = e.o.PollAckWait, pollMaxAckPending
	}
	return c
}

// sameDelivery reports whether the changeable settings of have are
// want's.
func sameDelivery(have, want jetstream.ConsumerConfig) bool {
	return have.AckWait == want.AckWait && have.MaxAckPending == want.MaxAckPending && have.MaxDeliver == want.MaxDeliver &&
		have.PriorityPolicy == want.PriorityPolicy && have.PinnedTTL == want.PinnedTTL &&
		slices.Equal(have.PriorityGroups, want.PriorityGroups) && slices.Equal(have.FilterSubjects, want.FilterSubjects)
}

// ensureConsumer returns st's consumer, creating it (from the stream's
// creation, or from restartFrom when the stream was enabled again after
// being disabled) or bringing its settings to st's delivery method. Any
// instance may; the same stream gives every instance the same
// configuration.
func (e *Engine) ensureConsumer(ctx context.Context, st Stream, restartFrom time.Time) (jetstream.Consumer, error) {
	stream, _, ok := e.started()
	if !ok {
		return nil, errNotStarted
	}
	want := e.consumerConfig(st)
	c, err := stream.Consumer(ctx, want.Durable)
	if err == nil && !restartFrom.IsZero() {
		if at := c.CachedInfo().Config.OptStartTime; at == nil || !at.Equal(restartFrom) {
			// It predates the stream's disabling, which this instance saw
			// only in passing: what it holds since is not the stream's.
			if err := e.deleteConsumer(ctx, st.ID); err != nil {
				return nil, err
			}
			err = jetstream.ErrConsumerNotFound
		}
	}
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		start := st.CreatedAt
		if !restartFrom.IsZero() {
			start = restartFrom
		}
		create := want
		create.OptStartTime = &start
		c, err = stream.CreateConsumer(ctx, create)
		if errors.Is(err, jetstream.ErrConsumerExists) {
			c, err = stream.Consumer(ctx, want.Durable) // another instance was first
		}
	}
	if err != nil {
		return nil, err
	}
	have := c.CachedInfo().Config
	if sameDelivery(have, want) {
		return c, nil
	}
	update := have
	update.AckWait, update.MaxAckPending, update.MaxDeliver = want.AckWait, want.MaxAckPending, want.MaxDeliver
	update.PriorityGroups, update.PriorityPolicy, update.PinnedTTL = want.PriorityGroups, want.PriorityPolicy, want.PinnedTTL
	update.FilterSubjects, update.FilterSubject = want.FilterSubjects, ""
	return stream.UpdateConsumer(ctx, update)
}

func (e *Engine) deleteConsumer(ctx context.Context, streamID string) error {
	stream, _, ok := e.started()
	if !ok {
		return errNotStarted
	}
	err := stream.DeleteConsumer(ctx, ConsumerName(streamID))
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return nil
	}
	return err
}

var errNotStarted = errors.New("ssf delivery has not started")

// reapOrphans deletes the consumers of streams deleted while no instance
// ran. A consumer whose stream this instance does not know is deleted
// only if the bucket confirms the stream is gone: a stream created on
// another instance a moment ago may not have reached this one yet.
func (e *Engine) reapOrphans(ctx context.Context) {
	stream, _, _ := e.started()
	kv, err := e.o.JS.KeyValue(ctx, Bucket)
	if err != nil {
		e.log.Warn("SSF: cannot read the streams to delete the consumers of deleted ones", "err", err)
		return
	}
	names := stream.ConsumerNames(ctx)
	var orphans []string
	for name := range names.Name() {
		id, ok := strings.CutPrefix(name, consumerPrefix)
		if !ok {
			continue
		}
		e.mu.Lock()
		_, known := e.runners[id]
		e.mu.Unlock()
		if known {
			continue
		}
		if _, err := kv.Get(ctx, id); errors.Is(err, jetstream.ErrKeyNotFound) {
			orphans = append(orphans, id)
		}
	}
	if err := names.Err(); err != nil && ctx.Err() == nil {
		e.log.Warn("SSF: cannot list the consumers to delete those of deleted streams", "err", err)
	}
	for _, id := range orphans {
		if err := e.deleteConsumer(ctx, id); err != nil && ctx.Err() == nil {
			e.log.Warn("SSF: consumer of a deleted stream not deleted", "stream", id, "err", err)
			continue
		}
		e.log.Info("SSF: consumer of a deleted stream deleted", "stream", id)
	}
}
