package api

import (
	"cmp"
	"context"
	"slices"
	"time"

	"github.com/nats-io/nats.go/micro"

	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events"
	"github.com/tokend/tokend/registry"
	"github.com/tokend/tokend/signals"
)

// Subjects of SSF administration, relative to the prefix; one instance
// answers each request (queue group). Operators see and steer every
// receiver's streams here, and set up webhooks. Delivery secrets travel
// one way only: a webhook's secret is sent once, by tokenctl, which made
// it; no reply holds a secret, sealed or not.
const (
	// SubjectSSFStreamsList returns every stream, webhooks included.
	SubjectSSFStreamsList = "admin.ssf.streams.list"
	// SubjectSSFStreamsGet returns one stream, its removed subjects
	// included.
	SubjectSSFStreamsGet = "admin.ssf.streams.get"
	// SubjectSSFStreamsPause holds a stream's events until it is resumed.
	SubjectSSFStreamsPause = "admin.ssf.streams.pause"
	// SubjectSSFStreamsResume enables a paused or disabled stream.
	SubjectSSFStreamsResume = "admin.ssf.streams.resume"
	// SubjectSSFStreamsDisable stops a stream: events until it is enabled
	// again are never delivered.
	SubjectSSFStreamsDisable = "admin.ssf.streams.disable"
	// SubjectSSFStreamsVerify sends a verification event on a stream.
	SubjectSSFStreamsVerify = "admin.ssf.streams.verify"
	// SubjectSSFStreamsDelete deletes a stream.
	SubjectSSFStreamsDelete = "admin.ssf.streams.delete"
	// SubjectSSFWebhooksAdd sets up a webhook.
	SubjectSSFWebhooksAdd = "admin.ssf.webhooks.add"
	// SubjectSSFWebhooksList returns the webhooks.
	SubjectSSFWebhooksList = "admin.ssf.webhooks.list"
	// SubjectSSFWebhooksRemove deletes a webhook.
	SubjectSSFWebhooksRemove = "admin.ssf.webhooks.remove"
	// SubjectSSFWebhooksRotateSecret gives a webhook a new signing
	// secret; the previous ones sign too for a grace period.
	SubjectSSFWebhooksRotateSecret = "admin.ssf.webhooks.rotate_secret"
)

// SSFStreamRequest is the body of get, resume and delete, and of pause
// and disable, which need a reason, and webhooks remove.
type SSFStreamRequest struct {
	StreamID string `json:"stream_id"`
	// Reason is the new status's reason (pause, disable: required), which
	// the receiver reads in the stream's status and its stream-updated
	// event: write it for them.
	Reason string `json:"reason,omitempty"`
	By     string `json:"by,omitempty"` // who makes the change (required unless the NATS user is known)
}

// SSFVerifyRequest is the body of verify.
type SSFVerifyRequest struct {
	StreamID string `json:"stream_id"`
	// State is sent back in the verification event (SSF 1.0 section
	// 8.1.4.1); optional.
	State string `json:"state,omitempty"`
}

// SSFWebhookAddRequest is the body of webhooks add.
type SSFWebhookAddRequest struct {
	// EndpointURL is where the events are POSTed: https (http only to a
	// loopback host).
	EndpointURL string `json:"endpoint_url"`
	// Events are the event types it gets, each a URI, its short name
	// (session-revoked) or a tokend event type it is made from
	// (family.revoked); none: every type.
	Events []string `json:"events,omitempty"`
	// Clients are the clients whose events it gets; none: every event.
	Clients []string `json:"clients,omitempty"`
	// Secret is its signing secret, whsec_ and the base64 of 24 to 64
	// random bytes (Standard Webhooks), made by the caller: tokend stores
	// it sealed and never shows it.
	Secret      string `json:"secret"`
	Description string `json:"description,omitempty"`
	By          string `json:"by,omitempty"`
}

// SSFWebhookRotateRequest is the body of webhooks rotate_secret.
type SSFWebhookRotateRequest struct {
	StreamID string `json:"stream_id"`
	Secret   string `json:"secret"`
	// Grace is how long the previous secrets keep signing, in Go syntax;
	// absent: 24h; "0s": they stop at once.
	Grace *string `json:"grace,omitempty"`
	By    string  `json:"by,omitempty"`
}

