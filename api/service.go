package api

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events"
	"github.com/tokend/tokend/pii"
	"github.com/tokend/tokend/projections"
	"github.com/tokend/tokend/registry"
	"github.com/tokend/tokend/signals"
	"github.com/tokend/tokend/tokens"
)

// Version is tokend's release, the one place it is written: --version of
// tokend and tokenctl, tokend_build_info and service discovery report it.
const Version = "0.2.0"

// requestTimeout bounds one command end to end, so a stalled store answers
// temporarily_unavailable instead of hanging the caller.
const requestTimeout = 5 * time.Second

// RequestTimeout is requestTimeout for those who size around it: every
// HTTP handler ends within it too.
const RequestTimeout = requestTimeout

// Commands and queries are bounded separately per instance, so a burst of
// slow audits cannot hold the slots refreshes need. Past its bound a
// request waits a little for a slot, or is answered busy (async).
const (
	DefaultCommandsInFlight = 1024
	DefaultQueriesInFlight  = 64
)

// Service is the NATS face of tokend.
type Service struct {
	Tokens    *tokens.Service
	Access    *AccessTokens
	Reader    *projections.Reader
	Projector *projections.Projector
	Metrics   *Metrics // nil: not measured
	Log       *slog.Logger
	Now       func() time.Time
	// CommandsInFlight and QueriesInFlight bound the requests of each kind
	// handled at once; zero means the default.
	CommandsInFlight, QueriesInFlight int
	// Clients, if set, is served on the client administration subjects.
	Clients *registry.Registry
	// Outbox, if set, stores the deployment events of finished revocations
	// by subject, client or key, for the SSF transmitter (events.Store).
	Outbox Outbox
	// Streams, if set with Outbox, holds the SSF streams: the OAuth
	// listener then serves the SSF transmitter (ssf.go), and operators
	// steer them on the SSF administration subjects (ssfadmin.go).
	Streams *signals.Store
	// Delivery, if set, delivers the SSF streams' events and answers
	// their polls; without it polls are answered temporarily_unavailable.
	Delivery *signals.Engine
	// Personal, set with personal data protection on, holds the subjects'
	// data keys: erasing a subject destroys its key (subjectsadmin.go).
	Personal *pii.Store

	nc *nats.Conn
	// stopQueries ends the waits of queries in flight at shutdown: a
	// min_seq wait has nothing to finish, unlike a command's append.
	queriesCtx  context.Context
	stopQueries context.CancelFunc
	handled     atomic.Uint64 // requests answered, NATS and HTTP
	// stopping refuses requests that arrive once Stop began (micro keeps
	// delivering a subscription's pending messages while it drains); mu
	// orders that check and inFlight.Add against Stop's Wait.
	mu       sync.RWMutex
	stopping bool
	inFlight sync.WaitGroup
	workers  *workers
	micro    micro.Service
}

// Outbox stores deployment events (events.Store.AppendDeployment).
type Outbox interface {
	AppendDeployment(context.Context, events.DeploymentEvent) (uint64, error)
}

// outboxTimeout bounds the append of a deployment event, which runs after
// its revocation, whatever time that left the request.
const outboxTimeout = 2 * time.Second

// recordDeployment stores a deployment event about a revocation that
// succeeded. A failure is logged and counted, never returned: the
// revocation stands and its caller must not retry it for the sake of a
// signal, but receivers of security events miss it
// (tokend_deployment_events_failed_total).
func (s *Service) recordDeployment(ctx context.Context, ev events.DeploymentEvent) {
	if s.Outbox == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), outboxTimeout)
	defer cancel()
	if _, err := s.Outbox.AppendDeployment(ctx, ev); err != nil {
		s.Metrics.DeploymentEventFailed(ev.Type)
		s.Log.Error("deployment event not stored: security event receivers will miss it", "type", ev.Type, "id", ev.ID, "err", err)
	}
}

