package signals

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokend/tokend/events"
	"github.com/tokend/tokend/pii"
)

// errHeld ends a delivery that reached the events a paused stream holds.
var errHeld = errors.New("the stream is paused")

// errRestart ends a delivery whose stream changed status or delivery
// method, so the runner sets it up again.
var errRestart = errors.New("the stream changed")

// deliver pushes st's events (push or webhook) from cons, one message at
// a time, in the stream's order, for as long as this instance is pinned
// to it, until st changes status or method, or ctx ends. Every instance
// runs it for every push stream: the others' pulls wait for the pinned
// one to stop. Messages arrive a window at a time (deliverWindow) and wait
// in a queue, kept alive there while the one ahead is retried.
//
// A paused stream delivers up to its pause point (pausePoint), then holds.
func (e *Engine) deliver(ctx context.Context, r *runner, cons jetstream.Consumer, st Stream) error {
	holdAfter := uint64(math.MaxUint64)
	if st.Status == StatusPaused {
		p, err := e.pausePoint(ctx, st.ID)
		if err != nil {
			return err
		}
		if p <= cons.CachedInfo().AckFloor.Stream {
			return errHeld
		}
		holdAfter = p
	}
	q := newMsgQueue()
	ended := make(chan error, 1)
	cc, err := cons.Consume(q.push,
		jetstream.PullPriorityGroup(pinGroup),
		jetstream.PullMaxMessages(deliverWindow),
		// Pulls keep the pin: the server unpins an instance whose last
		// pull is PinnedTTL old.
		jetstream.PullExpiry(max(time.Second, e.o.PinnedTTL/2)),
		jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
			if errors.Is(err, jetstream.ErrConsumerDeleted) || errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrBadRequest) {
				select {
				case ended <- err:
				default:
				}
			}
		}))
	if err != nil {
		return err
	}
	stopKeepingAlive := e.keepQueueAlive(q)
	var (
		pin string
		// unfinished is the message taken from q and not acknowledged.
		unfinished jetstream.Msg
	)
	defer func() {
		cc.Stop()
		select { // no handler runs once it is closed
		case <-cc.Closed():
		case <-time.After(5 * time.Second):
		}
		stopKeepingAlive()
		// Back to the stream at once, for whoever delivers next, in order:
		// the server hands out what comes back in the order it came back.
		// Not before the consumption stopped, or the first would come back
		// here, behind the others.
		if unfinished != nil {
			unfinished.Nak()
		}
		q.close()
		e.unpin(st.ID, pin)
	}()
	// next waits until messages arrive or tick fires (ticked), or delivery
	// must end (stop, with err).
	next := func(tick <-chan time.Time) (ticked, stop bool, err error) {
		select {
		case <-ctx.Done():
			return false, true, ctx.Err()
		case err := <-ended:
			return false, true, err
		case <-r.wake:
			// Any other change (endpoint, authorization, events) takes
			// effect at the next attempt.
			return false, changedCourse(r, st), nil
		case <-tick:
			return true, false, nil
		case <-q.ready:
			return false, false, nil
		}
	}
	// Messages handed out before and not acknowledged (by this instance's
	// previous round, or by one that stopped or crashed) come back first,
	// in no order: let them gather, so that they go out in the stream's.
	// Handed back, they come at once; those of a crashed instance after
	// AckWait. The count is read again as the wait goes on, since the
	// first may include acknowledgements not yet counted.
	if owed := cons.CachedInfo().NumAckPending; owed > 0 {
		giveUpAt := time.Now().Add(e.o.AckWait + e.o.PinnedTTL)
		recount := time.NewTicker(250 * time.Millisecond)
		defer recount.Stop()
		for q.len() < owed {
			ticked, stop, err := next(recount.C)
			switch {
			case stop:
				return err
			case !ticked:
			case time.Now().After(giveUpAt):
				owed = 0
			default:
				if info, err := cons.Info(ctx); err == nil {
					owed = info.NumAckPending
				}
			}
		}
	}
	for {
		for m := q.pop(); m != nil; m = q.pop() {
			pin = cmp.Or(m.Headers().Get(pinIDHeader), pin)
			unfinished = m
			if changedCourse(r, st) {
				return nil
			}
			md, err := m.Metadata()
			if err != nil {
				return err
			}
			acked, err := e.handle(ctx, r, m, md.Sequence.Stream, st, holdAfter)
			if acked {
				unfinished = nil
			}
			if err != nil {
				if errors.Is(err, errRestart) {
					return nil
				}
				return err
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
		}
		if _, stop, err := next(nil); stop {
			return err
		}
	}
}

