package signals

import (
	"net"
	"net/url"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/tokend/tokend/domain"
)

// Delivery methods (SSF 1.0 section 6.1).
const (
	// DeliveryPush is push delivery (RFC 8935): tokend POSTs each SET to
	// the receiver's endpoint_url.
	DeliveryPush = "urn:ietf:rfc:8935"
	// DeliveryPoll is poll delivery (RFC 8936): the receiver polls
	// tokend's endpoint_url. The default when a stream names no method
	// (SSF 1.0 section 8.1.1.1).
	DeliveryPoll = "urn:ietf:rfc:8936"
	// DeliveryWebhook is tokend's webhook for SIEMs (Standard Webhooks):
	// the same events as JSON, signed with a shared secret. Operators
	// create these streams; receivers cannot.
	DeliveryWebhook = "urn:tokend:webhook"
)

// DeliveryMethods lists the delivery methods receivers may ask for, for
// the transmitter metadata's delivery_methods_supported.
var DeliveryMethods = []string{DeliveryPush, DeliveryPoll}

// Limits of a stream. They bound what a receiver can make tokend store
// (and every instance hold in memory), and are generous for their use.
const (
	// MaxStreamsPerReceiver bounds a receiver's streams. Two instances
	// creating streams for one receiver at the same moment may each pass
	// the check, so a receiver may end one or two above it.
	MaxStreamsPerReceiver = 8
	// MaxExcludedSubjects bounds the subjects a stream has removed.
	MaxExcludedSubjects = 256
	// MaxDescriptionBytes is where a description is cut (SSF 1.0 section
	// 8.1.1: the transmitter MAY truncate it).
	MaxDescriptionBytes = 256
	// MaxEventsRequested bounds events_requested.
	MaxEventsRequested = 32
	// MaxAudiences bounds a stream's aud.
	MaxAudiences = 4
	// maxURLBytes bounds endpoint_url.
	maxURLBytes = 2048
	// maxAuthorizationBytes bounds authorization_header.
	maxAuthorizationBytes = 4096
)

// Status is a stream's status (SSF 1.0 section 8.1.2).
type Status string

const (
	// StatusEnabled: events are delivered.
	StatusEnabled Status = "enabled"
	// StatusPaused: events are held (up to the TOKENS stream's retention)
	// and delivered once the stream is enabled again.
	StatusPaused Status = "paused"
	// StatusDisabled: nothing is delivered or held; events from while the
	// stream was disabled are never delivered.
	StatusDisabled Status = "disabled"
)

// Valid reports whether s is one of the three statuses.
func (s Status) Valid() bool { return s == StatusEnabled || s == StatusPaused || s == StatusDisabled }

// StatusChange is a stream's status going from From to To, and what that
// means for its delivery consumer (design item 7).
type StatusChange struct{ From, To Status }

// Holds reports whether events are held from now on, not delivered.
func (c StatusChange) Holds() bool { return c.To == StatusPaused }

// DropsConsumer reports whether the consumer, with the events it has not
// delivered, goes: the stream is disabled.
func (c StatusChange) DropsConsumer() bool { return c.To == StatusDisabled && c.From != StatusDisabled }

// RestartsConsumer reports whether the consumer is created again, from
// now on: the stream leaves disabled, and the events in between are never
// delivered (SSF 1.0 section 8.1.2).
func (c StatusChange) RestartsConsumer() bool {
	return c.From == StatusDisabled && c.To != StatusDisabled
}

// Delivery says how a stream's SETs reach the receiver: the delivery
// object of SSF 1.0 section 6.1.
type Delivery struct {
	Method string `json:"method"`
	// EndpointURL is the receiver's, for push and webhook. For poll it is
	// tokend's (Transmitter.PollURL) and never stored.
	EndpointURL string `json:"endpoint_url,omitempty"`
	// AuthorizationHeader is sent as Authorization with every push (SSF
	// 1.0 section 6.1.1). A receiver's secret: as a request carries it,
	// never as stored (the store seals it in Stream.Secrets and leaves
	// this empty), never logged or shown.
	AuthorizationHeader string `json:"authorization_header,omitempty"`
	// SecretRef names the webhook's current signing secret (webhook
	// only); the secret itself is sealed in Stream.Secrets.
	SecretRef string `json:"secret_ref,omitempty"`
}

