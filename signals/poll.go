package signals

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokend/tokend/domain"
)

// AcksBucket is the KV bucket in which each polled SET not yet
// acknowledged leads, by stream id and jti, to its message's ack subject:
// a receiver may acknowledge on any instance what another handed out.
// Entries live as long as the consumer waits for the acknowledgement
// (EngineOptions.PollAckWait); after that the SET is handed out again.
const AcksBucket = "TOKENS_SSF_ACKS"

// ErrStreamDisabled: a disabled stream was polled. It holds nothing
// (SSF 1.0 section 8.1.2), and answering "no SETs" would hide that from
// a receiver that did not disable it itself.
var ErrStreamDisabled = errors.New("the stream is disabled")

// PollRequest is an RFC 8936 poll (section 2.2).
type PollRequest struct {
	// MaxEvents is the most SETs to return; 0 returns none (the poll only
	// acknowledges). Absent: DefaultPollEvents; more than MaxPollEvents
	// is read as MaxPollEvents.
	MaxEvents *int `json:"maxEvents,omitempty"`
	// ReturnImmediately asks for an answer at once, even without SETs;
	// otherwise the poll waits for SETs until its context (nearly) ends,
	// at most maxPollWait (a long poll).
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
	// DefaultPollEvents is how many SETs a poll without maxEvents gets
	// at most (RFC 8936 section 2.2 lets the transmitter choose).
	DefaultPollEvents = 50
	// MaxPollEvents bounds maxEvents.
	MaxPollEvents = 100
	// MaxPollAcks bounds ack and setErrs together in one poll.
	MaxPollAcks = 1000
)

// maxPollWait bounds a long poll: a receiver learns at least this often
// that the transmitter is alive.
const maxPollWait = 30 * time.Second

// ackConcurrency bounds the acknowledgements of one poll in flight.
const ackConcurrency = 8

// ackTimeout bounds the server's confirmation of one acknowledgement.
const ackTimeout = 2 * time.Second

// pendingAck is an entry of AcksBucket.
type pendingAck struct {
	// Reply is the ack subject of the message the SET was made from, as
	// last handed out.
	Reply string `json:"reply"`
	// Siblings are the jti of the other SETs made from the same message:
	// it is acknowledged once all of them are.
	Siblings []string `json:"siblings,omitempty"`
}

func ackKey(streamID, jti string) string { return streamID + "." + jti }