// Start registers the micro service "tokens" with its endpoints under prefix.
func (s *Service) Start(nc *nats.Conn, prefix string) error {
	s.nc, s.workers = nc, newWorkers(workerIdleTimeout)
	commands := make(chan struct{}, cmp.Or(s.CommandsInFlight, DefaultCommandsInFlight))
	queries := make(chan struct{}, cmp.Or(s.QueriesInFlight, DefaultQueriesInFlight))
	s.queriesCtx, s.stopQueries = context.WithCancel(context.Background())
	svc, err := micro.AddService(nc, micro.Config{
		Name:        "tokens",
		Version:     Version,
		Description: "refresh-token rotation with replay detection",
	})
	if err != nil {
		return err
	}
	s.micro = svc
	endpoints := []struct {
		name, subject string
		handle        func(context.Context, []byte) (any, error)
		timeout       time.Duration
		measure       func(string, error, time.Duration)
		slots         chan struct{}
		base          context.Context
	}{
		{"issue", prefix + ".cmd.issue", s.issue, requestTimeout, s.Metrics.command, commands, context.Background()},
		{"refresh", prefix + ".cmd.refresh", s.refresh, requestTimeout, s.Metrics.command, commands, context.Background()},
		// Revoking a subject or client may touch many families.
		{"revoke", prefix + ".cmd.revoke", s.revoke, revokeTimeout, s.Metrics.command, commands, context.Background()},
		{"keys", prefix + ".keys", s.keys, requestTimeout, s.Metrics.query, queries, s.queriesCtx},
		{"introspect", prefix + ".query.introspect", s.introspect, requestTimeout, s.Metrics.query, queries, s.queriesCtx},
		{"family", prefix + ".query.family", s.family, requestTimeout, s.Metrics.query, queries, s.queriesCtx},
		{"audit", prefix + ".query.audit", s.audit, requestTimeout, s.Metrics.query, queries, s.queriesCtx},
	}
	for _, ep := range endpoints {
		handler := s.async(ep.name, ep.base, ep.timeout, ep.slots, ep.handle, ep.measure)
		if err := svc.AddEndpoint(ep.name, handler, micro.WithEndpointSubject(ep.subject)); err != nil {
			svc.Stop()
			return fmt.Errorf("endpoint %s: %w", ep.name, err)
		}
	}
	if err := s.addKeysAdmin(svc, prefix); err != nil {
		svc.Stop()
		return fmt.Errorf("key administration: %w", err)
	}
	if err := s.addClientsAdmin(svc, prefix); err != nil {
		svc.Stop()
		return fmt.Errorf("client administration: %w", err)
	}
	if err := s.addSubjectsAdmin(svc, prefix); err != nil {
		svc.Stop()
		return fmt.Errorf("subject administration: %w", err)
	}
	if err := s.addSSFAdmin(svc, prefix); err != nil {
		svc.Stop()
		return fmt.Errorf("SSF administration: %w", err)
	}
	// Subscriptions are sent asynchronously; flushing makes the endpoints
	// reachable before Start reports the service up.
	return nc.FlushTimeout(10 * time.Second)
}

// Handled returns how many requests have been answered so far.
func (s *Service) Handled() uint64 { return s.handled.Load() }

// Stop stops taking requests and waits for those in flight.
func (s *Service) Stop() {
	s.mu.Lock()
	s.stopping = true
	s.mu.Unlock()
	if s.micro != nil {
		s.micro.Stop()
	}
	if s.stopQueries != nil {
		s.stopQueries()
	}
	s.inFlight.Wait()
}