// Stream is an SSF event stream as tokend stores it, one entry of the KV
// bucket TOKENS_SSF_STREAMS: the configuration of SSF 1.0 section 8.1.1
// (transmitter-supplied iss, events_supported and the poll endpoint_url
// come from the deployment: Config) plus tokend's own fields.
type Stream struct {
	ID       string   `json:"stream_id"`
	Audience []string `json:"aud"`
	Delivery Delivery `json:"delivery"`
	// EventsRequested is as the receiver asked, unknown URIs included
	// (SSF: the transmitter ignores them); nil when it asked for none,
	// which tokend reads as every supported event.
	EventsRequested []string `json:"events_requested,omitzero"`
	// EventsDelivered is EventsRequested ∩ EventsSupported.
	EventsDelivered []string `json:"events_delivered"`
	Description     string   `json:"description,omitempty"`

	// Receiver is the client id of the receiver that owns the stream;
	// empty for a webhook, which an operator owns (CreatedBy).
	Receiver  string `json:"receiver,omitempty"`
	CreatedBy string `json:"created_by,omitempty"`
	Status    Status `json:"status"`
	Reason    string `json:"reason,omitempty"`
	// ExcludedSubjects are the subjects the receiver removed: every
	// subject is in a stream unless removed (default_subjects ALL, which
	// the CAEP interoperability profile has receivers assume).
	ExcludedSubjects []Subject `json:"excluded_subjects,omitempty"`
	CreatedAt        time.Time `json:"created_at"`
	UpdatedAt        time.Time `json:"updated_at"`
	// Clients are, for a webhook, the clients whose events it gets; none:
	// every event, as for a receiver registered for all (WebhookSees).
	Clients []string `json:"clients,omitempty"`
	// Secrets are the stream's delivery secrets, sealed (seal.go). Never
	// shown; Store.DeliverySecrets opens them for the delivery.
	Secrets SealedSecrets `json:"secrets,omitzero"`
	// plainAuthorization is an authorization_header an earlier version
	// stored in the clear, held here (never in Delivery, which is shown)
	// until the store seals it.
	plainAuthorization string

	// Revision is the entry's TOKENS_SSF_STREAMS revision; changes are
	// compare-and-set on it.
	Revision uint64 `json:"-"`
}

// StreamRequest holds the receiver-supplied fields of a stream
// configuration (SSF 1.0 section 8.1.1), as a create, update (PATCH) or
// replace (PUT) sends them: a nil field was not sent.
type StreamRequest struct {
	Delivery        *Delivery `json:"delivery,omitempty"`
	EventsRequested []string  `json:"events_requested,omitzero"`
	Description     *string   `json:"description,omitempty"`
	// RemoveAuthorization, with a push Delivery to the same endpoint and
	// no AuthorizationHeader, removes the stored header rather than keep
	// it (a receiver that sent "authorization_header": "").
	RemoveAuthorization bool `json:"-"`
}

// Transmitter is what the deployment adds to a stream's configuration.
type Transmitter struct {
	// Issuer is tokend's issuer: every SET's iss and every stream's iss.
	Issuer string
	// PollURL returns the endpoint a poll stream's receiver polls, unique
	// per stream (SSF 1.0 section 6.1.2).
	PollURL func(streamID string) string
	// MinVerificationInterval is shown as min_verification_interval when
	// not 0.
	MinVerificationInterval time.Duration
}

// Config is a stream's configuration as SSF 1.0 section 8.1.1 shows it
// to its receiver.
type Config struct {
	StreamID                string       `json:"stream_id"`
	Iss                     string       `json:"iss"`
	Aud                     jwt.Audience `json:"aud"`
	EventsSupported         []string     `json:"events_supported"`
	EventsRequested         []string     `json:"events_requested,omitzero"`
	EventsDelivered         []string     `json:"events_delivered"`
	Delivery                Delivery     `json:"delivery"`
	MinVerificationInterval int64        `json:"min_verification_interval,omitempty"`
	Description             string       `json:"description,omitempty"`
}

