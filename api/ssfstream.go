package api

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events"
	"github.com/tokend/tokend/signals"
)

// streamBody is a stream configuration as a receiver sends it to create,
// update or replace a stream (SSF 1.0 section 8.1.1): the
// receiver-supplied members to apply, and the transmitter-supplied ones,
// which an update or replacement may send but which must then match the
// stream's (sections 8.1.1.3 and 8.1.1.4).
type streamBody struct {
	StreamID        string        `json:"stream_id"`
	Delivery        *deliveryBody `json:"delivery"`
	EventsRequested []string      `json:"events_requested"`
	Description     *string       `json:"description"`

	Iss                     *string         `json:"iss"`
	Aud                     *jwt.Audience   `json:"aud"`
	EventsSupported         *[]string       `json:"events_supported"`
	EventsDelivered         *[]string       `json:"events_delivered"`
	MinVerificationInterval *int64          `json:"min_verification_interval"`
	InactivityTimeout       json.RawMessage `json:"inactivity_timeout"`
}

// deliveryBody is a delivery object as a receiver sends it; a nil
// AuthorizationHeader was not sent.
type deliveryBody struct {
	Method              string  `json:"method"`
	EndpointURL         string  `json:"endpoint_url"`
	AuthorizationHeader *string `json:"authorization_header"`
}

// request returns b's receiver-supplied members. A delivery names its
// method: only a request without any delivery is polled (SSF 1.0 section
// 8.1.1.1).
func (b streamBody) request() (signals.StreamRequest, error) {
	r := signals.StreamRequest{EventsRequested: b.EventsRequested, Description: b.Description}
	if d := b.Delivery; d != nil {
		if d.Method == "" {
			return r, domain.Errorf(domain.EInvalidRequest, "delivery.method is required")
		}
		r.Delivery = &signals.Delivery{Method: d.Method, EndpointURL: d.EndpointURL}
		if d.AuthorizationHeader != nil {
			r.Delivery.AuthorizationHeader = *d.AuthorizationHeader
		}
	}
	return r, nil
}

// checkTransmitterSupplied checks the transmitter-supplied members b sends
// against cur, as it is before the change: each must match. tokend sets
// no inactivity_timeout, so none matches.
func (o *OAuth) checkTransmitterSupplied(b streamBody, cur signals.Stream) error {
	c := o.configOf(cur)
	switch {
	case b.Iss != nil && *b.Iss != c.Iss:
		return mismatch("iss")
	case b.Aud != nil && !sameSet(*b.Aud, c.Aud):
		return mismatch("aud")
	case b.EventsSupported != nil && !sameSet(*b.EventsSupported, c.EventsSupported):
		return mismatch("events_supported")
	case b.EventsDelivered != nil && !sameSet(*b.EventsDelivered, c.EventsDelivered):
		return mismatch("events_delivered")
	case b.MinVerificationInterval != nil && *b.MinVerificationInterval != c.MinVerificationInterval:
		return mismatch("min_verification_interval")
	case len(b.InactivityTimeout) > 0 && !bytes.Equal(b.InactivityTimeout, []byte("null")):
		return mismatch("inactivity_timeout")
	case b.Delivery != nil && b.Delivery.Method == signals.DeliveryPoll && b.Delivery.EndpointURL != "" &&
		b.Delivery.EndpointURL != o.transmitter().PollURL(cur.ID):
		// A poll stream's endpoint_url is the transmitter's (section 6.1.2).
		return mismatch("delivery.endpoint_url")
	}
	return nil
}

// removesAuthorization reports whether sent removes the stored
// authorization_header: an empty one does. The header is write-only, so a
// receiver that reads its stream, changes it and sends it back (as SSF 1.0
// section 8.1.1.4 suggests) does not have it, and the stream keeps it for
// the same endpoint (signals.Stream); it is never carried over to another.
func removesAuthorization(sent *deliveryBody) bool {
	return sent != nil && sent.AuthorizationHeader != nil && *sent.AuthorizationHeader == ""
}

// createStream is SSF 1.0 section 8.1.1.1: 201 with the new stream's
// configuration. Transmitter-supplied members in the body are ignored;
// aud is the receiver's client id.
func (o *OAuth) createStream(w http.ResponseWriter, r *http.Request) (ssfAnswer, error) {
	var b streamBody
	receiver, err := o.receiverRequest(w, r, &b)
	if err != nil {
		return ssfAnswer{}, err
	}
	req, err := b.request()
	if err != nil {
		return ssfAnswer{}, err
	}
	ctx, cancel := ssfContext(r)
	defer cancel()
	st, err := o.svc.Streams.Create(ctx, signals.NewStream{Receiver: receiver.ID, Request: req})
	if err != nil {
		return ssfAnswer{}, err
	}
	o.log.Info("ssf stream created", "client_id", receiver.ID, "stream_id", st.ID, "delivery", st.Delivery.Method)
	return ssfAnswer{http.StatusCreated, o.configOf(st)}, nil
}