// SSFStreamView shows a stream to an operator: never a delivery secret.
type SSFStreamView struct {
	StreamID string `json:"stream_id"`
	Revision uint64 `json:"revision"`
	// Receiver is the client id of the receiver that owns the stream; ""
	// for a webhook, which CreatedBy set up.
	Receiver    string   `json:"receiver,omitempty"`
	CreatedBy   string   `json:"created_by,omitempty"`
	Status      string   `json:"status"`
	Reason      string   `json:"reason,omitempty"`
	Description string   `json:"description,omitempty"`
	Audience    []string `json:"aud"`
	// DeliveryMethod is urn:ietf:rfc:8935 (push), urn:ietf:rfc:8936
	// (poll) or urn:tokend:webhook.
	DeliveryMethod string `json:"delivery_method"`
	// EndpointURL is the receiver's (push) or the SIEM's (webhook).
	EndpointURL string `json:"endpoint_url,omitempty"`
	// AuthorizationHeader says whether a push stream has one (set); its
	// value is never shown.
	AuthorizationHeader bool `json:"authorization_header_set,omitempty"`
	// SecretLost says a delivery secret was lost with a revoked MAC key:
	// the stream stays paused until the receiver sends its delivery again
	// or the webhook's secret is rotated.
	SecretLost bool `json:"secret_lost,omitempty"`
	// EventsRequested is absent when the stream asked for every type.
	EventsRequested []string `json:"events_requested,omitempty"`
	EventsDelivered []string `json:"events_delivered"`
	// ExcludedSubjects are the subjects the receiver removed (get only;
	// list gives their number).
	ExcludedSubjects      []signals.Subject `json:"excluded_subjects,omitempty"`
	ExcludedSubjectsCount int               `json:"excluded_subjects_count"`
	// Clients are a webhook's clients; none: every event.
	Clients []string `json:"clients,omitempty"`
	// WebhookSecrets are a webhook's signing secrets, newest (SecretRef)
	// first: when each was made and, in a rotation's overlap, when it
	// stops signing.
	WebhookSecrets []SSFWebhookSecretView `json:"webhook_secrets,omitempty"`
	CreatedAt      string                 `json:"created_at"`
	UpdatedAt      string                 `json:"updated_at"`
	// Pending is what the stream's delivery has not had taken yet (get
	// only, not for a disabled stream).
	Pending *SSFPendingView `json:"pending,omitempty"`
}

// SSFPendingView is a stream's delivery backlog: events not yet taken by
// the receiver (some may be passed over as not its to see), and the age
// of the oldest.
type SSFPendingView struct {
	Events        uint64  `json:"events"`
	OldestSeconds float64 `json:"oldest_seconds"`
}

// SSFWebhookSecretView describes one signing secret of a webhook.
type SSFWebhookSecretView struct {
	SecretRef string `json:"secret_ref"`
	CreatedAt string `json:"created_at"`
	ExpiresAt string `json:"expires_at,omitempty"`
}

// SSFStreamList answers streams list and webhooks list, oldest first.
type SSFStreamList struct {
	Streams []SSFStreamView `json:"streams"`
}

// SSFVerifyReply answers verify: the verification event stored.
type SSFVerifyReply struct {
	StreamID string `json:"stream_id"`
	EventID  string `json:"event_id"` // the SET's txn
	Seq      uint64 `json:"seq"`      // its position in the TOKENS stream
}

// SSFDeleteReply answers streams delete and webhooks remove.
type SSFDeleteReply struct {
	StreamID string `json:"stream_id"`
	Deleted  bool   `json:"deleted"`
}

// addSSFAdmin registers the SSF administration endpoints on svc, if the
// service has a stream store.
func (s *Service) addSSFAdmin(svc micro.Service, prefix string) error {
	if s.Streams == nil {
		return nil
	}
	endpoints := []adminEndpoint{
		{"ssf_streams_list", SubjectSSFStreamsList, s.listSSFStreams(false), nil},
		{"ssf_streams_get", SubjectSSFStreamsGet, s.getSSFStream, nil},
		{"ssf_streams_pause", SubjectSSFStreamsPause, s.setSSFStatus(signals.StatusPaused), nil},
		{"ssf_streams_resume", SubjectSSFStreamsResume, s.setSSFStatus(signals.StatusEnabled), nil},
		{"ssf_streams_disable", SubjectSSFStreamsDisable, s.setSSFStatus(signals.StatusDisabled), nil},
		{"ssf_streams_verify", SubjectSSFStreamsVerify, s.verifySSFStream, nil},
		{"ssf_streams_delete", SubjectSSFStreamsDelete, s.deleteSSFStream(false), nil},
		{"ssf_webhooks_add", SubjectSSFWebhooksAdd, s.addWebhook, nil},
		{"ssf_webhooks_list", SubjectSSFWebhooksList, s.listSSFStreams(true), nil},
		{"ssf_webhooks_remove", SubjectSSFWebhooksRemove, s.deleteSSFStream(true), nil},
		{"ssf_webhooks_rotate_secret", SubjectSSFWebhooksRotateSecret, s.rotateWebhookSecret, nil},
	}
	return s.addAdminEndpoints(svc, prefix, requestTimeout, endpoints)
}