// Config returns s's configuration as its receiver reads it: with the
// deployment's iss, events_supported and, for poll, endpoint_url.
func (s Stream) Config(t Transmitter) Config {
	d := s.Delivery
	if d.Method == DeliveryPoll && t.PollURL != nil {
		d.EndpointURL = t.PollURL(s.ID)
	}
	return Config{StreamID: s.ID, Iss: t.Issuer, Aud: jwt.Audience(s.Audience), EventsSupported: EventsSupported,
		EventsRequested: s.EventsRequested, EventsDelivered: s.EventsDelivered, Delivery: d,
		MinVerificationInterval: int64(t.MinVerificationInterval / time.Second), Description: s.Description}
}

// StreamStatus is a stream's status as SSF 1.0 section 8.1.2 shows it.
type StreamStatus struct {
	StreamID string `json:"stream_id"`
	Status   Status `json:"status"`
	Reason   string `json:"reason,omitempty"`
}

// StatusOf returns s's status for its receiver.
func (s Stream) StatusOf() StreamStatus {
	return StreamStatus{StreamID: s.ID, Status: s.Status, Reason: s.Reason}
}

// Patch applies an update (PATCH, SSF 1.0 section 8.1.1.3): the fields r
// has are set, the others kept. Errors are invalid_request.
func (s *Stream) Patch(r StreamRequest) error {
	next := *s
	if r.Delivery != nil {
		next.Delivery = *r.Delivery
		next.replaceAuthorization(s.Delivery, r.RemoveAuthorization)
	}
	if r.EventsRequested != nil {
		next.EventsRequested = r.EventsRequested
	}
	if r.Description != nil {
		next.Description = *r.Description
	}
	return s.adopt(next)
}

// Replace applies a replacement (PUT, SSF 1.0 section 8.1.1.4): the
// fields r lacks are reset (delivery to poll, events_requested to none
// asked for, description to ""). Errors are invalid_request.
func (s *Stream) Replace(r StreamRequest) error {
	next := *s
	next.Delivery, next.EventsRequested, next.Description = Delivery{}, r.EventsRequested, ""
	if r.Delivery != nil {
		next.Delivery = *r.Delivery
	}
	next.replaceAuthorization(s.Delivery, r.RemoveAuthorization)
	if r.Description != nil {
		next.Description = *r.Description
	}
	return s.adopt(next)
}

// replaceAuthorization settles the stored authorization_header once s's
// delivery, which was prev, is replaced by one a receiver sent. The header
// is write-only: a stream read never shows it, so a receiver that reads
// its stream and sends the same push delivery back (SSF 1.0 section
// 8.1.1.4 has it do so) sends none; the stored one is kept then, unless
// remove says the receiver sent an empty one. Any other delivery takes
// the header it carries (sealed when stored), or none: a header is never
// carried over to another endpoint. A header sent ends the loss
// (SealedSecrets.Lost) of the one before.
func (s *Stream) replaceAuthorization(prev Delivery, remove bool) {
	if s.Delivery.Method == DeliveryPush && prev.Method == DeliveryPush && s.Delivery.EndpointURL == prev.EndpointURL &&
		s.Delivery.AuthorizationHeader == "" && !remove {
		return
	}
	s.Secrets.Authorization, s.plainAuthorization = nil, ""
	if s.Delivery.Method != DeliveryWebhook {
		s.Secrets.Lost = false
	}
}

// adopt validates next's receiver-supplied fields and, if they are valid,
// makes next s, with its derived fields.
func (s *Stream) adopt(next Stream) error {
	var err error
	if next.Delivery, err = validDelivery(next.Delivery, next.Receiver == ""); err != nil {
		return err
	}
	if next.EventsRequested, err = validEventsRequested(next.EventsRequested); err != nil {
		return err
	}
	if next.Description, err = validDescription(next.Description); err != nil {
		return err
	}
	next.EventsDelivered = Delivered(next.EventsRequested)
	*s = next
	return nil
}