// msgQueue holds the messages a consumer handed to this instance, in the
// order of the stream, until they are handled. Messages come in that
// order, except those handed back (Nak) or not acknowledged in time: the
// server hands those out again in no order it promises, ahead of new ones.
type msgQueue struct {
	mu     sync.Mutex
	msgs   []queued // by stream sequence
	closed bool
	// ready has a value when messages arrived since it was last read.
	ready chan struct{}
}

type queued struct {
	seq uint64 // in the stream; 0 if its metadata is unreadable
	m   jetstream.Msg
}

func newMsgQueue() *msgQueue { return &msgQueue{ready: make(chan struct{}, 1)} }

// push takes a message from the consumer; once the queue is closed it
// goes back to the stream.
func (q *msgQueue) push(m jetstream.Msg) {
	var seq uint64
	if md, err := m.Metadata(); err == nil {
		seq = md.Sequence.Stream
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		m.Nak()
		return
	}
	i, _ := slices.BinarySearchFunc(q.msgs, seq, func(e queued, seq uint64) int { return cmp.Compare(e.seq, seq) })
	q.msgs = slices.Insert(q.msgs, i, queued{seq, m})
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

// pop returns the message first in the stream, nil if there is none.
func (q *msgQueue) pop() jetstream.Msg {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.msgs) == 0 {
		return nil
	}
	m := q.msgs[0].m
	q.msgs[0] = queued{}
	q.msgs = q.msgs[1:]
	return m
}

// len returns how many messages are queued.
func (q *msgQueue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.msgs)
}

// each calls f with every queued message.
func (q *msgQueue) each(f func(jetstream.Msg)) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, e := range q.msgs {
		f(e.m)
	}
}

// close hands every queued message, and any that still arrives, back to
// the stream.
func (q *msgQueue) close() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.closed = true
	for _, e := range q.msgs {
		e.m.Nak()
	}
	q.msgs = nil
}

// changedCourse reports whether r's stream is no longer delivered as st
// was: deleted, or another status or delivery method.
func changedCourse(r *runner, st Stream) bool {
	cur, deleted, _ := r.current()
	return deleted || cur.Status != st.Status || cur.Delivery.Method != st.Delivery.Method
}

// pinIDHeader names the pin a message of a pinned consumer was
// delivered under: this instance's, while it delivers.
const pinIDHeader = "Nats-Pin-Id"

// unpin hands the stream over at once, if this instance still holds it,
// rather than after PinnedTTL.
func (e *Engine) unpin(streamID, pin string) {
	if pin == "" {
		return
	}
	stream, _, _ := e.started()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	c, err := stream.Consumer(ctx, ConsumerName(streamID))
	if err != nil {
		return
	}
	for _, g := range c.CachedInfo().PriorityGroups {
		if g.Group == pinGroup && g.PinnedClientID == pin {
			stream.UnpinConsumer(ctx, ConsumerName(streamID), pinGroup)
		}
	}
}

// handle delivers message m, stream sequence seq, of st: its signals
// that st's receiver may see, one at a time, each until the receiver takes
// it or refuses it for good; then acknowledges the message, and says so.
// A message past holdAfter is left alone (errHeld). One it did not
// acknowledge goes back to the stream with the rest of the queue, in order
// (deliver).
func (e *Engine) handle(ctx context.Context, r *runner, m jetstream.Msg, seq uint64, st Stream, holdAfter uint64) (acked bool, _ error) {
	if seq > holdAfter {
		return false, errHeld
	}
	sigs, err := e.signalsFor(ctx, st, m.Subject(), m.Data())
	switch {
	case err != nil && !unusable(err):
		return false, err // the subject keys' bucket unreachable: later
	case err != nil:
		// Only tokend publishes on these subjects; what it cannot read now
		// it never will, and it must not stop the stream.
		e.log.Error("SSF: message unusable, skipped", "stream", st.ID, "seq", seq, "err", err)
	}
	if len(sigs) == 0 {
		// Nothing for this stream; a lost acknowledgement only brings the
		// message back, to be skipped again.
		m.Ack()
		if seq == holdAfter {
			return true, errHeld
		}
		return true, nil
	}
	stop := e.keepAlive(m)
	defer stop()
	for _, sig := range sigs {
		if err := e.send(ctx, r, st, sig); err != nil {
			return false, err
		}
	}
	e.ack(ctx, m, st.ID)
	if seq == holdAfter {
		return true, errHeld // the pause's announcement went out: the rest is held
	}
	return true, nil
}

