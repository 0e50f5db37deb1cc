package ssfreceiver

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
)

// Stream is a stream's configuration (SSF 1.0 section 8.1.1) as the
// transmitter answers it.
type Stream struct {
	StreamID                string    `json:"stream_id"`
	Iss                     string    `json:"iss"`
	Aud                     Audience  `json:"aud"`
	Delivery                *Delivery `json:"delivery,omitempty"`
	EventsSupported         []string  `json:"events_supported,omitempty"`
	EventsRequested         []string  `json:"events_requested,omitempty"`
	EventsDelivered         []string  `json:"events_delivered,omitempty"`
	MinVerificationInterval int       `json:"min_verification_interval,omitempty"`
	Description             string    `json:"description,omitempty"`
}

// StreamRequest holds the receiver-supplied members of a stream (SSF 1.0
// section 8.1.1): what a create sends, and what an update (PATCH) changes.
type StreamRequest struct {
	StreamID        string    `json:"stream_id,omitempty"`
	Delivery        *Delivery `json:"delivery,omitempty"`
	EventsRequested []string  `json:"events_requested,omitempty"`
	Description     string    `json:"description,omitempty"`
}

// Delivery is a stream's delivery method and its parameters (SSF 1.0
// section 6.1): for push, the receiver's endpoint_url and the
// authorization_header the transmitter must send to it; for poll, the
// endpoint_url the transmitter gives.
type Delivery struct {
	Method              string `json:"method"`
	EndpointURL         string `json:"endpoint_url,omitempty"`
	AuthorizationHeader string `json:"authorization_header,omitempty"`
}

// Status is a stream's status (SSF 1.0 section 8.1.2).
type Status struct {
	StreamID string `json:"stream_id"`
	Status   string `json:"status"`
	Reason   string `json:"reason,omitempty"`
}

// Audience is an aud: a string or an array of strings (RFC 7519 section
// 4.1.3).
type Audience []string

func (a *Audience) UnmarshalJSON(raw []byte) error {
	var one string
	if json.Unmarshal(raw, &one) == nil {
		*a = Audience{one}
		return nil
	}
	return json.Unmarshal(raw, (*[]string)(a))
}

// CreateStream creates a stream (SSF 1.0 section 8.1.1.1); without a
// delivery the transmitter makes it a poll stream.
func (r *Receiver) CreateStream(ctx context.Context, req StreamRequest) (Stream, error) {
	var s Stream
	if err := r.call(ctx, http.MethodPost, r.Transmitter.ConfigurationEndpoint, req, &s, http.StatusCreated); err != nil {
		return Stream{}, err
	}
	return s, r.check(s)
}

// GetStream reads a stream's configuration (SSF 1.0 section 8.1.1.2).
func (r *Receiver) GetStream(ctx context.Context, id string) (Stream, error) {
	var s Stream
	if err := r.call(ctx, http.MethodGet, r.streamURL(id), nil, &s, http.StatusOK); err != nil {
		return Stream{}, err
	}
	return s, r.check(s)
}

// UpdateStream changes the members req sets of stream req.StreamID (SSF
// 1.0 section 8.1.1.3, PATCH).
func (r *Receiver) UpdateStream(ctx context.Context, req StreamRequest) (Stream, error) {
	var s Stream
	if err := r.call(ctx, http.MethodPatch, r.Transmitter.ConfigurationEndpoint, req, &s, http.StatusOK); err != nil {
		return Stream{}, err
	}
	return s, r.check(s)
}

// DeleteStream deletes a stream (SSF 1.0 section 8.1.1.5).
func (r *Receiver) DeleteStream(ctx context.Context, id string) error {
	return r.call(ctx, http.MethodDelete, r.streamURL(id), nil, nil, http.StatusNoContent)
}

// GetStatus reads a stream's status (SSF 1.0 section 8.1.2.1).
func (r *Receiver) GetStatus(ctx context.Context, id string) (Status, error) {
	var st Status
	err := r.call(ctx, http.MethodGet, r.Transmitter.StatusEndpoint+"?"+url.Values{"stream_id": {id}}.Encode(), nil, &st, http.StatusOK)
	return st, err
}

// SetStatus sets a stream's status: enabled, paused or disabled (SSF 1.0
// section 8.1.2.2).
func (r *Receiver) SetStatus(ctx context.Context, st Status) (Status, error) {
	var got Status
	err := r.call(ctx, http.MethodPost, r.Transmitter.StatusEndpoint, st, &got, http.StatusOK)
	return got, err
}

// AddSubject adds a subject (a subject identifier, RFC 9493, as JSON) to
// a stream (SSF 1.0 section 8.1.3.2).
func (r *Receiver) AddSubject(ctx context.Context, streamID string, subject any) error {
	body := map[string]any{"stream_id": streamID, "subject": subject}
	return r.call(ctx, http.MethodPost, r.Transmitter.AddSubjectEndpoint, body, nil, http.StatusOK)
}

// RemoveSubject removes a subject from a stream (SSF 1.0 section 8.1.3.3).
func (r *Receiver) RemoveSubject(ctx context.Context, streamID string, subject any) error {
	body := map[string]any{"stream_id": streamID, "subject": subject}
	return r.call(ctx, http.MethodPost, r.Transmitter.RemoveSubjectEndpoint, body, nil, http.StatusNoContent)
}

// RequestVerification asks for a verification event carrying state on a
// stream (SSF 1.0 section 8.1.4.2). The transmitter sends it later: check
// its state when it comes (VerificationState).
func (r *Receiver) RequestVerification(ctx context.Context, streamID, state string) error {
	body := map[string]string{"stream_id": streamID, "state": state}
	return r.call(ctx, http.MethodPost, r.Transmitter.VerificationEndpoint, body, nil, http.StatusNoContent)
}

func (r *Receiver) streamURL(id string) string {
	return r.Transmitter.ConfigurationEndpoint + "?" + url.Values{"stream_id": {id}}.Encode()
}

// check validates a stream configuration the transmitter answered: its
// iss must be the issuer (SSF 1.0 sections 8.1.1.1 to 8.1.1.3: the
// receiver MUST check it), and its aud should be the receiver's (section
// 8.1.1.1.1).
func (r *Receiver) check(s Stream) error {
	if s.Iss != r.cfg.Issuer {
		return fmt.Errorf("stream %s: iss %q is not the issuer %q", s.StreamID, s.Iss, r.cfg.Issuer)
	}
	if r.cfg.Audience != "" && !slices.Contains(s.Aud, r.cfg.Audience) {
		return fmt.Errorf("stream %s: aud %q does not name this receiver (%q)", s.StreamID, s.Aud, r.cfg.Audience)
	}
	return nil
}