// Delivered returns the events a stream that requested requested gets:
// requested ∩ EventsSupported, in EventsSupported's order; every
// supported event when requested is nil (nothing asked for).
func Delivered(requested []string) []string {
	if requested == nil {
		return slices.Clone(EventsSupported)
	}
	out := []string{}
	for _, t := range EventsSupported {
		if slices.Contains(requested, t) {
			out = append(out, t)
		}
	}
	return out
}

// SetStatus sets s's status and reason; changed is false if they were
// already so. Any status may follow any other (StatusChange says what a
// change means for delivery). Errors are invalid_request.
func (s *Stream) SetStatus(to Status, reason string) (changed bool, err error) {
	if !to.Valid() {
		return false, domain.Errorf(domain.EInvalidRequest, "status is enabled, paused or disabled")
	}
	if reason != "" {
		if err := domain.ValidateName("reason", reason); err != nil {
			return false, err
		}
	}
	if s.Status == to && s.Reason == reason {
		return false, nil
	}
	if to == StatusEnabled && s.Secrets.Lost {
		if s.Delivery.Method == DeliveryWebhook {
			return false, domain.Errorf(domain.EInvalidRequest, "the webhook's signing secret was lost with a revoked key: rotate it first (tokenctl ssf webhooks rotate-secret)")
		}
		return false, domain.Errorf(domain.EInvalidRequest, "the stream's authorization_header was lost with a revoked key: update the stream's delivery with it first")
	}
	s.Status, s.Reason = to, reason
	return true, nil
}

// RemoveSubject stops the events about subject (SSF 1.0 section
// 8.1.3.3); changed is false if it was removed already. Errors are
// invalid_request.
func (s *Stream) RemoveSubject(subject Subject) (changed bool, err error) {
	if err := subject.Validate(); err != nil {
		return false, err
	}
	if slices.ContainsFunc(s.ExcludedSubjects, subject.Equal) {
		return false, nil
	}
	if len(s.ExcludedSubjects) >= MaxExcludedSubjects {
		return false, domain.Errorf(domain.EInvalidRequest, "a stream removes at most %d subjects", MaxExcludedSubjects)
	}
	s.ExcludedSubjects = append(slices.Clone(s.ExcludedSubjects), subject)
	return true, nil
}

// AddSubject brings back the events about subject (SSF 1.0 section
// 8.1.3.2). Every subject is in a stream unless removed, so this undoes a
// removal of the same subject, and is otherwise a no-op (changed false).
// Errors are invalid_request.
func (s *Stream) AddSubject(subject Subject) (changed bool, err error) {
	if err := subject.Validate(); err != nil {
		return false, err
	}
	kept := slices.DeleteFunc(slices.Clone(s.ExcludedSubjects), subject.Equal)
	if len(kept) == len(s.ExcludedSubjects) {
		return false, nil
	}
	if len(kept) == 0 {
		kept = nil
	}
	s.ExcludedSubjects = kept
	return true, nil
}

// Wants reports whether sig goes out on s by s's own settings: the events
// addressed to a stream go to that stream only, and always (verification,
// stream updated: SSF 1.0 sections 8.1.4 and 8.1.5 let them go whatever
// was requested); other events go if they are among EventsDelivered and
// their subject was not removed. Whether s's receiver may see sig at all
// is not s's to say: see Visibility.
func (s Stream) Wants(sig Signal) bool {
	if sig.Visibility.Stream != "" {
		return sig.Visibility.Stream == s.ID
	}
	if !slices.Contains(s.EventsDelivered, sig.Type) {
		return false
	}
	return !slices.ContainsFunc(s.ExcludedSubjects, func(x Subject) bool { return x.Matches(sig.Subject) })
}