// ack acknowledges m and waits for the server to confirm, so the next
// message is the next one; a lost acknowledgement only delivers m again.
func (e *Engine) ack(ctx context.Context, m jetstream.Msg, streamID string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := m.DoubleAck(ctx); err != nil {
		e.log.Warn("SSF: acknowledgement of a delivered message not confirmed; it may be delivered again", "stream", streamID, "err", err)
	}
}

// keepQueueAlive tells the server, until stopped, that the messages
// waiting in q are still this instance's, so that while one ahead of them
// is retried for longer than AckWait they are not handed out again.
func (e *Engine) keepQueueAlive(q *msgQueue) (stop func()) {
	return e.every(e.o.AckWait/3, func() { q.each(func(m jetstream.Msg) { m.InProgress() }) })
}

// keepAlive tells the server, while a message is being delivered (and
// retried), that this instance is still at it, so it is not handed to
// another after AckWait.
func (e *Engine) keepAlive(m jetstream.Msg) (stop func()) {
	return e.every(e.o.AckWait/3, func() { m.InProgress() })
}

// every calls f every period until stopped; stop returns once f has run
// its last.
func (e *Engine) every(period time.Duration, f func()) (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(period)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				f()
			}
		}
	}()
	return func() { close(done); <-finished }
}

// unusable reports whether err, from signalsFor, means that the message
// can never be mapped, rather than that it cannot be now.
func unusable(err error) bool {
	return errors.Is(err, events.ErrMalformedEvent) || errors.Is(err, pii.ErrOpen) || errors.Is(err, events.ErrSealedWithoutKey)
}

// signalsFor maps a message of the TOKENS stream to the signals stream
// st delivers.
func (e *Engine) signalsFor(ctx context.Context, st Stream, subject string, data []byte) ([]Signal, error) {
	sigs, err := e.o.Mapper.Message(ctx, e.o.Subjects, subject, data)
	if err != nil {
		return nil, err
	}
	out := sigs[:0]
	for _, sig := range sigs {
		if e.mayDeliver(st, sig) {
			out = append(out, sig)
		}
	}
	return out, nil
}

// mayDeliver reports whether sig goes out on st: st's receiver is still a
// registered receiver allowed to see it (an operator's webhook sees
// everything), and st wants it.
func (e *Engine) mayDeliver(st Stream, sig Signal) bool {
	if !st.Wants(sig) {
		return false
	}
	if st.Receiver == "" {
		return st.Delivery.Method == DeliveryWebhook && st.WebhookSees(sig.Visibility)
	}
	c, ok := e.o.Receivers(st.Receiver)
	return ok && Visible(c, sig)
}

// Outcomes of one delivery attempt.
type outcome int

const (
	delivered outcome = iota
	// refused: the receiver will never take this SET (RFC 8935 section 4:
	// retrying such an error cannot succeed); it is given up and counted.
	refused
	// failed: worth another attempt.
	failed
)

// attempt is what one delivery attempt came to.
type attempt struct {
	outcome    outcome
	status     int           // the HTTP status, 0 if none came
	errCode    string        // the receiver's RFC 8935 err, or why no request went out
	detail     string        // the receiver's description or the transport error, for the log
	retryAfter time.Duration // the receiver's Retry-After
}