// readStreams is SSF 1.0 section 8.1.1.2: the stream stream_id names, or
// without it the list of the receiver's streams.
func (o *OAuth) readStreams(_ http.ResponseWriter, r *http.Request) (ssfAnswer, error) {
	receiver, err := o.receiver(r, domain.ScopeSSFRead)
	if err != nil {
		return ssfAnswer{}, err
	}
	ctx, cancel := ssfContext(r)
	defer cancel()
	if !r.URL.Query().Has("stream_id") {
		streams, err := o.svc.Streams.List(ctx, receiver.ID)
		if err != nil {
			return ssfAnswer{}, err
		}
		configs := make([]signals.Config, len(streams))
		for i, st := range streams {
			configs[i] = o.configOf(st)
		}
		return ssfAnswer{http.StatusOK, configs}, nil
	}
	id, err := streamIDParam(r)
	if err != nil {
		return ssfAnswer{}, err
	}
	st, err := o.ownStream(ctx, r, receiver, id)
	if err != nil {
		return ssfAnswer{}, err
	}
	return ssfAnswer{http.StatusOK, o.configOf(st)}, nil
}

// updateStream is SSF 1.0 section 8.1.1.3 (PATCH): the receiver-supplied
// members sent are set, the others kept.
func (o *OAuth) updateStream(w http.ResponseWriter, r *http.Request) (ssfAnswer, error) {
	return o.changeStream(w, r, (*signals.Stream).Patch)
}

// replaceStream is SSF 1.0 section 8.1.1.4 (PUT): the receiver-supplied
// members not sent are reset.
func (o *OAuth) replaceStream(w http.ResponseWriter, r *http.Request) (ssfAnswer, error) {
	return o.changeStream(w, r, (*signals.Stream).Replace)
}

func (o *OAuth) changeStream(w http.ResponseWriter, r *http.Request, apply func(*signals.Stream, signals.StreamRequest) error) (ssfAnswer, error) {
	var b streamBody
	receiver, err := o.receiverRequest(w, r, &b)
	if err != nil {
		return ssfAnswer{}, err
	}
	if err := requireStreamID(b.StreamID); err != nil {
		return ssfAnswer{}, err
	}
	req, err := b.request()
	if err != nil {
		return ssfAnswer{}, err
	}
	st, err := o.updateOwnStream(r, receiver, b.StreamID, func(st *signals.Stream) (bool, error) {
		if err := o.checkTransmitterSupplied(b, *st); err != nil {
			return false, err
		}
		req := req
		req.RemoveAuthorization = removesAuthorization(b.Delivery)
		return true, apply(st, req)
	})
	if err != nil {
		return ssfAnswer{}, err
	}
	return ssfAnswer{http.StatusOK, o.configOf(st)}, nil
}

// deleteStream is SSF 1.0 section 8.1.1.5: 204.
func (o *OAuth) deleteStream(_ http.ResponseWriter, r *http.Request) (ssfAnswer, error) {
	receiver, err := o.receiver(r, domain.ScopeSSFManage)
	if err != nil {
		return ssfAnswer{}, err
	}
	id, err := streamIDParam(r)
	if err != nil {
		return ssfAnswer{}, err
	}
	ctx, cancel := ssfContext(r)
	defer cancel()
	if _, err := o.ownStream(ctx, r, receiver, id); err != nil {
		return ssfAnswer{}, err
	}
	// The owner of a stream never changes and ids are never reused, so the
	// stream read is the one deleted, whatever revision it is at now.
	if err := o.svc.Streams.Delete(ctx, id, 0); err != nil {
		return ssfAnswer{}, err
	}
	o.log.Info("ssf stream deleted", "client_id", receiver.ID, "stream_id", id)
	return ssfAnswer{status: http.StatusNoContent}, nil
}

// readStatus is SSF 1.0 section 8.1.2.1.
func (o *OAuth) readStatus(_ http.ResponseWriter, r *http.Request) (ssfAnswer, error) {
	receiver, err := o.receiver(r, domain.ScopeSSFRead)
	if err != nil {
		return ssfAnswer{}, err
	}
	id, err := streamIDParam(r)
	if err != nil {
		return ssfAnswer{}, err
	}
	ctx, cancel := ssfContext(r)
	defer cancel()
	st, err := o.ownStream(ctx, r, receiver, id)
	if err != nil {
		return ssfAnswer{}, err
	}
	return ssfAnswer{http.StatusOK, st.StatusOf()}, nil
}

// statusBody is an update of a stream's status (SSF 1.0 section 8.1.2.2).
type statusBody struct {
	StreamID string         `json:"stream_id"`
	Status   signals.Status `json:"status"`
	Reason   string         `json:"reason"`
}