// validDelivery returns d as stored, or why it is not a delivery a stream
// can have; webhook says whether the stream is an operator's webhook.
func validDelivery(d Delivery, webhook bool) (Delivery, error) {
	if d.Method == "" {
		d.Method = DeliveryPoll
	}
	switch {
	case webhook && d.Method != DeliveryWebhook:
		return d, domain.Errorf(domain.EInvalidRequest, "a webhook's delivery method is %s", DeliveryWebhook)
	case !webhook && d.Method == DeliveryWebhook:
		return d, domain.Errorf(domain.EInvalidRequest, "webhooks are set up by an operator (tokenctl ssf webhooks)")
	}
	switch d.Method {
	case DeliveryPush:
		if d.SecretRef != "" {
			return d, domain.Errorf(domain.EInvalidRequest, "secret_ref is for webhooks")
		}
		if d.AuthorizationHeader != "" && !validHeaderValue(d.AuthorizationHeader) {
			return d, domain.Errorf(domain.EInvalidRequest, "authorization_header is a header value of at most %d bytes", maxAuthorizationBytes)
		}
		return d, validEndpoint(d.EndpointURL)
	case DeliveryPoll:
		// endpoint_url is the transmitter's (SSF 1.0 section 6.1.2): a
		// receiver's is not kept.
		if d.AuthorizationHeader != "" || d.SecretRef != "" {
			return d, domain.Errorf(domain.EInvalidRequest, "poll delivery takes no authorization_header or secret_ref")
		}
		return Delivery{Method: DeliveryPoll}, nil
	case DeliveryWebhook:
		if d.AuthorizationHeader != "" {
			return d, domain.Errorf(domain.EInvalidRequest, "a webhook is signed, and takes no authorization_header")
		}
		if !domain.ValidID(d.SecretRef) {
			return d, domain.Errorf(domain.EInvalidRequest, "a webhook needs secret_ref, the id of its signing secret")
		}
		return d, validEndpoint(d.EndpointURL)
	}
	return d, domain.Errorf(domain.EInvalidRequest, "delivery method %q is not supported: use %s (push) or %s (poll)",
		truncate(d.Method, 64), DeliveryPush, DeliveryPoll)
}

// validEndpoint checks an endpoint tokend will send to: an absolute https
// URL without credentials or fragment; http only for a loopback host
// (tests, a receiver on the same machine).
func validEndpoint(raw string) error {
	if raw == "" {
		return domain.Errorf(domain.EInvalidRequest, "delivery needs endpoint_url")
	}
	u, err := url.Parse(raw)
	switch {
	case err != nil || len(raw) > maxURLBytes || u.Host == "" || u.Opaque != "":
		return domain.Errorf(domain.EInvalidRequest, "endpoint_url is an absolute URL of at most %d bytes", maxURLBytes)
	case u.User != nil || u.Fragment != "" || strings.Contains(raw, "#"):
		return domain.Errorf(domain.EInvalidRequest, "endpoint_url has no user information or fragment")
	case u.Scheme == "https":
		return nil
	case u.Scheme == "http" && loopback(u.Hostname()):
		return nil
	}
	return domain.Errorf(domain.EInvalidRequest, "endpoint_url uses https (http only for a loopback host)")
}

func loopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// validHeaderValue reports whether v can be sent as a header value
// (RFC 9110 section 5.5: visible characters, spaces and tabs), within
// maxAuthorizationBytes.
func validHeaderValue(v string) bool {
	if len(v) > maxAuthorizationBytes {
		return false
	}
	for i := 0; i < len(v); i++ {
		if c := v[i]; (c < 0x20 && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}

// validEventsRequested returns events_requested without duplicates, or
// why it cannot be stored. Unknown URIs stay: SSF has the transmitter
// ignore them, not refuse them.
func validEventsRequested(req []string) ([]string, error) {
	if req == nil {
		return nil, nil
	}
	out := []string{}
	for _, t := range req {
		if len(t) == 0 || len(t) > maxMemberBytes || !validMember(t) {
			return nil, domain.Errorf(domain.EInvalidRequest, "events_requested holds event type URIs of at most %d bytes", maxMemberBytes)
		}
		if !slices.Contains(out, t) {
			out = append(out, t)
		}
	}
	if len(out) > MaxEventsRequested {
		return nil, domain.Errorf(domain.EInvalidRequest, "events_requested holds at most %d event types", MaxEventsRequested)
	}
	return out, nil
}

// validDescription returns d cut to MaxDescriptionBytes, or why it cannot
// be stored (not printable).
func validDescription(d string) (string, error) {
	if !utf8.ValidString(d) || strings.ContainsFunc(d, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return "", domain.Errorf(domain.EInvalidRequest, "description must be printable UTF-8")
	}
	return truncate(d, MaxDescriptionBytes), nil
}