// send delivers sig on st until the receiver takes it or refuses it for
// good, waiting between attempts (exponential backoff with jitter,
// capped, Retry-After honoured). A change of st's delivery settings
// retries at once with them. It returns errRestart when st is no longer
// delivered as it was, and ctx's error when ctx ends.
func (e *Engine) send(ctx context.Context, r *runner, st0 Stream, sig Signal) error {
	for n := 0; ; n++ {
		if changedCourse(r, st0) {
			return errRestart
		}
		st, _, _ := r.current()
		if !e.mayDeliver(st, sig) {
			return nil // no longer this receiver's to see
		}
		jti := JTI(st.ID, sig.Txn, sig.Type)
		var a attempt
		if st.Delivery.Method == DeliveryWebhook {
			a = e.postWebhook(ctx, st, sig)
		} else {
			a = e.push(ctx, st, sig)
		}
		switch a.outcome {
		case delivered:
			if m := e.o.Metrics; m != nil {
				m.SSFDelivered(st.ID, 1)
			}
			return nil
		case refused:
			if m := e.o.Metrics; m != nil {
				m.SSFFailed(st.ID)
			}
			e.log.Error("SSF: the receiver refused a SET for good; it is not sent again", "stream", st.ID, "jti", jti,
				"status", a.status, "err_code", a.errCode, "description", a.detail)
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if m := e.o.Metrics; m != nil {
			m.SSFRetried(st.ID)
		}
		wait := e.backoff(n, a.retryAfter)
		e.log.Warn("SSF delivery failed, retrying", "stream", st.ID, "jti", jti, "attempt", n+1,
			"status", a.status, "err_code", a.errCode, "detail", a.detail, "retry_in", wait)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-r.wake:
			// The receiver may have fixed its stream (endpoint,
			// authorization): try again at once, from the shortest wait.
			n = -1
		case <-t.C:
		}
		t.Stop()
	}
}

// backoff is the wait before attempt n+2 of one message: MinBackoff
// doubled n times, up to MaxBackoff, with half of it random (so streams
// failing together do not retry together); at least retryAfter, but never
// beyond MaxBackoff.
func (e *Engine) backoff(n int, retryAfter time.Duration) time.Duration {
	d := e.o.MaxBackoff
	if n < 32 && e.o.MinBackoff<<n > 0 && e.o.MinBackoff<<n < d {
		d = e.o.MinBackoff << n
	}
	d = d/2 + rand.N(d/2+1)
	return min(max(d, retryAfter), e.o.MaxBackoff)
}

// RFC 8935 section 2.4 error codes a receiver answers a push with, and
// SSF 1.0 section 8.1.4.1's for a verification event.
const (
	errInvalidRequest       = "invalid_request"
	errInvalidKey           = "invalid_key"
	errInvalidIssuer        = "invalid_issuer"
	errInvalidAudience      = "invalid_audience"
	errAuthenticationFailed = "authentication_failed"
	errAccessDenied         = "access_denied"
	errInvalidState         = "invalid_state"
)

// refusedForGood reports whether a push answered 400 with err code is
// given up (docs/protocol.md, "Delivery"). invalid_request says the SET
// cannot be parsed or its event does not conform: the same SET fails the
// same way every time (RFC 8935 section 4). invalid_state says a
// verification event carries another state than the receiver expects:
// that event never will. Every other code (invalid_key, invalid_issuer,
// invalid_audience, authentication_failed, access_denied, or one tokend
// does not know) says the receiver and tokend disagree about the stream,
// not about this SET: giving up would drop every event until someone
// fixes it, so the SET is retried, with the capped backoff, and goes out
// once the receiver is fixed (a key rotation the receiver has not caught
// up with resolves itself that way: invalid_key).
func refusedForGood(code string) bool {
	return code == errInvalidRequest || code == errInvalidState
}

// secrets opens st's delivery secrets; when it cannot, it returns the
// failed attempt that says why (the stream's change, a new secret or the
// keys arriving, retries it).
func (e *Engine) secrets(st Stream) (DeliverySecrets, attempt, bool) {
	if e.o.Secrets == nil {
		return DeliverySecrets{}, attempt{outcome: failed, errCode: "no_secrets", detail: "this instance cannot open delivery secrets"}, false
	}
	s, err := e.o.Secrets(st)
	switch {
	case errors.Is(err, ErrSecretLost):
		return s, attempt{outcome: failed, errCode: "secret_lost", detail: err.Error()}, false
	case err != nil:
		return s, attempt{outcome: failed, errCode: "no_secrets", detail: err.Error()}, false
	}
	return s, attempt{}, true
}

