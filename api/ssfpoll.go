package api

import (
	"context"
	"net/http"
	"time"

	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/signals"
)

// MaxLongPoll bounds how long a long poll (RFC 8936 section 2.2,
// returnImmediately false) waits for SETs before it is answered with none.
const MaxLongPoll = 15 * time.Second

// maxPollBody bounds a poll's body, which holds acknowledgements and
// errors: maxPollAcks of them, with descriptions, fit.
const maxPollBody = 256 << 10

// maxPollAcks bounds the ack and setErrs entries of one poll, and so the
// work it asks of the delivery.
const maxPollAcks = 1000

// maxSetErrDescription bounds the description of a receiver's SET error,
// which is for logs.
const maxSetErrDescription = 1024

// pollAnswer is RFC 8936 section 2.3's answer: sets always an object,
// empty when there are none.
type pollAnswer struct {
	Sets          map[string]string `json:"sets"`
	MoreAvailable bool              `json:"moreAvailable"`
}

// poll is RFC 8936 at a poll stream's endpoint_url: the stream must be the
// receiver's (else 404) and a poll stream (else 400). Nothing of a request
// that is refused is applied, its acknowledgements included.
func (o *OAuth) poll(w http.ResponseWriter, r *http.Request) (ssfAnswer, error) {
	receiver, err := o.receiver(r, domain.ScopeSSFManage)
	if err != nil {
		return ssfAnswer{}, err
	}
	ctx, cancel := ssfContext(r)
	defer cancel()
	st, err := o.ownStream(ctx, r, receiver, r.PathValue("stream_id"))
	if err != nil {
		return ssfAnswer{}, err
	}
	if st.Delivery.Method != signals.DeliveryPoll {
		return ssfAnswer{}, domain.Errorf(domain.EInvalidRequest, "the stream is not polled: its delivery method is %s", st.Delivery.Method)
	}
	req, err := decodePoll(w, r)
	if err != nil {
		return ssfAnswer{}, err
	}
	if o.polls == nil {
		return ssfAnswer{}, &domain.Error{Code: domain.EUnavailable, Message: "poll delivery is not running on this instance, retry", RetryAfterMs: 1000}
	}
	resp, err := o.pollDelivery(w, r, st, req)
	if err != nil {
		return ssfAnswer{}, err
	}
	if resp.Sets == nil {
		resp.Sets = map[string]string{}
	}
	return ssfAnswer{http.StatusOK, pollAnswer{Sets: resp.Sets, MoreAvailable: resp.MoreAvailable}}, nil
}

// pollDelivery hands req to the delivery with the time it may wait: up to
// o.longPoll for a long poll, else requestTimeout. Shutdown ends the wait
// early, so receivers poll another instance.
func (o *OAuth) pollDelivery(w http.ResponseWriter, r *http.Request, st signals.Stream, req signals.PollRequest) (signals.PollResponse, error) {
	wait := requestTimeout
	if !req.ReturnImmediately {
		wait = o.longPoll
		// --http-write-timeout runs from the request's headers, and may be
		// shorter than a long poll: give the answer time to be written.
		// Where the connection cannot (ErrNotSupported), it keeps the
		// listener's.
		_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(wait + requestTimeout))
	}
	ctx, cancel := context.WithTimeout(r.Context(), wait)
	defer cancel()
	if stopping := o.svc.queriesCtx; stopping != nil {
		defer context.AfterFunc(stopping, cancel)()
	}
	return o.polls.Poll(ctx, st, req)
}

// decodePoll reads a poll request (RFC 8936 section 2.2). Members it does
// not define are ignored.
func decodePoll(w http.ResponseWriter, r *http.Request) (signals.PollRequest, error) {
	var req signals.PollRequest
	if err := decodeSSF(w, r, maxPollBody, &req); err != nil {
		return req, err
	}
	if req.MaxEvents != nil && *req.MaxEvents < 0 {
		return req, domain.Errorf(domain.EInvalidRequest, "maxEvents is a number of SETs, 0 or more")
	}
	if len(req.Ack)+len(req.SetErrs) > maxPollAcks {
		return req, domain.Errorf(domain.EInvalidRequest, "at most %d SETs acknowledged or refused (ack and setErrs) per poll", maxPollAcks)
	}
	for _, jti := range req.Ack {
		if err := domain.ValidateName("ack", jti); err != nil {
			return req, err
		}
	}
	for jti, e := range req.SetErrs {
		if err := domain.ValidateName("setErrs member", jti); err != nil {
			return req, err
		}
		if err := domain.ValidateName("setErrs err", e.Err); err != nil {
			return req, err
		}
		if len(e.Description) > maxSetErrDescription {
			return req, domain.Errorf(domain.EInvalidRequest, "a setErrs description is at most %d bytes", maxSetErrDescription)
		}
	}
	return req, nil
}