// async runs each request on a goroutine of its own, holding one of slots:
// a subscription delivers messages one at a time, and one slow family must
// not hold up the others.
//
// It never blocks the subscription: a request that finds every slot taken
// waits on a goroutine of its own, at most until startBy, and as many may
// wait as there are slots; past that it is answered at once. A request
// left in the subscription's buffer instead would wait there unmeasured,
// and could start after its caller gave up.
func (s *Service) async(name string, base context.Context, timeout time.Duration, slots chan struct{}, handle func(context.Context, []byte) (any, error),
	measure func(string, error, time.Duration)) micro.HandlerFunc {
	waiting := make(chan struct{}, cap(slots))
	return func(req micro.Request) {
		start := time.Now()
		// Replies go straight to the reply subject: micro's request object
		// is not safe to use once its handler has returned.
		reply := req.Reply()
		latest, lateReason, err := startBy(start, req.Headers())
		if err != nil {
			measure(name, err, time.Since(start))
			s.respondError(name, reply, err)
			return
		}
		s.mu.RLock()
		if s.stopping {
			s.mu.RUnlock()
			s.respondError(name, reply, &domain.Error{Code: domain.EUnavailable, Message: "this instance is stopping, retry", RetryAfterMs: 100})
			return
		}
		s.inFlight.Add(1)
		s.mu.RUnlock()
		drop := func(reason string) {
			defer s.inFlight.Done()
			s.Metrics.Dropped("nats", name, reason)
			measure(name, dropErrors[reason], time.Since(start))
			s.handled.Add(1)
			s.respondError(name, reply, dropErrors[reason])
		}
		run := func() {
			defer func() { <-slots }()
			// Checked right before the request runs; once it runs, it runs
			// to the end (base is never cancelled by the caller).
			if time.Now().After(latest) {
				drop(lateReason)
				return
			}
			defer s.inFlight.Done()
			defer func() {
				if p := recover(); p != nil {
					s.Log.Error("handler panic", "endpoint", name, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
					err := domain.Errorf(domain.EServerError, "internal error")
					s.respondError(name, reply, err)
					measure(name, err, time.Since(start))
				}
			}()
			ctx, cancel := context.WithTimeout(base, timeout)
			defer cancel()
			out, err := handle(ctx, req.Data())
			// Counted before the reply leaves, so a caller that reads the
			// metrics after its answer sees its own request.
			measure(name, err, time.Since(start))
			s.handled.Add(1)
			if err != nil {
				s.logFailure(name, err)
				s.respondError(name, reply, err)
				return
			}
			data, err := json.Marshal(out)
			if err == nil {
				err = s.nc.Publish(reply, data)
			}
			if err != nil {
				// Too large for the server's max_payload, or the connection
				// went: the caller would time out not knowing why, so it
				// gets an error it can act on, if that can still be sent.
				s.Metrics.ReplyError(name)
				s.Log.Error("reply not sent", "endpoint", name, "bytes", len(data), "err", err)
				s.respondError(name, reply, domain.Errorf(domain.EServerError, "reply could not be sent"))
			}
		}
		select {
		case slots <- struct{}{}:
			s.workers.run(run)
			return
		default:
		}
		select {
		case waiting <- struct{}{}:
		default:
			drop(droppedQueueFull)
			return
		}
		go func() {
			// A freed slot goes to the longest waiting sender first, so
			// requests start in the order they came.
			wait := time.NewTimer(time.Until(latest))
			defer wait.Stop()
			select {
			case slots <- struct{}{}:
				<-waiting
				run()
			case <-wait.C:
				<-waiting
				drop(lateReason)
			}
		}()
	}
}

func (s *Service) logFailure(endpoint string, err error) {
	switch domain.ErrorCode(err) {
	case domain.EServerError:
		s.Log.Error("command failed", "endpoint", endpoint, "err", err)
	case domain.EUnavailable:
		s.Log.Warn("command unavailable", "endpoint", endpoint, "err", err)
	}
}

// respondError answers with the contract's error JSON and the micro
// error headers: the status in Nats-Service-Error-Code and the error code
// (invalid_grant, …) in Nats-Service-Error, so tools that show only the
// headers show what went wrong.
func (s *Service) respondError(endpoint, reply string, err error) {
	body := errorReply(err)
	data, _ := json.Marshal(body)
	msg := nats.NewMsg(reply)
	msg.Data = data
	msg.Header.Set(micro.ErrorCodeHeader, strconv.Itoa(httpStatus(body.Error)))
	msg.Header.Set(micro.ErrorHeader, body.Error)
	if err := s.nc.PublishMsg(msg); err != nil {
		s.Metrics.ReplyError(endpoint)
		s.Log.Error("error reply not sent", "endpoint", endpoint, "err", err)
	}
}

func (s *Service) issue(ctx context.Context, data []byte) (any, error) {
	req, err := ParseIssue(data)
	if err != nil {
		return nil, err
	}
	g, err := s.Tokens.Issue(ctx, req)
	if err != nil {
		return nil, err
	}
	return s.tokenReply(g)
}

func (s *Service) refresh(ctx context.Context, data []byte) (any, error) {
	req, err := ParseRefresh(data)
	if err != nil {
		return nil, err
	}
	g, err := s.Tokens.Refresh(ctx, req)
	if err != nil {
		return nil, err
	}
	return s.tokenReply(g)
}

func (s *Service) tokenReply(g tokens.Grant) (wire.TokenReply, error) {
	at, err := s.Access.Mint(g, s.Now())
	if err != nil {
		return wire.TokenReply{}, fmt.Errorf("sign access token: %w", err)
	}
	tokenType := "Bearer"
	if g.DPoPJKT != "" {
		tokenType = "DPoP" // RFC 9449 section 5
	}
	return wire.TokenReply{
		RefreshToken: g.Token.Value(), FamilyID: g.Family.ID, TokenType: tokenType,
		AccessToken: at, ExpiresIn: int64(s.Access.TTL(g) / time.Second), Scope: domain.ScopeString(g.Scope),
		RefreshTokenExpiresAt: rfc3339(g.Family.ExpiresAt()), Seq: g.Seq, DPoPNonce: g.DPoPNonce,
		ReuseIntervalMs: ptr(g.ReuseInterval.Milliseconds()),
	}, nil
}

func (s *Service) revoke(ctx context.Context, data []byte) (any, error) {
	in, err := ParseRevoke(data)
	if err != nil {
		return nil, err
	}
	var (
		n   int
		seq uint64
	)
	switch {
	case in.RefreshToken != nil:
		n, seq, err = s.Tokens.RevokeToken(ctx, *in.RefreshToken, "", in.Reason, in.Context)
	case in.FamilyID != nil:
		n, seq, err = s.Tokens.RevokeFamily(ctx, *in.FamilyID, in.Reason, in.Context)
	case in.Subject != nil:
		n, seq, err = s.revokeAll(ctx, *in.Subject, "", in)
	default:
		n, seq, err = s.revokeAll(ctx, "", *in.ClientID, in)
	}
	if err != nil {
		return nil, err
	}
	return wire.RevokeReply{RevokedFamilies: n, Seq: seq}, nil
}

// revokeConcurrency bounds the family revocations one request runs at once.
const revokeConcurrency = 16

// revokeTimeout bounds a revoke, which for a subject or client may touch
// many families.
const revokeTimeout = 30 * time.Second

// revokeAll revokes every family of a subject or client, linearizably: it
// returns a stream position P such that every family of theirs whose
// token.issued is at or before P is revoked by the time of the reply. Once
// done it records subject.revoked or client.revoked (recordDeployment).
// Families keep being issued while it runs, possibly on other instances,
// so it repeats: catch the read model up with the stream, revoke what it
// lists as active, until a caught-up read model lists nothing.
//
// Issuing for the subject or client is refused on every instance while
// this runs (revoking.Revoking), so the chase ends.
func (s *Service) revokeAll(ctx context.Context, subject, clientID string, in wire.RevokeRequest) (int, uint64, error) {
	end, err := s.beginRevoking(ctx, subject, clientID)
	if err != nil {
		return 0, 0, err
	}
	defer end()
	return s.revokeAllMarked(ctx, subject, clientID, in)
}

// beginRevoking holds back issues for the subject or client on every
// instance until end is called (revoking.Revoking).
func (s *Service) beginRevoking(ctx context.Context, subject, clientID string) (end func(), err error) {
	r := s.Tokens.Revoking
	if r == nil {
		return func() {}, nil
	}
	if end, err = r.Begin(ctx, subject, clientID); err != nil {
		return nil, &domain.Error{Code: domain.EUnavailable, Message: "cannot reach the event store, retry", RetryAfterMs: 500}
	}
	return end, nil
}

// revokeAllMarked is revokeAll for a caller holding beginRevoking's mark.
func (s *Service) revokeAllMarked(ctx context.Context, subject, clientID string, in wire.RevokeRequest) (int, uint64, error) {
	revoked := 0
	for {
		if _, err := s.Projector.CatchUp(ctx); err != nil {
			return revoked, 0, &domain.Error{Code: domain.EUnavailable, Message: "read model is behind the stream, retry", RetryAfterMs: 500}
		}
		// The list reflects at least this position: an empty one proves
		// every family issued up to it revoked.
		pos := s.Projector.Applied()
		ids, err := s.Reader.RevocableFamilies(ctx, subject, clientID)
		if err != nil {
			return revoked, 0, err
		}
		if len(ids) == 0 {
			reason := cmp.Or(in.Reason, domain.ReasonRevoked)
			if subject != "" {
				s.recordDeployment(ctx, events.SubjectRevokedEvent(subject, reason, revoked, pos, s.Now()))
			} else {
				s.recordDeployment(ctx, events.ClientRevokedEvent(clientID, reason, revoked, pos, s.Now()))
			}
			return revoked, pos, nil
		}
		n, err := s.revokeFamilies(ctx, ids, in)
		revoked += n
		if err != nil {
			return revoked, 0, err
		}
	}
}

// RevokeSubjectAfterReplay revokes, in the background, every family of a
// subject whose client reacts to a replay that way (on_replay
// revoke_subject): tokens.Service.OnSubjectReplay.
func (s *Service) RevokeSubjectAfterReplay(subject string) {
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), revokeTimeout)
		defer cancel()
		n, _, err := s.revokeAll(ctx, subject, "", wire.RevokeRequest{Reason: domain.ReasonReplayDetected})
		if err != nil {
			s.Log.Error("revoking a subject's families after a replay", "err", err, "revoked", n)
		}
	}()
}