// actor is who makes a change: as the request names them, else the NATS
// user.
func actor(by string, who registry.Actor) (string, error) {
	if by == "" && who.NATSUser == "" {
		return "", domain.Errorf(domain.EInvalidRequest, "by is required: name who makes the change")
	}
	if by != "" {
		if err := domain.ValidateName("by", by); err != nil {
			return "", err
		}
	}
	return cmp.Or(by, who.NATSUser), nil
}

// decodeChange decodes a change request and names who makes it (actor).
func decodeChange[T interface{ actorName() string }](data []byte, who registry.Actor) (in T, by string, err error) {
	if err = Decode(data, &in); err != nil {
		return in, "", err
	}
	by, err = actor(in.actorName(), who)
	return in, by, err
}

func (r SSFStreamRequest) actorName() string        { return r.By }
func (r SSFWebhookAddRequest) actorName() string    { return r.By }
func (r SSFWebhookRotateRequest) actorName() string { return r.By }

func (s *Service) listSSFStreams(webhooks bool) func(context.Context, []byte, registry.Actor) (any, error) {
	return func(ctx context.Context, data []byte, _ registry.Actor) (any, error) {
		var in struct{}
		if err := Decode(data, &in); err != nil {
			return nil, err
		}
		all, err := s.Streams.ListAll(ctx)
		if err != nil {
			return nil, err
		}
		out := SSFStreamList{Streams: []SSFStreamView{}}
		for _, st := range all {
			if !webhooks || st.Delivery.Method == signals.DeliveryWebhook {
				out.Streams = append(out.Streams, ssfStreamView(st, s.Now(), false))
			}
		}
		return out, nil
	}
}

func (s *Service) getSSFStream(ctx context.Context, data []byte, _ registry.Actor) (any, error) {
	var in SSFStreamRequest
	if err := Decode(data, &in); err != nil {
		return nil, err
	}
	st, err := s.Streams.Get(ctx, in.StreamID)
	if err != nil {
		return nil, err
	}
	v := ssfStreamView(st, s.Now(), true)
	if s.Delivery != nil && st.Status != signals.StatusDisabled {
		// Without it (no consumer yet, JetStream busy) the view still
		// answers; the metrics carry the lag too.
		if n, age, err := s.Delivery.Lag(ctx, st.ID); err == nil {
			v.Pending = &SSFPendingView{Events: n, OldestSeconds: age.Seconds()}
		}
	}
	return v, nil
}

// setSSFStatus changes a stream's status as an operator: the receiver is
// told first (Store.ChangeStatus appends ssf.stream_updated).
func (s *Service) setSSFStatus(to signals.Status) func(context.Context, []byte, registry.Actor) (any, error) {
	return func(ctx context.Context, data []byte, who registry.Actor) (any, error) {
		in, by, err := decodeChange[SSFStreamRequest](data, who)
		if err != nil {
			return nil, err
		}
		switch {
		case to != signals.StatusEnabled && in.Reason == "":
			return nil, domain.Errorf(domain.EInvalidRequest, "reason is required: why the stream is %s, for its receiver", to)
		case to == signals.StatusEnabled && in.Reason != "":
			return nil, domain.Errorf(domain.EInvalidRequest, "an enabled stream has no reason")
		}
		st, changed, err := s.Streams.ChangeStatus(ctx, in.StreamID, to, in.Reason)
		if err != nil {
			return nil, err
		}
		if changed {
			s.Log.Info("SSF stream "+string(to), "stream", st.ID, "receiver", st.Receiver, "reason", in.Reason, "by", by, "nats_user", who.NATSUser)
		}
		return ssfStreamView(st, s.Now(), false), nil
	}
}

func (s *Service) verifySSFStream(ctx context.Context, data []byte, _ registry.Actor) (any, error) {
	var in SSFVerifyRequest
	if err := Decode(data, &in); err != nil {
		return nil, err
	}
	if in.State != "" {
		if err := domain.ValidateName("state", in.State); err != nil {
			return nil, err
		}
	}
	st, err := s.Streams.Get(ctx, in.StreamID)
	if err != nil {
		return nil, err
	}
	if s.Outbox == nil {
		return nil, domain.Errorf(domain.EServerError, "verification events cannot be stored: no outbox")
	}
	ev := events.VerificationEvent(st.ID, in.State, s.Now())
	seq, err := s.Outbox.AppendDeployment(ctx, ev)
	if err != nil {
		return nil, &domain.Error{Code: domain.EUnavailable, Message: "the verification event could not be stored, retry", RetryAfterMs: 1000}
	}
	return SSFVerifyReply{StreamID: st.ID, EventID: ev.ID, Seq: seq}, nil
}