// Poll answers an RFC 8936 poll of s, already authorized by the caller
// (s is the stream as the caller just read it). It first acknowledges the
// SETs in req.Ack and req.SetErrs (section 2.4.3: those in SetErrs are
// given up, counted as failed and logged: redelivering what the receiver
// cannot process would only fail again), then returns up to maxEvents
// SETs, each signed now. A SET not acknowledged within PollAckWait is
// handed out again, by any instance, with the same jti.
//
// A paused stream returns the SETs up to its pause point (pausePoint),
// then none: its events are held. Errors: invalid_request for a stream
// that is not polled, a disabled stream (with ErrStreamDisabled) or a
// request out of bounds; temporarily_unavailable when the JetStream
// cannot be reached (nothing is lost: SETs handed out and not received
// come back after PollAckWait).
func (e *Engine) Poll(ctx context.Context, s Stream, req PollRequest) (PollResponse, error) {
	out := PollResponse{Sets: map[string]string{}}
	switch {
	case s.Delivery.Method != DeliveryPoll:
		return out, domain.Errorf(domain.EInvalidRequest, "this stream is not polled: its delivery method is %s", s.Delivery.Method)
	case s.Status == StatusDisabled:
		return out, fmt.Errorf("%w: %w", domain.Errorf(domain.EInvalidRequest,
			"the stream is disabled: nothing is sent or held for it until it is enabled (SSF 1.0 section 8.1.2)"), ErrStreamDisabled)
	case req.MaxEvents != nil && *req.MaxEvents < 0:
		return out, domain.Errorf(domain.EInvalidRequest, "maxEvents is 0 or more")
	case len(req.Ack)+len(req.SetErrs) > MaxPollAcks:
		return out, domain.Errorf(domain.EInvalidRequest, "a poll acknowledges at most %d SETs", MaxPollAcks)
	}
	stream, acks, ok := e.started()
	if !ok {
		return out, unavailable("poll", errNotStarted)
	}
	if err := e.acknowledge(ctx, s, acks, req); err != nil {
		return out, unavailable("acknowledge the SETs", err)
	}
	want := DefaultPollEvents
	if req.MaxEvents != nil {
		want = min(*req.MaxEvents, MaxPollEvents)
	}
	if want == 0 {
		return out, nil
	}
	deadline := pollDeadline(ctx, time.Now(), req.ReturnImmediately)
	cons, err := e.awaitConsumer(ctx, stream, s.ID)
	if err != nil {
		return out, unavailable("poll", err)
	}
	p := poll{e: e, s: s, acks: acks, holdAfter: math.MaxUint64, sets: out.Sets}
	if s.Status == StatusPaused {
		point, err := e.pausePoint(ctx, s.ID)
		if err != nil {
			return out, unavailable("poll", err)
		}
		if point <= cons.CachedInfo().AckFloor.Stream {
			waitUntil(ctx, deadline) // a long poll: nothing will come
			return out, nil
		}
		p.holdAfter = point
	}
	for len(out.Sets) < want && !p.held {
		n := want - len(out.Sets)
		batch, err := cons.FetchNoWait(n)
		if err != nil {
			return out, unavailable("poll", err)
		}
		got := 0
		for m := range batch.Messages() {
			got++
			p.take(ctx, m)
		}
		if p.err != nil {
			return out, unavailable("poll", p.err)
		}
		if got == n {
			continue // a full batch: there may be more
		}
		wait := time.Until(deadline)
		if len(out.Sets) > 0 || p.held || wait < 100*time.Millisecond {
			break
		}
		// Bounded by ctx too: a poll whose caller went stops waiting.
		waitCtx, cancel := context.WithDeadline(ctx, deadline)
		m, err := cons.Next(jetstream.FetchContext(waitCtx))
		cancel()
		if errors.Is(err, nats.ErrTimeout) || errors.Is(err, context.DeadlineExceeded) {
			break
		}
		if err != nil {
			return out, unavailable("poll", err)
		}
		p.take(ctx, m)
		if p.err != nil {
			return out, unavailable("poll", p.err)
		}
	}
	if len(out.Sets) == want && !p.held {
		if info, err := cons.Info(ctx); err == nil {
			out.MoreAvailable = info.NumPending > 0
		}
	}
	return out, nil
}

// consumerWait bounds how long a poll waits for its stream's consumer to
// be created.
const consumerWait = 2 * time.Second