// revokeFamilies revokes families, revokeConcurrency at a time, and counts
// those it moved to revoked.
func (s *Service) revokeFamilies(ctx context.Context, ids []string, in wire.RevokeRequest) (int, error) {
	var (
		mu       sync.Mutex
		revoked  int
		firstErr error
		wg       sync.WaitGroup
		slots    = make(chan struct{}, revokeConcurrency)
	)
	for _, id := range ids {
		slots <- struct{}{}
		wg.Go(func() {
			defer func() { <-slots }()
			n, _, err := s.Tokens.RevokeFamily(ctx, id, in.Reason, in.Context)
			mu.Lock()
			defer mu.Unlock()
			revoked += n
			if err != nil && firstErr == nil {
				firstErr = err
			}
		})
	}
	wg.Wait()
	return revoked, firstErr
}

// minSeqWait bounds how long a query waits for the read model to reach min_seq.
const minSeqWait = 2 * time.Second

// awaitSeq implements min_seq: read-your-writes for a caller holding a seq.
func (s *Service) awaitSeq(ctx context.Context, minSeq uint64) error {
	if minSeq == 0 {
		return nil
	}
	wctx, cancel := context.WithTimeout(ctx, minSeqWait)
	defer cancel()
	if err := s.Projector.WaitFor(wctx, minSeq); err != nil {
		return &domain.Error{Code: domain.EUnavailable, Message: "read model has not reached min_seq yet, retry", RetryAfterMs: 200}
	}
	return nil
}