// push sends one SET (RFC 8935 section 2.1): a POST of the compact JWS
// with Content-Type application/secevent+jwt, Accept application/json and
// the stream's authorization_header. The SET is signed now, with the key
// current now.
func (e *Engine) push(ctx context.Context, st Stream, sig Signal) attempt {
	set, err := EncodeSET(e.o.Signer, sig.Claims(e.o.Mapper.Issuer, st, e.now()))
	if err != nil {
		return attempt{outcome: failed, errCode: "no_set_key", detail: err.Error()}
	}
	secrets, a, ok := e.secrets(st)
	if !ok {
		return a
	}
	header := http.Header{"Content-Type": {"application/secevent+jwt"}, "Accept": {"application/json"}}
	if secrets.Authorization != "" {
		header.Set("Authorization", secrets.Authorization)
	}
	a = e.post(ctx, st.Delivery.EndpointURL, header, []byte(set))
	switch {
	case a.status >= 200 && a.status < 300:
		// RFC 8935 section 2.2 asks for 202; a receiver that answers 200
		// or 204 took the SET too, and sending it again would only
		// duplicate it.
		a.outcome = delivered
	case a.status == http.StatusBadRequest && refusedForGood(a.errCode):
		a.outcome = refused
	}
	return a
}

// maxResponseBody bounds what is read of a receiver's answer: an RFC 8935
// error is a small JSON object.
const maxResponseBody = 16 << 10

// post makes one request, bounded by RequestTimeout, and reads its
// answer: the status, Retry-After, and an RFC 8935 error (section 2.3).
// The outcome is failed unless the caller decides otherwise.
func (e *Engine) post(ctx context.Context, endpoint string, header http.Header, body []byte) attempt {
	ctx, cancel := context.WithTimeout(ctx, e.o.RequestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, bytes.NewReader(body))
	if err != nil {
		return attempt{outcome: failed, errCode: "bad_endpoint", detail: transportError(err)}
	}
	req.Header = header
	resp, err := e.http.Do(req)
	if err != nil {
		return attempt{outcome: failed, errCode: "unreachable", detail: transportError(err)}
	}
	defer resp.Body.Close()
	a := attempt{outcome: failed, status: resp.StatusCode, retryAfter: retryAfter(resp.Header.Get("Retry-After"), e.now())}
	data, _ := io.ReadAll(io.LimitReader(resp.Body, maxResponseBody))
	if resp.StatusCode == http.StatusBadRequest {
		var body struct {
			Err         string `json:"err"`
			Description string `json:"description"`
		}
		if json.Unmarshal(data, &body) == nil {
			a.errCode, a.detail = printable(body.Err, 64), printable(body.Description, 256)
		}
	}
	return a
}

// transportError describes a failed request without its URL: a
// receiver's endpoint may carry a secret in its query.
func transportError(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	return err.Error()
}

// retryAfter reads a Retry-After header (RFC 9110 section 10.2.3):
// seconds, or a date; 0 when absent or unreadable.
func retryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	if s, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32); err == nil {
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

// printable cuts a receiver's text to n bytes of printable ASCII for the
// log.
func printable(s string, n int) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r > 0x7e {
			return '?'
		}
		return r
	}, s)
	if len(s) > n {
		s = s[:n]
	}
	return s
}

// pausePoint returns the stream sequence of the stream-updated event that
// announced stream streamID's pause, 0 if there is none: SSF 1.0 section
// 8.1.5 has the transmitter send it before it stops, and it is appended
// before the status changes, so the events up to it are delivered and
// those after it held. Every instance finds the same point in the stream.
// A pause the receiver asked for announces nothing (the last event on the
// stream's subject is not a paused stream-updated after the events still
// to deliver), and holds at once.
func (e *Engine) pausePoint(ctx context.Context, streamID string) (uint64, error) {
	stream, _, ok := e.started()
	if !ok {
		return 0, errNotStarted
	}
	m, err := stream.GetLastMsgForSubject(ctx, e.o.Subjects.SSF(streamID))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("last event of stream %s: %w", streamID, err)
	}
	ev, err := events.DecodeDeployment(m.Data, streamID)
	if err != nil || ev.Type != events.SSFStreamUpdated || ev.Status != string(StatusPaused) {
		return 0, nil
	}
	return m.Sequence, nil
}
