package signals

import (
	"context"
	"log/slog"
	"net/http"
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
	// Replicas of the consumers and of TOKENS_SSF_ACKS: like the stream's.
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
	// Authorization returns the Authorization header a push stream's
	// receiver asked for (authorization_header). Default: as stored in
	// the stream.
	Authorization func(Stream) (string, error)
	// Secret returns a webhook's signing secret (whsec_…). Webhooks are
	// not delivered without it.
	Secret func(Stream) (string, error)
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
	// before it is handed out again (RFC 8936 section 2.4), and the TTL
	// of its entry in TOKENS_SSF_ACKS.
	PollAckWait time.Duration
	// PinnedTTL is how long a push or webhook stream stays with the
	// instance delivering it after that instance stops pulling: how soon
	// another takes over.
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

// Engine delivers every stream's events: one per instance. It follows the
// streams through Changed (the Store's OnChange), keeps one durable
// consumer per stream on the TOKENS stream, pushes push and webhook
// streams (one instance per stream at a time) and answers polls (Poll).
type Engine struct {
	o EngineOptions
}

// NewEngine returns an engine that starts delivering at Start.
func NewEngine(o EngineOptions) *Engine { return &Engine{o: o} }

// Changed tells the engine of a change of the streams; it never blocks.
// Give it to the Store as Options.OnChange: it may be called before
// Start (the streams present when the store opens).
func (e *Engine) Changed(c StreamChange) {}

// Start starts delivering the streams the engine was told of, and those
// it is told of later, until Stop.
func (e *Engine) Start(ctx context.Context) error { return nil }

// Stop stops delivering: the messages in flight are handed back, so
// another instance takes them over at once.
func (e *Engine) Stop() {}

// PollRequest is an RFC 8936 poll (section 2.2).
type PollRequest struct {
	// MaxEvents is the most SETs to return; 0 returns none (only
	// acknowledges). Absent: DefaultPollEvents; at most MaxPollEvents.
	MaxEvents *int `json:"maxEvents,omitempty"`
	// ReturnImmediately asks for an answer at once, even without SETs;
	// otherwise the poll waits for SETs until its context ends.
	ReturnImmediately bool `json:"returnImmediately,omitempty"`
	// Ack holds the jti of SETs the receiver took.
	Ack []string `json:"ack,omitempty"`
	// SetErrs holds the jti of SETs the receiver could not take, with why.
	SetErrs map[string]SetErr `json:"setErrs,omitempty"`
}

// SetErr is why a receiver could not take a SET (RFC 8936 section 2.2;
// err is one of RFC 8935 section 2.4's codes).
type SetErr struct {
	Err         string `json:"err"`
	Description string `json:"description"`
}

// PollResponse answers a poll (RFC 8936 section 2.3): SETs by jti.
type PollResponse struct {
	Sets          map[string]string `json:"sets"`
	MoreAvailable bool              `json:"moreAvailable,omitempty"`
}

// Poll limits.
const (
	DefaultPollEvents = 50
	MaxPollEvents     = 100
)

// Poll answers an RFC 8936 poll of s, already authorized by the caller.
func (e *Engine) Poll(ctx context.Context, s Stream, req PollRequest) (PollResponse, error) {
	return PollResponse{}, &domain.Error{Code: domain.EUnavailable, Message: "delivery is starting, retry", RetryAfterMs: 1000}
}