func (s *Service) introspect(ctx context.Context, data []byte) (any, error) {
	var in wire.IntrospectRequest
	if err := Decode(data, &in); err != nil {
		return nil, err
	}
	if in.RefreshToken == "" {
		return nil, domain.Errorf(domain.EInvalidRequest, "refresh_token is required")
	}
	return s.introspectRefresh(ctx, in.RefreshToken, in.MinSeq)
}

func (s *Service) family(ctx context.Context, data []byte) (any, error) {
	var in wire.FamilyRequest
	if err := Decode(data, &in); err != nil {
		return nil, err
	}
	return s.Family(ctx, in)
}

// Family answers query.family and GET /v1/families/{id}.
func (s *Service) Family(ctx context.Context, in wire.FamilyRequest) (wire.FamilyView, error) {
	if err := domain.ValidateName("family_id", in.FamilyID); err != nil {
		return wire.FamilyView{}, err
	}
	if err := s.awaitSeq(ctx, in.MinSeq); err != nil {
		return wire.FamilyView{}, err
	}
	return s.readFamily(ctx, in.FamilyID)
}

func (s *Service) audit(ctx context.Context, data []byte) (any, error) {
	var in wire.AuditRequest
	if err := Decode(data, &in); err != nil {
		return nil, err
	}
	return s.Audit(ctx, in)
}

// Audit answers query.audit and GET /v1/audit.
func (s *Service) Audit(ctx context.Context, in wire.AuditRequest) (wire.AuditPage, error) {
	filter, err := auditFilter(in)
	if err != nil {
		return wire.AuditPage{}, err
	}
	if err := s.awaitSeq(ctx, in.MinSeq); err != nil {
		return wire.AuditPage{}, err
	}
	return s.readAudit(ctx, filter)
}

func (s *Service) keys(_ context.Context, _ []byte) (any, error) {
	return json.RawMessage(s.Access.JWKS()), nil
}
