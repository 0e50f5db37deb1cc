package ssfreceiver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"slices"
)

// Poller polls a poll stream (RFC 8936). It is not safe for concurrent
// use: one goroutine polls a stream.
type Poller struct {
	// MaxEvents asks for at most this many SETs per poll; 0 leaves it to
	// the transmitter.
	MaxEvents int
	r         *Receiver
	url       string
	handle    Handler
	seen      seenSet
	// What the next poll acknowledges (RFC 8936 section 2.4.3) and
	// reports refused (section 2.4.4).
	ack     []string
	setErrs map[string]*Error
}

// pollRequest is RFC 8936 section 2.2's.
type pollRequest struct {
	MaxEvents         *int              `json:"maxEvents,omitempty"`
	ReturnImmediately bool              `json:"returnImmediately"`
	Ack               []string          `json:"ack,omitempty"`
	SetErrs           map[string]*Error `json:"setErrs,omitempty"`
}

// pollResponse is RFC 8936 section 2.3's.
type pollResponse struct {
	Sets          map[string]string `json:"sets"`
	MoreAvailable bool              `json:"moreAvailable"`
}

// NewPoller returns a Poller of poll stream s, whose SETs handle takes.
func (r *Receiver) NewPoller(s Stream, handle Handler) (*Poller, error) {
	if s.Delivery == nil || s.Delivery.Method != DeliveryPoll || s.Delivery.EndpointURL == "" {
		return nil, fmt.Errorf("stream %s is not a poll stream", s.StreamID)
	}
	return &Poller{r: r, url: s.Delivery.EndpointURL, handle: handle, setErrs: map[string]*Error{}}, nil
}

// Poll asks for SETs, acknowledging those taken and refused since the
// last poll, and returns the new SETs it verified and handled; the next
// poll acknowledges them. Unless returnImmediately, the transmitter may
// hold the request until it has SETs (a long poll).
func (p *Poller) Poll(ctx context.Context, returnImmediately bool) (taken []SET, moreAvailable bool, err error) {
	req := pollRequest{ReturnImmediately: returnImmediately, Ack: p.ack, SetErrs: p.setErrs}
	if p.MaxEvents > 0 {
		req.MaxEvents = &p.MaxEvents
	}
	var resp pollResponse
	if err := p.r.call(ctx, http.MethodPost, p.url, req, &resp, http.StatusOK); err != nil {
		// Nothing was acknowledged: the next poll sends it all again.
		return nil, false, err
	}
	p.ack, p.setErrs = nil, map[string]*Error{}
	for _, jti := range slices.Sorted(maps.Keys(resp.Sets)) {
		set, err := p.take(ctx, jti, resp.Sets[jti])
		var refused *Error
		switch {
		case errors.As(err, &refused):
			p.setErrs[jti] = refused
		case err != nil:
			// Neither acknowledged nor refused: the transmitter sends it
			// again after its acknowledgement wait.
			slog.ErrorContext(ctx, "ssf receiver: SET not taken", "jti", jti, "err", err)
		default:
			p.ack = append(p.ack, jti)
			if set != nil {
				taken = append(taken, *set)
			}
		}
	}
	return taken, resp.MoreAvailable, nil
}

// take verifies and handles one polled SET; a SET seen already is
// acknowledged again (delivery is at least once), and returned nil.
func (p *Poller) take(ctx context.Context, jti, raw string) (*SET, error) {
	set, err := p.r.Verifier.Verify(ctx, []byte(raw))
	if err != nil {
		return nil, err
	}
	// RFC 8936 section 2.3: each SET is keyed by its jti.
	if set.JTI != jti {
		return nil, refuse(ErrInvalidRequest, "returned as %q, its jti is %q", jti, set.JTI)
	}
	if p.seen.has(jti) {
		return nil, nil
	}
	if err := p.handle(ctx, set); err != nil {
		return nil, err
	}
	p.seen.add(jti)
	return &set, nil
}

// Acknowledge sends what the last poll took and refused, asking for no
// SETs (RFC 8936 section 2.4.2), for a receiver that stops polling.
func (p *Poller) Acknowledge(ctx context.Context) error {
	if len(p.ack) == 0 && len(p.setErrs) == 0 {
		return nil
	}
	zero := 0
	req := pollRequest{MaxEvents: &zero, ReturnImmediately: true, Ack: p.ack, SetErrs: p.setErrs}
	if err := p.r.call(ctx, http.MethodPost, p.url, req, &pollResponse{}, http.StatusOK); err != nil {
		return err
	}
	p.ack, p.setErrs = nil, map[string]*Error{}
	return nil
}