// updateStatus is SSF 1.0 section 8.1.2.2: the receiver enables, pauses or
// disables its stream. Asked by the receiver, it sends no stream-updated
// event (section 8.1.2: that is for changes it did not ask for).
func (o *OAuth) updateStatus(w http.ResponseWriter, r *http.Request) (ssfAnswer, error) {
	var b statusBody
	receiver, err := o.receiverRequest(w, r, &b)
	if err != nil {
		return ssfAnswer{}, err
	}
	if err := requireStreamID(b.StreamID); err != nil {
		return ssfAnswer{}, err
	}
	st, err := o.updateOwnStream(r, receiver, b.StreamID, func(st *signals.Stream) (bool, error) {
		return st.SetStatus(b.Status, b.Reason)
	})
	if err != nil {
		return ssfAnswer{}, err
	}
	return ssfAnswer{http.StatusOK, st.StatusOf()}, nil
}

// subjectBody adds or removes a subject (SSF 1.0 sections 8.1.3.2 and
// 8.1.3.3). verified is ignored: every subject is in a stream unless
// removed.
type subjectBody struct {
	StreamID string          `json:"stream_id"`
	Subject  json.RawMessage `json:"subject"`
}

// addSubject is SSF 1.0 section 8.1.3.2: an empty 200.
func (o *OAuth) addSubject(w http.ResponseWriter, r *http.Request) (ssfAnswer, error) {
	err := o.changeSubjects(w, r, (*signals.Stream).AddSubject)
	return ssfAnswer{status: http.StatusOK}, err
}

// removeSubject is SSF 1.0 section 8.1.3.3: 204.
func (o *OAuth) removeSubject(w http.ResponseWriter, r *http.Request) (ssfAnswer, error) {
	err := o.changeSubjects(w, r, (*signals.Stream).RemoveSubject)
	return ssfAnswer{status: http.StatusNoContent}, err
}

func (o *OAuth) changeSubjects(w http.ResponseWriter, r *http.Request, change func(*signals.Stream, signals.Subject) (bool, error)) error {
	var b subjectBody
	receiver, err := o.receiverRequest(w, r, &b)
	if err != nil {
		return err
	}
	if err := requireStreamID(b.StreamID); err != nil {
		return err
	}
	if len(b.Subject) == 0 || bytes.Equal(b.Subject, []byte("null")) {
		return domain.Errorf(domain.EInvalidRequest, "subject is required")
	}
	subject, err := signals.DecodeSubject(b.Subject)
	if err != nil {
		return err
	}
	_, err = o.updateOwnStream(r, receiver, b.StreamID, func(st *signals.Stream) (bool, error) {
		return change(st, subject)
	})
	return err
}

// verifyBody asks for a verification event (SSF 1.0 section 8.1.4.2).
type verifyBody struct {
	StreamID string `json:"stream_id"`
	State    string `json:"state"`
}

// verifyStream is SSF 1.0 section 8.1.4.2: it records ssf.verification in the
// TOKENS stream, whence the stream's delivery sends it, and answers 204.
// More than one per VerificationInterval and stream is 429 with
// Retry-After; a disabled stream, which delivers nothing, is refused.
func (o *OAuth) verifyStream(w http.ResponseWriter, r *http.Request) (ssfAnswer, error) {
	var b verifyBody
	receiver, err := o.receiverRequest(w, r, &b)
	if err != nil {
		return ssfAnswer{}, err
	}
	if b.State != "" {
		if err := domain.ValidateName("state", b.State); err != nil {
			return ssfAnswer{}, err
		}
	}
	ctx, cancel := ssfContext(r)
	defer cancel()
	st, err := o.ownStream(ctx, r, receiver, b.StreamID)
	if err != nil {
		return ssfAnswer{}, err
	}
	if st.Status == signals.StatusDisabled {
		return ssfAnswer{}, domain.Errorf(domain.EInvalidRequest, "the stream is disabled: nothing is delivered on it until it is enabled")
	}
	if ok, wait := o.verifications.Allow(st.ID); !ok {
		return ssfAnswer{}, &domain.Error{Code: domain.EUnavailable, RateLimited: true, RetryAfterMs: (wait + time.Millisecond - 1).Milliseconds(),
			Message: fmt.Sprintf("at most one verification every %v per stream (min_verification_interval)", VerificationInterval)}
	}
	if _, err := o.svc.Outbox.AppendDeployment(ctx, events.VerificationEvent(st.ID, b.State, o.svc.Now())); err != nil {
		// The interval was taken: the receiver may retry once it passed.
		return ssfAnswer{}, &oauthError{status: http.StatusServiceUnavailable, code: domain.EUnavailable,
			description: "the verification event could not be recorded, retry", retryAfter: VerificationInterval, cause: err}
	}
	return ssfAnswer{status: http.StatusNoContent}, nil
}