// awaitConsumer returns stream streamID's consumer, waiting a moment for
// it to be created. Creating it (from when, for which method) is the
// runners' to decide: a poll of a stream created a moment ago, or one
// this instance has not seen yet, waits for them rather than create it.
func (e *Engine) awaitConsumer(ctx context.Context, stream jetstream.Stream, streamID string) (jetstream.Consumer, error) {
	ctx, cancel := context.WithTimeout(ctx, consumerWait)
	defer cancel()
	for {
		c, err := stream.Consumer(ctx, ConsumerName(streamID))
		if !errors.Is(err, jetstream.ErrConsumerNotFound) {
			return c, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// pollDeadline is when a poll stops waiting for SETs: at once, or a
// little before ctx ends (to answer with what it has), at most
// maxPollWait from now.
func pollDeadline(ctx context.Context, now time.Time, immediately bool) time.Time {
	if immediately {
		return now
	}
	end := now.Add(maxPollWait)
	if d, ok := ctx.Deadline(); ok {
		if d = d.Add(-min(time.Second, d.Sub(now)/10)); d.Before(end) {
			end = d
		}
	}
	return end
}

func waitUntil(ctx context.Context, t time.Time) {
	timer := time.NewTimer(time.Until(t))
	defer timer.Stop()
	select {
	case <-ctx.Done():
	case <-timer.C:
	}
}

// poll collects the SETs of one Poll.
type poll struct {
	e         *Engine
	s         Stream
	acks      jetstream.KeyValue
	holdAfter uint64
	sets      map[string]string
	held      bool  // reached the events a paused stream holds
	err       error // the first failure; later messages are handed back
}

// take turns a fetched message into SETs for the poll, or acknowledges
// it if it has none for this stream. A message it cannot serve goes back
// to the stream at once (Nak), for the next poll.
func (p *poll) take(ctx context.Context, m jetstream.Msg) {
	if p.err != nil || p.held {
		m.Nak()
		return
	}
	md, err := m.Metadata()
	if err != nil {
		p.err = err
		m.Nak()
		return
	}
	if md.Sequence.Stream > p.holdAfter {
		p.held = true
		m.Nak()
		return
	}
	// The pause's announcement is the last message a paused stream hands
	// out.
	p.held = md.Sequence.Stream == p.holdAfter
	sigs, err := p.e.signalsFor(ctx, p.s, m.Subject(), m.Data())
	switch {
	case err != nil && !unusable(err):
		p.err = err
		m.Nak()
		return
	case err != nil:
		p.e.log.Error("SSF: message unusable, skipped", "stream", p.s.ID, "seq", md.Sequence.Stream, "err", err)
	}
	if len(sigs) == 0 {
		// Nothing for this stream; a lost acknowledgement only brings it
		// back to be skipped again.
		m.Ack()
		return
	}
	now := p.e.now()
	sets := make(map[string]string, len(sigs))
	for _, sig := range sigs {
		claims := sig.Claims(p.e.o.Mapper.Issuer, p.s, now)
		set, err := EncodeSET(p.e.o.Signer, claims)
		if err != nil {
			p.err = err
			m.Nak()
			return
		}
		sets[claims.ID] = set
	}
	for jti := range sets {
		entry := pendingAck{Reply: m.Reply()}
		for sib := range sets {
			if sib != jti {
				entry.Siblings = append(entry.Siblings, sib)
			}
		}
		data, _ := json.Marshal(entry)
		// Put, not Create: a SET handed out again has a new ack subject.
		if _, err := p.acks.Put(ctx, ackKey(p.s.ID, jti), data); err != nil {
			p.err = err
			m.Nak()
			return
		}
	}
	for jti, set := range sets {
		p.sets[jti] = set
	}
}

// acknowledge acknowledges the SETs a poll names in ack and setErrs, a
// few at a time. A jti that names no SET of s handed out and not yet
// acknowledged is ignored: acknowledged already, or not tokend's.
func (e *Engine) acknowledge(ctx context.Context, s Stream, acks jetstream.KeyValue, req PollRequest) error {
	type item struct {
		jti    string
		setErr *SetErr
	}
	items := make([]item, 0, len(req.Ack)+len(req.SetErrs))
	for _, jti := range req.Ack {
		items = append(items, item{jti: jti})
	}
	for jti, se := range req.SetErrs {
		items = append(items, item{jti: jti, setErr: &se})
	}
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
		slots    = make(chan struct{}, ackConcurrency)
	)
	for _, it := range items {
		slots <- struct{}{}
		wg.Go(func() {
			defer func() { <-slots }()
			if err := e.ackSET(ctx, s, acks, it.jti, it.setErr); err != nil {
				mu.Lock()
				if firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return firstErr
}

// ackSET acknowledges one polled SET: its entry goes, and its message is
// acknowledged on the stream once no other SET made from it waits.
func (e *Engine) ackSET(ctx context.Context, s Stream, acks jetstream.KeyValue, jti string, setErr *SetErr) error {
	if !validStreamID(jti) { // tokend's jti have the shape of its stream ids
		return nil
	}
	key := ackKey(s.ID, jti)
	entry, err := acks.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	var p pendingAck
	if err := json.Unmarshal(entry.Value(), &p); err != nil || p.Reply == "" {
		e.log.Error("SSF: unusable entry in "+AcksBucket+", dropped", "stream", s.ID, "jti", jti)
		return acks.Delete(ctx, key)
	}
	if err := acks.Delete(ctx, key); err != nil {
		return err
	}
	if setErr != nil {
		if m := e.o.Metrics; m != nil {
			m.SSFFailed(s.ID)
		}
		e.log.Warn("SSF: the receiver could not process a polled SET; it is not sent again", "stream", s.ID, "jti", jti,
			"err_code", printable(setErr.Err, 64), "description", printable(setErr.Description, 256))
	} else if m := e.o.Metrics; m != nil {
		m.SSFDelivered(s.ID, 1)
	}
	for _, sib := range p.Siblings {
		if _, err := acks.Get(ctx, ackKey(s.ID, sib)); err == nil {
			return nil // the message waits for its other SETs
		}
	}
	if _, err := e.o.JS.Conn().Request(p.Reply, []byte("+ACK"), ackTimeout); err != nil {
		// The SET may come again after PollAckWait, with the same jti.
		e.log.Warn("SSF: acknowledgement of a polled SET not confirmed; it may be sent again", "stream", s.ID, "jti", jti, "err", err)
	}
	return nil
}