// deleteSSFStream deletes a stream; webhook says the request is webhooks
// remove, which deletes webhooks only.
func (s *Service) deleteSSFStream(webhook bool) func(context.Context, []byte, registry.Actor) (any, error) {
	return func(ctx context.Context, data []byte, who registry.Actor) (any, error) {
		in, by, err := decodeChange[SSFStreamRequest](data, who)
		if err != nil {
			return nil, err
		}
		st, err := s.Streams.Get(ctx, in.StreamID)
		if err != nil {
			return nil, err
		}
		if webhook && st.Delivery.Method != signals.DeliveryWebhook {
			return nil, domain.Errorf(domain.EInvalidRequest, "stream %s is a receiver's, not a webhook (tokenctl ssf streams delete deletes it)", st.ID)
		}
		if err := s.Streams.Delete(ctx, st.ID, st.Revision); err != nil {
			return nil, err
		}
		s.Log.Warn("SSF stream deleted", "stream", st.ID, "receiver", st.Receiver, "method", st.Delivery.Method, "by", by, "nats_user", who.NATSUser)
		return SSFDeleteReply{StreamID: st.ID, Deleted: true}, nil
	}
}

func (s *Service) addWebhook(ctx context.Context, data []byte, who registry.Actor) (any, error) {
	in, by, err := decodeChange[SSFWebhookAddRequest](data, who)
	if err != nil {
		return nil, err
	}
	var types []string
	for _, name := range in.Events {
		uri, err := signals.EventType(name)
		if err != nil {
			return nil, err
		}
		if !slices.Contains(types, uri) {
			types = append(types, uri)
		}
	}
	req := signals.StreamRequest{Delivery: &signals.Delivery{Method: signals.DeliveryWebhook, EndpointURL: in.EndpointURL}, EventsRequested: types}
	if in.Description != "" {
		req.Description = &in.Description
	}
	st, err := s.Streams.Create(ctx, signals.NewStream{CreatedBy: by, Request: req, Clients: in.Clients, WebhookSecret: in.Secret})
	if err != nil {
		return nil, err
	}
	s.Log.Info("webhook added", "stream", st.ID, "endpoint_url", st.Delivery.EndpointURL, "clients", len(st.Clients), "by", by, "nats_user", who.NATSUser)
	return ssfStreamView(st, s.Now(), true), nil
}

func (s *Service) rotateWebhookSecret(ctx context.Context, data []byte, who registry.Actor) (any, error) {
	in, by, err := decodeChange[SSFWebhookRotateRequest](data, who)
	if err != nil {
		return nil, err
	}
	grace := domain.DefaultSecretGrace
	if in.Grace != nil {
		if grace, err = time.ParseDuration(*in.Grace); err != nil {
			return nil, domain.Errorf(domain.EInvalidRequest, "grace must be a duration such as 0s, 1h or 24h")
		}
	}
	st, err := s.Streams.RotateWebhookSecret(ctx, in.StreamID, in.Secret, grace)
	if err != nil {
		return nil, err
	}
	s.Log.Info("webhook secret rotated", "stream", st.ID, "secret_ref", st.Delivery.SecretRef, "grace", grace, "by", by, "nats_user", who.NATSUser)
	return ssfStreamView(st, s.Now(), true), nil
}

// ssfStreamView shows st without its secrets, and the webhook secrets
// that sign at now; full adds the subjects it removed.
func ssfStreamView(st signals.Stream, now time.Time, full bool) SSFStreamView {
	v := SSFStreamView{StreamID: st.ID, Revision: st.Revision, Receiver: st.Receiver, CreatedBy: st.CreatedBy, Status: string(st.Status),
		Reason: st.Reason, Description: st.Description, Audience: nonNil(st.Audience), DeliveryMethod: st.Delivery.Method,
		EndpointURL: st.Delivery.EndpointURL, AuthorizationHeader: st.HasAuthorization(), SecretLost: st.Secrets.Lost,
		EventsRequested: st.EventsRequested, EventsDelivered: nonNil(st.EventsDelivered), ExcludedSubjectsCount: len(st.ExcludedSubjects),
		Clients: st.Clients, CreatedAt: rfc3339(st.CreatedAt), UpdatedAt: rfc3339(st.UpdatedAt)}
	if full {
		v.ExcludedSubjects = st.ExcludedSubjects
	}
	for _, w := range st.Secrets.Webhook {
		if !w.ExpiresAt.IsZero() && !now.Before(w.ExpiresAt) {
			continue
		}
		sv := SSFWebhookSecretView{SecretRef: w.Ref, CreatedAt: rfc3339(w.CreatedAt)}
		if !w.ExpiresAt.IsZero() {
			sv.ExpiresAt = rfc3339(w.ExpiresAt)
		}
		v.WebhookSecrets = append(v.WebhookSecrets, sv)
	}
	return v
}
